"""Assembling the coordinates: every model's likelihood file into L, then the clipped L and Q.

One folder holds one version of the coordinates (all float32 ``.npy``, memory-mappable, so
that K = 100,000 models x N = 10,000 texts fits without L in memory):

=================== ==================================================================
file                content
=================== ==================================================================
``L_raw.npy``       K x N log-likelihoods, nats: row i is model i, column s is corpus text s
``T_twins.npy``     K x M log-likelihoods of the held-out twin texts, nats; NaN rows for
                    models scored without them (never part of L or Q)
``L_clipped.npy``   K x N, ``max(L, clip value)``
``Q.npy``           K x N double-centred Q (:mod:`modelmap.geometry.centering`)
``centring.npz``    the fitted :class:`~modelmap.geometry.centering.Centring`: clip value,
                    (N,) column means; what places a model scored later
``neighbours.npz``  every model's nearest models on Q (`modelmap.geometry.kl.NeighbourGraph`)
``models.parquet``  the model index: row, key, family, base_models, revision,
                    mean_loglik_nats, n_params, dtype; ``info`` in its metadata
``info.json``       ``info``: corpus hash, K, N, clip value, models left out, ...
=================== ==================================================================

Inputs are the likelihood files of `modelmap.likelihoods` (one per model) and the metadata
`read_metadata` gives for each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry.centering import DEFAULT_BLOCK_ROWS, Centring, row_blocks
from modelmap.geometry.kl import NeighbourGraph
from modelmap.likelihoods import SPLIT_CORPUS, SPLIT_TWIN, is_full, read_metadata, read_scores
from modelmap.storage import write_parquet

#: The fitted clip value and column means, next to Q in each version.
CENTRING_FILE = "centring.npz"
#: Every model's nearest models on Q (`kl.NeighbourGraph`), next to Q in each version.
GRAPH_FILE = "neighbours.npz"
#: Log-likelihoods of the held-out twin texts (K x M, NaN rows for models scored without
#: them), next to L: never part of L or Q; read by `leakage_report`.
TWINS_FILE = "T_twins.npy"

#: Model files read per query while building L (polars reads the files of one query in
#: parallel: 4.4 s for 10,000 files of 10,000 rows, against 12 s one file at a time).
READ_CHUNK = 500


class TextIdsDiffer(ValueError):
    """A model's file holds other corpus texts than the corpus (the coordinates cannot use it)."""


def select_models(
    keys: list[str], files: dict[str, Path], corpus_hash: str
) -> tuple[list[dict], list[str], list[str]]:
    """The models of `keys` that enter L, in order.

    Args:
        keys: every model key, in the order of L's rows.
        files: the likelihood file of each scored key (a key without one is not scored).
        corpus_hash: the current corpus.

    Returns:
        ``(models, left_out, budget)``: the file metadata of each model scored on every
        text of this corpus, with ``key`` and ``path`` added; a reason for each key left
        out; the keys scored on a text budget of this corpus (placed by `kl_table` and
        `model_map`, not part of L).
    """
    kept, left_out, budget = [], [], []
    for key in keys:
        if key not in files:
            left_out.append(f"{key}: not scored (failed or not yet run)")
            continue
        meta = {**read_metadata(files[key]), "key": key, "path": files[key]}
        if meta.get("corpus_hash") != corpus_hash:
            left_out.append(
                f"{key}: scored on another corpus ({meta.get('corpus_hash', '?')[:12]})"
            )
            continue
        if not is_full(meta):
            left_out.append(f"{key}: scored on a text budget, not on every corpus text")
            budget.append(key)
            continue
        kept.append(meta)
    return kept, left_out, budget


def _chunk_rows(models: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(corpus text ids, log-likelihoods, twin text ids, log-likelihoods) of each model, from
    one polars query over their files. A file's rows are sorted by (split, text_id), corpus
    first, and its metadata counts each split, so the query's rows are cut by those counts;
    any file the cut does not fit is read alone by the caller (`read_scores`)."""
    frame = pl.scan_parquet([m["path"] for m in models]).select("text_id", "loglik").collect()
    ids, values = frame["text_id"].to_numpy(), frame["loglik"].to_numpy()
    out, offset = [], 0
    for meta in models:
        n_corpus, n_twin = int(meta["n_corpus_rows"]), int(meta.get("n_twin_rows", 0))
        corpus, twin = (
            slice(offset, offset + n_corpus),
            slice(offset + n_corpus, offset + n_corpus + n_twin),
        )
        out.append((ids[corpus], values[corpus], ids[twin], values[twin]))
        offset += n_corpus + n_twin
    if offset != len(ids):
        raise ValueError(f"{len(ids)} rows, but the files' metadata counts {offset}")
    return out


def fill_rows(
    models: list[dict],
    text_ids: np.ndarray,
    L: np.ndarray,
    twins: tuple[np.ndarray, str] | None = None,
    T: np.ndarray | None = None,
) -> int:
    """Fill L (and T) from each model's file, one row per model.

    Args:
        models: `select_models`' metadata (``key``, ``path``, the split counts).
        text_ids: (N,) int64 corpus text ids, ascending: the columns of L.
        L: K x N array to fill with log-likelihoods in nats (a writable memmap welcome).
        twins: ((M,) twin text ids, twins hash), or None without twin texts.
        T: K x M array for the twin log-likelihoods (nats); the rows of models whose file
            has no twin rows of this hash are left as they are.

    Returns:
        The number of models whose twin rows were found.

    Raises:
        TextIdsDiffer: a file's corpus texts differ from `text_ids`.
    """
    with_twins = 0
    for start in range(0, len(models), READ_CHUNK):
        chunk = models[start : start + READ_CHUNK]
        fast = None
        if all("n_corpus_rows" in m for m in chunk):
            try:
                fast = _chunk_rows(chunk)
            except (pl.exceptions.PolarsError, ValueError):
                fast = None  # another schema (an older file): one file at a time
        for row, meta in enumerate(chunk, start=start):
            ids, loglik, twin_ids, twin_loglik = fast[row - start] if fast else (None,) * 4
            if fast is None or not np.array_equal(ids, text_ids):
                scores = read_scores(meta["path"])  # the exact reader (sorts, any layout)
                (ids, loglik), (twin_ids, twin_loglik) = (
                    scores.rows(SPLIT_CORPUS),
                    scores.rows(SPLIT_TWIN),
                )
            if not np.array_equal(ids, text_ids):
                raise TextIdsDiffer(f"model {meta['key']}: its text ids differ from the corpus")
            L[row] = loglik
            if twins is None or meta.get("twins_hash") != twins[1]:
                continue
            if np.array_equal(twin_ids, twins[0]):
                T[row] = twin_loglik
                with_twins += 1
    return with_twins


def row_means(L: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """(K,) float64 mean of each row of the K x N `L`, one block of rows at a time."""
    return np.concatenate(
        [
            np.asarray(L[start:stop], dtype=np.float64).mean(axis=1)
            for start, stop in row_blocks(len(L), block_rows)
        ]
    )


def _model_index(models: list[dict], L: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "row": np.arange(len(models)),
            "key": [m["key"] for m in models],
            "family": [m.get("family") or m["key"].split("/")[0] for m in models],
            # Declared base models (card data or zoo registry), comma-separated; "" for none.
            "base_models": [",".join(m.get("base_models") or []) for m in models],
            "revision": [m.get("revision") for m in models],
            "mean_loglik_nats": row_means(L),
            "n_params": [m.get("n_params") for m in models],
            "dtype": [m.get("dtype") for m in models],
        }
    )


def build_coordinates(
    folder: Path,
    models: list[dict],
    text_ids: np.ndarray,
    *,
    corpus_hash: str,
    mean_bytes: float,
    clip_percentile: float | None = 2.0,
    twins: tuple[np.ndarray, str] | None = None,
    left_out: Sequence[str] = (),
    budget: Sequence[str] = (),
) -> dict:
    """Write one version of the coordinates (the files of this module's table) into `folder`.

    L is filled from the files, the :class:`Centring` fitted on it (clip value exact and
    streamed, column means; no copy of L in memory), then the clipped L and Q written block
    by block, and the nearest models of every model found once on Q.

    Args:
        folder: an empty folder.
        models: `select_models`' models, in the order of L's rows (K of them, at least 1).
        text_ids: (N,) int64 corpus text ids, ascending.
        corpus_hash, mean_bytes: the corpus's hash and mean bytes per text (kept in ``info``).
        clip_percentile: global clipping percentile of L (paper: 2); None: no clipping.
        twins: ((M,) twin text ids, twins hash) of the corpus's twin texts, or None.
        left_out, budget: `select_models`' reasons and budget keys (kept in ``info``).

    Returns:
        ``info`` (as written to ``info.json``).
    """
    K, N = len(models), len(text_ids)
    L = np.lib.format.open_memmap(folder / "L_raw.npy", mode="w+", dtype=np.float32, shape=(K, N))
    T = None
    if twins is not None:
        T = np.lib.format.open_memmap(folder / TWINS_FILE, "w+", np.float32, (K, len(twins[0])))
        T[:] = np.nan
    with_twins = fill_rows(models, text_ids, L, twins, T)
    L.flush()
    if T is not None:
        T.flush()
        del T
    # Saved with Q so that a model scored later is placed with the same frozen values.
    centring = Centring(percentile=clip_percentile or None).fit(L)
    centring.save(folder / CENTRING_FILE)
    clipped = np.lib.format.open_memmap(folder / "L_clipped.npy", "w+", np.float32, (K, N))
    Q = np.lib.format.open_memmap(folder / "Q.npy", mode="w+", dtype=np.float32, shape=(K, N))
    centring.transform_into(L, Q, clipped)
    clipped.flush()
    Q.flush()
    del clipped
    # The nearest models of every model, once: the KL table, the map and the reports read
    # their first columns.
    NeighbourGraph.of(Q).save(folder / GRAPH_FILE)
    info = {
        "corpus_hash": corpus_hash,
        "K": K,
        "N": N,
        "mean_bytes": mean_bytes,
        "clip_percentile": clip_percentile,
        "clip_threshold_nats": float(centring.clip_value),
        "left_out": list(left_out),
        "budget_models": list(budget),
        "twins_hash": twins[1] if twins else None,
        "models_with_twins": with_twins,
    }
    write_parquet(_model_index(models, L), folder / "models.parquet", info)
    (folder / "info.json").write_text(json.dumps(info, indent=2))
    return info
