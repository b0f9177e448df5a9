"""A model's nearest mapped models (2KL) and map position, from its scores alone.

The full refresh of the map runs at most once per interval; a model whose scores just landed
is placed at once against the current `coordinates` (its frozen clip value and column means,
``centring.npz``, and Q) and the current map, without recomputing either
(`modelmap.geometry.placement`). :func:`place` reads the files under modelmap's data folder
(``root``):

=========================================== ===============================================
``coordinates/CURRENT.json``                names the current version folder, which holds
                                            ``info.json``, ``centring.npz``,
                                            ``models.parquet`` (column ``key``) and ``Q.npy``
``corpus/corpus.parquet``                   the corpus (column ``text_id``)
``likelihood/<org>--<name>.parquet``        the model's scores (`modelmap.likelihoods`)
``model_map/map.parquet``                   the map (columns ``key``, ``x``, ``y``), if any
=========================================== ===============================================
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry.kl import nats_per_text_to_bits_per_byte
from modelmap.geometry.mapping import place_on_map
from modelmap.geometry.placement import Centring, nearest_of_rows, two_kl_to_rows
from modelmap.likelihoods import corpus_rows, is_full
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.storage import key_to_filename, path_inside

#: Neighbours listed by default.
DEFAULT_NEIGHBOURS = 10

NEIGHBOUR_SCHEMA = {
    "model": pl.String,
    "rank": pl.Int64,
    "neighbour": pl.String,
    "two_kl_nats": pl.Float64,
    "two_kl_bits_per_byte": pl.Float64,
}


class PlacementError(ValueError):
    """The model cannot be placed (no map yet, scored on another corpus, ...); says why."""


@dataclass
class Placement:
    """Where one model sits among the mapped models.

    ``neighbours``: columns model, rank (1 = nearest), neighbour, two_kl_nats,
    two_kl_bits_per_byte. ``x``, ``y``: map position (None while there is no map).
    ``among``: models of the map's `coordinates`; ``in_map``: the model is one of them
    (then its neighbours exclude itself and its position is its point on the map).
    ``seconds``: the time :func:`place` took.
    """

    key: str
    neighbours: pl.DataFrame
    x: float | None
    y: float | None
    among: int
    in_map: bool
    text_set: str
    seconds: float

    def table(self) -> pl.DataFrame:
        """``neighbours`` with the model's map position repeated (columns map_x, map_y)."""
        return self.neighbours.with_columns(
            pl.lit(self.x, dtype=pl.Float64).alias("map_x"),
            pl.lit(self.y, dtype=pl.Float64).alias("map_y"),
        )


def _current_coordinates(root: Path) -> tuple[Path, dict]:
    pointer = root / "coordinates" / "CURRENT.json"
    if not pointer.exists():
        raise PlacementError(
            f"no map to place models on yet (no `coordinates` output under {pointer.parent}: "
            "materialize it first)"
        )
    folder = root / "coordinates" / json.loads(pointer.read_text())["current"]
    if not (folder / "centring.npz").exists():
        raise PlacementError(
            f"{folder} has no centring.npz (built before placement existed): "
            "rebuild `coordinates` once"
        )
    return folder, json.loads((folder / "info.json").read_text())


def place(root: str | Path, key: str, k: int = DEFAULT_NEIGHBOURS) -> Placement:
    """Nearest mapped models and map position of model ``key`` from its likelihood file under
    the data folder ``root``.

    Reads Q (memory-mapped) once: about 1 s for 10,000 models of 10,000 texts. A file scored
    on a text budget (a subset of the corpus) is placed by the variance of the
    log-likelihood differences over its texts (equal weights).
    """
    t0 = time.perf_counter()
    root = Path(root).resolve()
    folder, info = _current_coordinates(root)
    path = path_inside(root, "likelihood", key_to_filename(key, ".parquet"))
    if not path.exists():
        raise PlacementError(f"model {key}: no likelihood file at {path}: score it first")
    meta = read_likelihood_metadata(path)
    if meta.get("corpus_hash") != info["corpus_hash"]:
        raise PlacementError(
            f"model {key}: scored on corpus {str(meta.get('corpus_hash'))[:12]}, the map is "
            f"on {info['corpus_hash'][:12]}"
        )
    centring = Centring.load(folder / "centring.npz")
    keys = pl.read_parquet(folder / "models.parquet", columns=["key"])["key"].to_list()
    Q = np.load(folder / "Q.npy", mmap_mode="r")
    rows = corpus_rows(path)
    corpus_path = root / "corpus" / "corpus.parquet"
    corpus_ids = pl.read_parquet(corpus_path, columns=["text_id"])["text_id"].to_numpy()
    if len(corpus_ids) != Q.shape[1]:
        raise PlacementError(f"the corpus has {len(corpus_ids)} texts, the map {Q.shape[1]}")
    if is_full(meta):
        if not np.array_equal(rows["text_id"].to_numpy(), corpus_ids):
            raise PlacementError(f"model {key}: its text ids differ from the corpus")
        d = two_kl_to_rows(Q, centring.transform(rows["loglik"].to_numpy()))[0]
    else:
        position = {int(t): i for i, t in enumerate(corpus_ids)}
        try:
            columns = np.array([position[int(t)] for t in rows["text_id"].to_numpy()])
        except KeyError as exc:
            raise PlacementError(f"model {key}: text id {exc} is not in the corpus") from exc
        q_sub = centring.clip(rows["loglik"].to_numpy()) - centring.col_means[columns]
        d = two_kl_to_rows(Q, q_sub, columns=columns)[0]
    in_map = key in keys
    if in_map:
        d = d.copy()
        d[keys.index(key)] = np.inf
    idx, nn = nearest_of_rows(d[None, :], min(k, len(keys) - int(in_map)))
    neighbours = pl.DataFrame(
        {
            "model": [key] * idx.shape[1],
            "rank": np.arange(1, idx.shape[1] + 1, dtype=np.int64),
            "neighbour": [keys[i] for i in idx[0]],
            "two_kl_nats": nn[0],
            "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(nn[0], info["mean_bytes"]),
        },
        schema=NEIGHBOUR_SCHEMA,
    )
    x, y = _map_position(root / "model_map" / "map.parquet", key, keys, d)
    return Placement(
        key=key,
        neighbours=neighbours,
        x=x,
        y=y,
        among=len(keys),
        in_map=in_map,
        text_set=str(meta.get("text_set")),
        seconds=time.perf_counter() - t0,
    )


def _map_position(
    path: Path, key: str, keys: list[str], two_kl: np.ndarray
) -> tuple[float | None, float | None]:
    """The model's point on the map at ``path``, or where it lands on it (the map stays put)."""
    if not path.exists():
        return None, None
    mapped = pl.read_parquet(path)
    hit = mapped.filter(pl.col("key") == key)
    if hit.height:
        return float(hit["x"][0]), float(hit["y"][0])
    row_of = {k: i for i, k in enumerate(keys)}
    mapped = mapped.filter(pl.col("key").is_in(list(row_of)))
    if mapped.height == 0:
        return None, None
    cols = np.array([row_of[k] for k in mapped["key"].to_list()])
    xy = place_on_map(mapped.select("x", "y").to_numpy(), two_kl[cols][None, :])
    return float(xy[0, 0]), float(xy[0, 1])
