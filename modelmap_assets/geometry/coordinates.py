"""`coordinates`: L, clipped L and the double-centred Q of every scored model, a version per
refresh."""

import json

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.kl import (
    NeighbourGraph,
)
from modelmap.geometry.placement import Centring
from modelmap.likelihoods import (
    SPLIT_CORPUS,
    SPLIT_TWIN,
    is_full,
    read_scores,
)
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.storage import write_parquet
from modelmap_assets.automation.conditions import (
    DEFAULT_SCHEDULE,
    coordinates_condition,
    eager_refresh,
)
from modelmap_assets.geometry.checks import CENTRED, centring_check
from modelmap_assets.partitions import models_partitions
from modelmap_assets.runs import others_in_progress
from modelmap_assets.scoring.assets import likelihood
from resources.storage import StorageResource

# Refresh after upstream updates, but never wait for a model that failed or is missing:
# the map is built from whatever has been scored. `coordinates` itself refreshes at most
# hourly by default (`modelmap_assets.automation.conditions`; the code location applies the
# setting).
refresh = eager_refresh


class CoordinatesConfig(dg.Config):
    clip_percentile: float | None = Field(
        default=2.0, description="global clipping percentile of L (paper: 2); null: none"
    )


def _load_models(
    storage: StorageResource, keys: list[str], corpus_hash: str
) -> tuple[list[dict], list[str], list[str]]:
    """Metadata of the models scored on this corpus (with ``path``, their file); a reason for
    each one left out; the keys of those scored on a text budget (placed by `kl_table` and
    `model_map`)."""
    kept, left_out, budget = [], [], []
    scored = set(storage.likelihood_keys())
    paths = storage.model_files("likelihood", [k for k in keys if k in scored])
    for key in keys:
        if key not in scored:
            left_out.append(f"{key}: not scored (failed or not yet run)")
            continue
        meta = {**read_likelihood_metadata(paths[key]), "key": key, "path": paths[key]}
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


#: The fitted clip value and column means, next to Q in each `coordinates` version.
CENTRING_FILE = "centring.npz"


#: Every model's nearest models on Q (`kl.NeighbourGraph`), next to Q in each version.
GRAPH_FILE = "neighbours.npz"


#: Log-likelihoods of the held-out twin texts (K x M, NaN rows for models scored without
#: them), next to L: never part of L or Q; read by `leakage_report`.
TWINS_FILE = "T_twins.npy"


#: Model files read per query while building L (polars reads the files of one query in
#: parallel: 4.4 s for 10,000 files of 10,000 rows, against 12 s one file at a time).
READ_CHUNK = 500


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


def _read_rows(
    models: list[dict],
    text_ids: np.ndarray,
    L: np.ndarray,
    twins: tuple[np.ndarray, str] | None,
    T: np.ndarray | None,
) -> int:
    """Fill L (and T) from each model's file; the number of models whose twin rows were
    found. A file whose corpus texts differ from the corpus fails the step by name."""
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
                raise dg.Failure(
                    description=f"model {meta['key']}: its text ids differ from the corpus"
                )
            L[row] = loglik
            if twins is None or meta.get("twins_hash") != twins[1]:
                continue
            if np.array_equal(twin_ids, twins[0]):
                T[row] = twin_loglik
                with_twins += 1
    return with_twins


@dg.asset(
    deps=[dg.AssetDep(likelihood, partition_mapping=dg.AllPartitionMapping())],
    automation_condition=coordinates_condition(DEFAULT_SCHEDULE),
    kinds={"numpy"},
    group_name="modelmap",
    check_specs=[dg.AssetCheckSpec(CENTRED, asset="coordinates", blocking=True)],
)
def coordinates(
    context: dg.AssetExecutionContext, config: CoordinatesConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The K x N log-likelihood matrix L of every scored model, clipped, and double-centred Q.

    Files (float32 .npy, memory-mappable): `L_raw.npy`, `L_clipped.npy`, `Q.npy`, the model
    index `models.parquet` (row, key, family, revision, ...) and the fitted centring
    `centring.npz` (clip value, column means: what places a new model), in a versioned folder.
    """
    corpus_df, corpus_meta = storage.read_corpus()
    corpus_hash = corpus_meta["corpus_hash"]
    text_ids = corpus_df["text_id"].to_numpy()
    keys = sorted(context.instance.get_dynamic_partitions(models_partitions.name))
    models, left_out, budget_keys = _load_models(storage, keys, corpus_hash)
    for reason in left_out:
        context.log.warning(f"left out of the map: {reason}")
    if not models:
        raise dg.Failure(description="no model has been scored on the current corpus yet")

    K, N = len(models), len(text_ids)
    out = storage.new_version_dir("coordinates", others_in_progress(context))
    L = np.lib.format.open_memmap(out / "L_raw.npy", mode="w+", dtype=np.float32, shape=(K, N))
    twin_table = storage.read_twins(corpus_hash)
    twins, T = None, None
    if twin_table is not None:
        twin_ids = twin_table[0]["text_id"].to_numpy().astype(np.int64)
        twins = (twin_ids, twin_table[1]["twins_hash"])
        T = np.lib.format.open_memmap(out / TWINS_FILE, "w+", np.float32, (K, len(twin_ids)))
        T[:] = np.nan
    with_twins = _read_rows(models, text_ids, L, twins, T)
    L.flush()
    if T is not None:
        T.flush()
        del T
    # Clip value (exact, streamed) and column means: no copy of L in memory. Saved with Q so
    # that a model scored later is placed with the same frozen values.
    centring = Centring(percentile=config.clip_percentile or None).fit(L)
    centring.save(out / CENTRING_FILE)
    threshold = centring.clip_value
    clipped = np.lib.format.open_memmap(out / "L_clipped.npy", "w+", np.float32, (K, N))
    Q = np.lib.format.open_memmap(out / "Q.npy", mode="w+", dtype=np.float32, shape=(K, N))
    centring.transform_into(L, Q, clipped)
    clipped.flush()
    Q.flush()
    del clipped
    # The nearest models of every model, once: the KL table, the map and the reports read
    # their first columns (each had made its own pass over all K^2 pairs).
    NeighbourGraph.of(Q).save(out / GRAPH_FILE)
    index = pl.DataFrame(
        {
            "row": np.arange(K),
            "key": [m["key"] for m in models],
            "family": [m.get("family") or m["key"].split("/")[0] for m in models],
            # Declared base models (card data or zoo registry), comma-separated; "" for none.
            "base_models": [",".join(m.get("base_models") or []) for m in models],
            "revision": [m.get("revision") for m in models],
            "mean_loglik_nats": _row_means(L),
            "n_params": [m.get("n_params") for m in models],
            "dtype": [m.get("dtype") for m in models],
        }
    )
    info = {
        "corpus_hash": corpus_hash,
        "K": K,
        "N": N,
        "mean_bytes": corpus_meta["mean_bytes"],
        "clip_percentile": config.clip_percentile,
        "clip_threshold_nats": float(threshold),
        "left_out": left_out,
        "budget_models": budget_keys,
        "twins_hash": twins[1] if twins else None,
        "models_with_twins": with_twins,
    }
    write_parquet(index, out / "models.parquet", info)
    (out / "info.json").write_text(json.dumps(info, indent=2))
    check = centring_check(Q)
    final = storage.publish_version("coordinates", out)
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "K": K,
            "N": N,
            "corpus_hash": corpus_hash,
            "clip_threshold_nats": float(threshold),
            "left_out": dg.MetadataValue.json(left_out),
            "path": dg.MetadataValue.path(str(final)),
        },
    )


def _row_means(L: np.ndarray, block_rows: int = 2048) -> np.ndarray:
    """Mean of each row (float64), one block of rows at a time."""
    return np.concatenate(
        [
            np.asarray(L[s : s + block_rows], dtype=np.float64).mean(axis=1)
            for s in range(0, len(L), block_rows)
        ]
    )


def read_graph(storage: StorageResource) -> NeighbourGraph | None:
    """The nearest models on the current Q (None for a version written before the graph)."""
    path = storage.current_version_dir("coordinates") / GRAPH_FILE
    return NeighbourGraph.load(path) if path.exists() else None


def read_coordinates(storage: StorageResource) -> tuple[pl.DataFrame, np.ndarray, dict]:
    """(model index, Q memory-mapped, info) of the current `coordinates` output."""
    folder = storage.current_version_dir("coordinates")
    info = json.loads((folder / "info.json").read_text())
    return (
        pl.read_parquet(folder / "models.parquet"),
        np.load(folder / "Q.npy", mmap_mode="r"),
        info,
    )
