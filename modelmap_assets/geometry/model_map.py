"""`model_map`: the 2-D map of every model (t-SNE on Q), as a PNG and an interactive page."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.mapping import (
    MIN_MODELS_FOR_TSNE,
    embed_2d,
    embed_stable,
    plot_map_png,
    write_map_html,
)
from modelmap.geometry.regime import scale_bands_html
from modelmap.geometry.textbudget import (
    partial_row_distances,
    place_from_neighbours,
)
from modelmap.likelihoods import (
    TEXT_SET_ALL,
    TEXT_SET_BUDGET,
)
from modelmap.storage import read_parquet_metadata, write_parquet
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph, refresh
from modelmap_assets.geometry.kl_table import KL_REGIME_MAX_BITS_PER_BYTE, budget_rows, kl_table
from modelmap_assets.metadata import png_md
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


class ModelMapConfig(dg.Config):
    keep_previous: bool = Field(
        default=True,
        description="start from the previous map and align to it, so that the models on it "
        "do not move; false: a fresh t-SNE",
    )


@dg.asset(
    deps=[coordinates, kl_table],
    automation_condition=refresh,
    kinds={"plotly"},
    group_name="modelmap",
)
def model_map(
    context: dg.AssetExecutionContext,
    config: ModelMapConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The 2-D map: t-SNE of Q with the paper's settings (PCA for very few models).

    A map users can learn: models already on the previous map start where they were and the
    result is aligned to it (Procrustes), so they stay put; new models start where
    `modelmap neighbours` placed them. Writes `map.png`, an interactive `map.html` and
    `map.parquet` (key, family, x, y).
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    families = index["family"].to_list()
    previous = _previous_map(storage.root / "model_map" / "map.parquet", keys, info["corpus_hash"])
    graph = read_graph(storage)
    if config.keep_previous and previous is not None and len(keys) >= MIN_MODELS_FOR_TSNE:
        xy = embed_stable(Q, previous[0], previous[1], graph=graph)
        method = "tsne"
        context.log.info(f"{len(previous[1])} of {len(keys)} models kept from the previous map")
    else:
        xy, method = embed_2d(Q, graph=graph)
    scored_on = [f"all {info['N']} texts (embedded)"] * len(keys)
    mean_loglik = [round(v, 2) for v in index["mean_loglik_nats"]]
    # Models scored on a text budget cannot enter the embedding (their row is partial): each
    # is placed at the 1/distance-weighted mean of its 5 nearest embedded models.
    corpus_df, _ = storage.read_corpus()
    budget = budget_rows(context, storage, info, corpus_df["text_id"].to_numpy())
    if budget:
        L_clipped = np.load(
            storage.current_version_dir("coordinates") / "L_clipped.npy", mmap_mode="r"
        )
        placed = []
        for b in budget:
            sq = partial_row_distances(
                b["loglik"],
                L_clipped,
                b["columns"],
                b["selection"]["weight"].to_numpy(),
                info["clip_threshold_nats"],
            )
            placed.append(place_from_neighbours(xy, sq))
            scored_on.append(
                f"text budget: {len(b['columns'])} texts (placed from neighbours, not embedded)"
            )
            mean_loglik.append("n/a (budget)")
        xy = np.vstack([xy, np.array(placed)])
        keys = keys + [b["key"] for b in budget]
        families = families + [b["family"] for b in budget]
    out = storage.asset_dir("model_map")
    budget_keys = [b["key"] for b in budget]
    png = plot_map_png(
        xy,
        [k + " [budget]" if k in budget_keys else k for k in keys],
        families,
        out / "map.png",
        title=f"modelmap: {len(keys)} models ({method})"
        + (f"; {len(budget)} scored on the text budget, placed" if budget else ""),
    )
    nearest = _nearest(storage, keys)
    html = write_map_html(
        xy,
        keys,
        families,
        out / "map.html",
        extra={
            "mean log-likelihood (nats)": mean_loglik,
            "nearest": nearest,
            "scored on": scored_on,
        },
        notes_html=scale_bands_html(_regime_limit(storage)),
    )
    write_parquet(
        pl.DataFrame(
            {
                "key": keys,
                "family": families,
                "x": xy[:, 0],
                "y": xy[:, 1],
                "text_set": [TEXT_SET_BUDGET if k in budget_keys else TEXT_SET_ALL for k in keys],
            }
        ),
        out / "map.parquet",
        {"corpus_hash": info["corpus_hash"], "method": method, "budget_models": budget_keys},
    )
    context.log.info(f"map of {len(keys)} models ({method}) at {png}")
    mlflow.log_run(
        "model_map",
        params={
            "K": len(keys),
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": ",".join(budget_keys)[:500],
        },
        metrics={"K": len(keys), "budget_models": len(budget_keys)},
        tags={"modelmap.asset": "model_map"},
        artifacts={"map": [png, html, out / "map.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": dg.MetadataValue.json(budget_keys),
            "map": dg.MetadataValue.md(png_md(png, "model map")),
            "png": dg.MetadataValue.path(str(png)),
            "html": dg.MetadataValue.path(str(html)),
        }
    )


def _previous_map(
    path: Path, keys: list[str], corpus_hash: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, rows in `keys`) of the models of the previous t-SNE map on this corpus."""
    if not path.exists():
        return None
    meta = read_parquet_metadata(path)
    if meta.get("corpus_hash") != corpus_hash or meta.get("method") != "tsne":
        return None
    row_of = {k: i for i, k in enumerate(keys)}
    kept = pl.read_parquet(path).filter(pl.col("key").is_in(list(row_of)))
    if kept.height < 3:
        return None
    rows = np.array([row_of[k] for k in kept["key"].to_list()], dtype=np.int64)
    return kept.select("x", "y").to_numpy().astype(np.float64), rows


def _regime_limit(storage: StorageResource) -> float:
    """The KL-regime limit the current `kl_table` was written with."""
    path = storage.root / "kl_table" / "neighbours.parquet"
    if path.exists():
        return float(
            read_parquet_metadata(path).get(
                "kl_regime_max_bits_per_byte", KL_REGIME_MAX_BITS_PER_BYTE
            )
        )
    return KL_REGIME_MAX_BITS_PER_BYTE


def _nearest(storage: StorageResource, keys: list[str]) -> list[str]:
    path = storage.root / "kl_table" / "neighbours.parquet"
    if not path.exists():
        return [""] * len(keys)
    first = pl.read_parquet(path).filter(pl.col("rank") == 1)
    lookup = dict(zip(first["model"].to_list(), first["neighbour"].to_list(), strict=True))
    return [lookup.get(k, "") for k in keys]
