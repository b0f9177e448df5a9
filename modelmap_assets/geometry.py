"""Assets over all models: `coordinates` (L and Q), `kl_table` and `model_map`."""

import json

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.centering import clip_global, double_centre_into
from modelmap.geometry.kl import (
    nearest_neighbours,
    neighbour_table,
    pair_table,
    two_kl_nats,
)
from modelmap.geometry.mapping import embed_2d, plot_map_png, write_map_html
from modelmap.likelihoods import corpus_rows, is_full
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.storage import write_parquet
from modelmap_assets.metadata import png_md
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring import likelihood
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

# Refresh after upstream updates, but never wait for a model that failed or is missing:
# the map is built from whatever has been scored.
refresh = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


class CoordinatesConfig(dg.Config):
    clip_percentile: float | None = Field(
        default=2.0, description="global clipping percentile of L (paper: 2); null: none"
    )


def _load_models(
    storage: StorageResource, keys: list[str], corpus_hash: str, text_ids: np.ndarray
) -> tuple[list[dict], list[str]]:
    """Metadata of the models scored on this corpus; and a reason for each one left out."""
    kept, left_out = [], []
    scored = set(storage.likelihood_keys())
    for key in keys:
        if key not in scored:
            left_out.append(f"{key}: not scored (failed or not yet run)")
            continue
        meta = read_likelihood_metadata(storage.likelihood_path(key))
        if meta.get("corpus_hash") != corpus_hash:
            left_out.append(
                f"{key}: scored on another corpus ({meta.get('corpus_hash', '?')[:12]})"
            )
            continue
        if not is_full(meta):
            left_out.append(f"{key}: scored on a text budget, not on every corpus text")
            continue
        kept.append(meta)
    return kept, left_out


CENTRED = "rows_and_columns_centred"


def centring_check(Q: np.ndarray, block_rows: int = 4096) -> dg.AssetCheckResult:
    """Every row and every column of Q has mean ~0 (float32 round-off allowed)."""
    K, N = Q.shape
    col_sums = np.zeros(N, dtype=np.float64)
    worst_row, sq = 0.0, 0.0
    for start in range(0, K, block_rows):
        block = np.asarray(Q[start : start + block_rows], dtype=np.float64)
        worst_row = max(worst_row, float(np.abs(block.mean(axis=1)).max()))
        col_sums += block.sum(axis=0)
        sq += float((block**2).sum())
    worst_col = float(np.abs(col_sums / K).max())
    rms = (sq / (K * N)) ** 0.5
    tolerance = 1e-4 * max(rms, 1.0)
    return dg.AssetCheckResult(
        check_name=CENTRED,
        passed=bool(max(worst_row, worst_col) <= tolerance),
        metadata={
            "max_abs_row_mean": worst_row,
            "max_abs_col_mean": worst_col,
            "rms_Q": rms,
            "tolerance": tolerance,
        },
    )


@dg.asset(
    deps=[dg.AssetDep(likelihood, partition_mapping=dg.AllPartitionMapping())],
    automation_condition=refresh,
    kinds={"numpy"},
    group_name="modelmap",
    check_specs=[dg.AssetCheckSpec(CENTRED, asset="coordinates", blocking=True)],
)
def coordinates(
    context: dg.AssetExecutionContext, config: CoordinatesConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The K x N log-likelihood matrix L of every scored model, clipped, and double-centred Q.

    Files (float32 .npy, memory-mappable): `L_raw.npy`, `L_clipped.npy`, `Q.npy`, and the model
    index `models.parquet` (row, key, family, revision, ...), in a versioned folder.
    """
    corpus_df, corpus_meta = storage.read_corpus()
    corpus_hash = corpus_meta["corpus_hash"]
    text_ids = corpus_df["text_id"].to_numpy()
    keys = sorted(context.instance.get_dynamic_partitions(models_partitions.name))
    models, left_out = _load_models(storage, keys, corpus_hash, text_ids)
    for reason in left_out:
        context.log.warning(f"left out of the map: {reason}")
    if not models:
        raise dg.Failure(description="no model has been scored on the current corpus yet")

    K, N = len(models), len(text_ids)
    out = storage.new_version_dir("coordinates")
    L = np.lib.format.open_memmap(out / "L_raw.npy", mode="w+", dtype=np.float32, shape=(K, N))
    for row, meta in enumerate(models):
        scores = corpus_rows(storage.likelihood_path(meta["key"]))
        if not np.array_equal(scores["text_id"].to_numpy(), text_ids):
            raise dg.Failure(
                description=f"model {meta['key']}: its text ids differ from the corpus"
            )
        L[row] = scores["loglik"].to_numpy()
    L.flush()
    clipped, threshold = clip_global(L, config.clip_percentile)
    np.save(out / "L_clipped.npy", clipped.astype(np.float32, copy=False))
    Q = np.lib.format.open_memmap(out / "Q.npy", mode="w+", dtype=np.float32, shape=(K, N))
    double_centre_into(clipped, Q)
    Q.flush()
    index = pl.DataFrame(
        {
            "row": np.arange(K),
            "key": [m["key"] for m in models],
            "family": [m.get("family") or m["key"].split("/")[0] for m in models],
            # Declared base models (card data or zoo registry), comma-separated; "" for none.
            "base_models": [",".join(m.get("base_models") or []) for m in models],
            "revision": [m.get("revision") for m in models],
            "mean_loglik_nats": np.asarray(L).mean(axis=1),
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


def read_coordinates(storage: StorageResource) -> tuple[pl.DataFrame, np.ndarray, dict]:
    """(model index, Q memory-mapped, info) of the current `coordinates` output."""
    folder = storage.current_version_dir("coordinates")
    info = json.loads((folder / "info.json").read_text())
    return (
        pl.read_parquet(folder / "models.parquet"),
        np.load(folder / "Q.npy", mmap_mode="r"),
        info,
    )


class KLTableConfig(dg.Config):
    neighbours: int = Field(default=5, description="nearest neighbours kept per model")
    max_pair_models: int = Field(
        default=2000, description="the table of every pair is written while K is at most this"
    )


@dg.asset(deps=[coordinates], automation_condition=refresh, kinds={"polars"}, group_name="modelmap")
def kl_table(
    context: dg.AssetExecutionContext,
    config: KLTableConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Estimated 2 KL between models, ||q_i - q_j||^2 / N, in nats per text and bits per byte.

    `neighbours.parquet` always (each model's nearest models); `pairs.parquet` while K is small.
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    K = len(keys)
    idx, nn = nearest_neighbours(Q, config.neighbours)
    neighbours = neighbour_table(idx, nn, keys, info["mean_bytes"])
    out = storage.asset_dir("kl_table")
    write_parquet(neighbours, out / "neighbours.parquet", {"corpus_hash": info["corpus_hash"]})
    metadata: dict = {"K": K, "corpus_hash": info["corpus_hash"]}
    if K <= config.max_pair_models:
        pairs = pair_table(two_kl_nats(np.asarray(Q)), keys, info["mean_bytes"])
        write_parquet(pairs, out / "pairs.parquet", {"corpus_hash": info["corpus_hash"]})
        if pairs.height:
            bpb = pairs["two_kl_bits_per_byte"]
            metadata.update(
                {
                    "two_kl_bits_per_byte_median": float(bpb.median()),
                    "two_kl_bits_per_byte_min": float(bpb.min()),
                    "two_kl_bits_per_byte_max": float(bpb.max()),
                }
            )
    first = neighbours.filter(pl.col("rank") == 1)
    metadata["nearest_neighbours"] = dg.MetadataValue.md(
        "| model | nearest | 2KL (bits/byte) |\n| --- | --- | --- |\n"
        + "\n".join(
            f"| {r['model']} | {r['neighbour']} | {r['two_kl_bits_per_byte']:.4f} |"
            for r in first.head(200).iter_rows(named=True)
        )
    )
    metadata["path"] = dg.MetadataValue.path(str(out))
    mlflow.log_run(
        "kl_table",
        params={"K": K, "corpus_hash": info["corpus_hash"], "neighbours": config.neighbours},
        metrics={k: v for k, v in metadata.items() if k.startswith("two_kl")},
        tags={"modelmap.asset": "kl_table"},
        artifacts={"kl_table": sorted(out.glob("*.parquet"))},
        context=context,
    )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    deps=[coordinates, kl_table],
    automation_condition=refresh,
    kinds={"plotly"},
    group_name="modelmap",
)
def model_map(
    context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """The 2-D map: t-SNE of Q with the paper's settings (PCA for very few models).

    Writes `map.png`, an interactive `map.html` and `map.parquet` (key, family, x, y).
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    families = index["family"].to_list()
    xy, method = embed_2d(np.asarray(Q))
    out = storage.asset_dir("model_map")
    png = plot_map_png(
        xy, keys, families, out / "map.png", title=f"modelmap: {len(keys)} models ({method})"
    )
    nearest = _nearest(storage, keys)
    html = write_map_html(
        xy,
        keys,
        families,
        out / "map.html",
        extra={
            "mean log-likelihood (nats)": [round(v, 2) for v in index["mean_loglik_nats"]],
            "nearest": nearest,
        },
    )
    write_parquet(
        pl.DataFrame({"key": keys, "family": families, "x": xy[:, 0], "y": xy[:, 1]}),
        out / "map.parquet",
        {"corpus_hash": info["corpus_hash"], "method": method},
    )
    context.log.info(f"map of {len(keys)} models ({method}) at {png}")
    mlflow.log_run(
        "model_map",
        params={"K": len(keys), "method": method, "corpus_hash": info["corpus_hash"]},
        metrics={"K": len(keys)},
        tags={"modelmap.asset": "model_map"},
        artifacts={"map": [png, html, out / "map.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "map": dg.MetadataValue.md(png_md(png, "model map")),
            "png": dg.MetadataValue.path(str(png)),
            "html": dg.MetadataValue.path(str(html)),
        }
    )


def _nearest(storage: StorageResource, keys: list[str]) -> list[str]:
    path = storage.root / "kl_table" / "neighbours.parquet"
    if not path.exists():
        return [""] * len(keys)
    first = pl.read_parquet(path).filter(pl.col("rank") == 1)
    lookup = dict(zip(first["model"].to_list(), first["neighbour"].to_list(), strict=True))
    return [lookup.get(k, "") for k in keys]
