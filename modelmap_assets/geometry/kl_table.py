"""`kl_table`: estimated 2KL for every pair while K is small, and the nearest neighbours always
(the tables: `modelmap.geometry.kl_tables`)."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.kl_tables import KLTableSettings, kl_tables
from modelmap.geometry.regime import KL_REGIME_MAX_BITS_PER_BYTE
from modelmap.likelihoods import corpus_rows, is_full
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.selections import read_selection
from modelmap.storage import write_parquet
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph, refresh
from modelmap_assets.partitions import models_partitions
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

__all__ = ["KL_REGIME_MAX_BITS_PER_BYTE", "budget_rows", "kl_table"]


class KLTableConfig(dg.Config):
    neighbours: int = Field(default=5, description="nearest neighbours kept per model")
    max_pair_models: int = Field(
        default=2000, description="the table of every pair is written while K is at most this"
    )
    interval_level: float = Field(
        default=0.95, description="two-sided confidence level of the intervals over texts"
    )
    bootstrap_resamples: int = Field(
        default=200,
        description="B: bootstrap resamples of the texts for the neighbours' intervals and "
        "the paired nearest-vs-second test (the pairs table uses the closed-form SE)",
    )
    kl_regime_max_bits_per_byte: float = Field(
        default=KL_REGIME_MAX_BITS_PER_BYTE,
        description="estimates above this are outside the KL regime: bits/byte columns null, "
        "`in_kl_regime` false, `two_kl_nats` kept as a squared map distance",
    )

    def settings(self) -> KLTableSettings:
        return KLTableSettings(
            neighbours=self.neighbours,
            max_pair_models=self.max_pair_models,
            interval_level=self.interval_level,
            bootstrap_resamples=self.bootstrap_resamples,
            kl_regime_max_bits_per_byte=self.kl_regime_max_bits_per_byte,
        )


def budget_rows(
    context: dg.AssetExecutionContext, storage: StorageResource, info: dict, text_ids: np.ndarray
) -> list[dict]:
    """The models scored on a text budget of the current corpus: key, family, their partial
    row in selection order, the selection's rows and the column of each selected text.

    Only the files `coordinates` found to be budget files (``info["budget_models"]``) are
    read, so a refresh at K = 100,000 does not read every file's metadata again."""
    keys = set(context.instance.get_dynamic_partitions(models_partitions.name))
    column = {int(t): i for i, t in enumerate(text_ids)}
    rows = []
    for key in info.get("budget_models", []):
        if key not in keys:
            continue
        path = storage.likelihood_path(key)
        meta = read_likelihood_metadata(path)
        if is_full(meta) or meta.get("corpus_hash") != info["corpus_hash"]:
            continue
        try:
            selection, _ = read_selection(storage.root, meta.get("selection_hash"))
        except FileNotFoundError as exc:
            context.log.warning(f"{key}: scored on a text budget, but {exc}; left out")
            continue
        scores = corpus_rows(path)
        if scores["text_id"].to_list() != selection["text_id"].to_list():
            context.log.warning(f"{key}: its texts differ from its selection's; left out")
            continue
        rows.append(
            {
                "key": key,
                "family": meta.get("family") or key.split("/")[0],
                "loglik": scores["loglik"].to_numpy(),
                "selection": selection,
                "selection_hash": meta["selection_hash"],
                "columns": np.array([column[int(t)] for t in selection["text_id"]]),
            }
        )
    return rows


def read_budget(
    context: dg.AssetExecutionContext, storage: StorageResource, info: dict
) -> tuple[list[dict], np.ndarray | None]:
    """`budget_rows` of the current corpus and the clipped L they are compared with
    (memory-mapped; None without budget models)."""
    corpus_df, _ = storage.read_corpus()
    budget = budget_rows(context, storage, info, corpus_df["text_id"].to_numpy())
    if not budget:
        return budget, None
    folder = storage.current_version_dir("coordinates")
    return budget, np.load(folder / "L_clipped.npy", mmap_mode="r")


@dg.asset(deps=[coordinates], automation_condition=refresh, kinds={"polars"}, group_name="modelmap")
def kl_table(
    context: dg.AssetExecutionContext,
    config: KLTableConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Estimated 2 KL between models, ||q_i - q_j||^2 / N, in nats per text and bits per byte,
    each with a confidence interval over texts, marked outside the KL regime past
    `kl_regime_max_bits_per_byte`.

    `neighbours.parquet` always (each model's nearest models, the paired test of its first
    two, models scored on a text budget placed by weighted distances); `pairs.parquet` while
    K is small.
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    budget, L_clipped = read_budget(context, storage, info)
    neighbours, pairs = kl_tables(
        Q,
        keys,
        info["mean_bytes"],
        config.settings(),
        graph=read_graph(storage),
        budget=budget,
        L_clipped=L_clipped,
        clip_threshold_nats=info["clip_threshold_nats"],
    )
    out = storage.asset_dir("kl_table")
    budget_keys = [b["key"] for b in budget]
    table_meta = _table_metadata(config, info["corpus_hash"], budget_keys)
    write_parquet(neighbours, out / "neighbours.parquet", table_meta)
    pairs_path = out / "pairs.parquet"
    if pairs is not None:
        write_parquet(pairs, pairs_path, table_meta)
    elif pairs_path.exists():
        # A table of an earlier, smaller K is not this one: never leave it to be read or logged.
        pairs_path.unlink()
        context.log.info(
            f"pairs.parquet removed: K={len(keys)} is over max_pair_models={config.max_pair_models}"
        )
    metadata = _metadata(neighbours, pairs, config, info["corpus_hash"], len(keys), budget_keys)
    metadata["path"] = dg.MetadataValue.path(str(out))
    mlflow.log_run(
        "kl_table",
        params={
            "K": len(keys),
            "corpus_hash": info["corpus_hash"],
            "neighbours": config.neighbours,
            "interval_level": config.interval_level,
            "bootstrap_resamples": config.bootstrap_resamples,
            "kl_regime_max_bits_per_byte": config.kl_regime_max_bits_per_byte,
            "budget_models": ",".join(budget_keys)[:500],
        },
        metrics={
            k: float(v)
            for k, v in metadata.items()
            if k.startswith(("two_kl", "pairs_outside", "neighbours_outside", "nearest_dist"))
        },
        tags={"modelmap.asset": "kl_table"},
        artifacts={"kl_table": [out / "neighbours.parquet", *_if_exists(pairs_path)]},
        context=context,
    )
    return dg.MaterializeResult(metadata=metadata)


def _table_metadata(config: KLTableConfig, corpus_hash: str, budget_keys: list[str]) -> dict:
    """The metadata of both Parquet files: how their intervals were made."""
    return {
        "corpus_hash": corpus_hash,
        "interval_level": config.interval_level,
        "interval_method_neighbours": "closed-form standard error, log scale",
        "distinguishable_method": f"paired bootstrap, B={config.bootstrap_resamples}",
        "interval_method_pairs": "closed-form standard error, log scale",
        "interval_method_budget_rows": "weighted bootstrap SE, log scale",
        "kl_regime_max_bits_per_byte": config.kl_regime_max_bits_per_byte,
        "budget_models": budget_keys,
    }


def _metadata(
    neighbours: pl.DataFrame,
    pairs: pl.DataFrame | None,
    config: KLTableConfig,
    corpus_hash: str,
    K: int,
    budget_keys: list[str],
) -> dict:
    """What the UI shows of the two tables (the MLflow metrics are its numeric entries)."""
    metadata: dict = {
        "K": K,
        "corpus_hash": corpus_hash,
        "interval_level": config.interval_level,
        "bootstrap_resamples": config.bootstrap_resamples,
        "kl_regime_max_bits_per_byte": config.kl_regime_max_bits_per_byte,
        "neighbours_outside_kl_regime": int((~neighbours["in_kl_regime"]).sum()),
        "budget_models": dg.MetadataValue.json(budget_keys),
        "nearest_distinguishable_fraction": float(
            neighbours.filter(pl.col("rank") == 1)["distinguishable"].mean() or 0.0
        ),
    }
    if pairs is None:
        metadata["pairs"] = f"not written: K={K} > max_pair_models={config.max_pair_models}"
    elif pairs.height:
        nats = pairs["two_kl_nats"]
        inside = pairs.filter(pl.col("in_kl_regime"))["two_kl_bits_per_byte"]
        metadata.update(
            {
                "pairs_outside_kl_regime": int((~pairs["in_kl_regime"]).sum()),
                "two_kl_nats_median": float(nats.median()),
                "two_kl_nats_max": float(nats.max()),
            }
        )
        if inside.len():
            metadata.update(
                {
                    "two_kl_bits_per_byte_median": float(inside.median()),
                    "two_kl_bits_per_byte_min": float(inside.min()),
                    "two_kl_bits_per_byte_max": float(inside.max()),
                }
            )
    metadata["nearest_neighbours"] = dg.MetadataValue.md(
        _nearest_md(neighbours, config.interval_level)
    )
    return metadata


def _if_exists(path: Path) -> list[Path]:
    return [path] if path.exists() else []


def _nearest_md(neighbours: pl.DataFrame, level: float) -> str:
    """The rank-1 rows as Markdown: bits/byte with its interval, or the map distance outside
    the KL regime; whether the nearest is told apart from the second; the text set."""
    lines = [
        f"| model | nearest | 2KL (bits/byte, {level:.0%} interval) | told apart from 2nd | "
        "scored on |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in neighbours.filter(pl.col("rank") == 1).head(200).iter_rows(named=True):
        if r["in_kl_regime"]:
            value = (
                f"{r['two_kl_bits_per_byte']:.4f} [{r['two_kl_bits_per_byte_low']:.4f}, "
                f"{r['two_kl_bits_per_byte_high']:.4f}]"
            )
        else:
            value = f"outside the KL regime (map distance {r['two_kl_nats']:.4g} nats/text)"
        told = {True: "yes", False: "no", None: ""}[r["distinguishable"]]
        lines.append(f"| {r['model']} | {r['neighbour']} | {value} | {told} | {r['text_set']} |")
    return "\n".join(lines)
