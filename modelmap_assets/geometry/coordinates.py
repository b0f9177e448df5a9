"""`coordinates`: L, clipped L and the double-centred Q of every scored model, a version per
refresh (the files: `modelmap.geometry.assemble`)."""

import json

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.assemble import (
    CENTRING_FILE,
    GRAPH_FILE,
    TWINS_FILE,
    TextIdsDiffer,
    build_coordinates,
    select_models,
)
from modelmap.geometry.kl import NeighbourGraph
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

__all__ = [
    "CENTRING_FILE",
    "GRAPH_FILE",
    "TWINS_FILE",
    "coordinates",
    "read_coordinates",
    "read_graph",
    "refresh",
]

# Refresh after upstream updates, but never wait for a model that failed or is missing:
# the map is built from whatever has been scored. `coordinates` itself refreshes at most
# hourly by default (`modelmap_assets.automation.conditions`; the code location applies the
# setting).
refresh = eager_refresh


class CoordinatesConfig(dg.Config):
    clip_percentile: float | None = Field(
        default=2.0, description="global clipping percentile of L (paper: 2); null: none"
    )


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
    keys = sorted(context.instance.get_dynamic_partitions(models_partitions.name))
    scored = set(storage.likelihood_keys())
    files = storage.model_files("likelihood", [k for k in keys if k in scored])
    models, left_out, budget = select_models(keys, files, corpus_hash)
    for reason in left_out:
        context.log.warning(f"left out of the map: {reason}")
    if not models:
        raise dg.Failure(description="no model has been scored on the current corpus yet")

    out = storage.new_version_dir("coordinates", others_in_progress(context))
    twin_table = storage.read_twins(corpus_hash)
    twins = None
    if twin_table is not None:
        twin_ids = twin_table[0]["text_id"].to_numpy().astype(np.int64)
        twins = (twin_ids, twin_table[1]["twins_hash"])
    try:
        info = build_coordinates(
            out,
            models,
            corpus_df["text_id"].to_numpy(),
            corpus_hash=corpus_hash,
            mean_bytes=corpus_meta["mean_bytes"],
            clip_percentile=config.clip_percentile,
            twins=twins,
            left_out=left_out,
            budget=budget,
        )
    except TextIdsDiffer as exc:
        raise dg.Failure(description=str(exc)) from exc
    check = centring_check(np.load(out / "Q.npy", mmap_mode="r"))
    final = storage.publish_version("coordinates", out)
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "K": info["K"],
            "N": info["N"],
            "corpus_hash": corpus_hash,
            "clip_threshold_nats": info["clip_threshold_nats"],
            "left_out": dg.MetadataValue.json(left_out),
            "path": dg.MetadataValue.path(str(final)),
        },
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
