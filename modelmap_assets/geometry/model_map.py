"""`model_map`: the 2-D map of every model (t-SNE on Q), as a PNG and an interactive page
(the layout: `modelmap.geometry.layout`)."""

import dagster as dg
import polars as pl
from pydantic import Field

from modelmap.geometry.layout import lay_out_map, previous_map
from modelmap.geometry.mapping import plot_map_png, write_map_html
from modelmap.geometry.regime import scale_bands_html
from modelmap.storage import read_parquet_metadata, write_parquet
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph, refresh
from modelmap_assets.geometry.kl_table import KL_REGIME_MAX_BITS_PER_BYTE, kl_table, read_budget
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
    `modelmap neighbours` placed them. Models scored on a text budget are placed from their
    nearest models. Writes `map.png`, an interactive `map.html` and `map.parquet` (key,
    family, x, y, text_set).
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    out = storage.asset_dir("model_map")
    previous = previous_map(out / "map.parquet", keys, info["corpus_hash"])
    budget, L_clipped = read_budget(context, storage, info)
    layout = lay_out_map(
        Q,
        keys,
        index["family"].to_list(),
        index["mean_loglik_nats"].to_list(),
        graph=read_graph(storage),
        previous=previous if config.keep_previous else None,
        budget=budget,
        L_clipped=L_clipped,
        clip_threshold_nats=info["clip_threshold_nats"],
    )
    if layout.kept:
        context.log.info(f"{layout.kept} of {len(keys)} models kept from the previous map")
    K, method, budget_keys = len(layout.keys), layout.method, layout.budget_keys
    png = plot_map_png(layout.xy, layout.labels, layout.families, out / "map.png", layout.title)
    html = write_map_html(
        layout.xy,
        layout.keys,
        layout.families,
        out / "map.html",
        extra={
            "mean log-likelihood (nats)": layout.mean_loglik,
            "nearest": _nearest(storage, layout.keys),
            "scored on": layout.scored_on,
        },
        notes_html=scale_bands_html(_regime_limit(storage)),
    )
    map_meta = {"corpus_hash": info["corpus_hash"], "method": method, "budget_models": budget_keys}
    write_parquet(layout.frame(), out / "map.parquet", map_meta)
    context.log.info(f"map of {K} models ({method}) at {png}")
    mlflow.log_run(
        "model_map",
        params={
            "K": K,
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": ",".join(budget_keys)[:500],
        },
        metrics={"K": K, "budget_models": len(budget_keys)},
        tags={"modelmap.asset": "model_map"},
        artifacts={"map": [png, html, out / "map.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            "K": K,
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": dg.MetadataValue.json(budget_keys),
            "map": dg.MetadataValue.md(png_md(png, "model map")),
            "png": dg.MetadataValue.path(str(png)),
            "html": dg.MetadataValue.path(str(html)),
        }
    )


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
