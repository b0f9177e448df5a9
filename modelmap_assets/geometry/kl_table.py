"""`kl_table`: estimated 2KL for every pair while K is small, and the nearest neighbours always."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.intervals import (
    bootstrap_interval,
    neighbour_intervals,
    normal_interval,
    two_kl_standard_errors,
    with_interval_columns,
    z_value,
)
from modelmap.geometry.kl import (
    nats_per_text_to_bits_per_byte,
    nearest,
    neighbour_table,
    pair_table,
    two_kl_nats,
)
from modelmap.geometry.regime import mark_kl_regime
from modelmap.geometry.textbudget import (
    partial_row_distances,
    weighted_bootstrap_two_kl,
)
from modelmap.likelihoods import (
    TEXT_SET_ALL,
    TEXT_SET_BUDGET,
    corpus_rows,
    is_full,
)
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.selections import read_selection
from modelmap.storage import write_parquet
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph, refresh
from modelmap_assets.partitions import models_partitions
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

#: 2KL estimates above this many bits per byte are outside the KL regime (README, "Where the
#: KL estimate holds"): reported as a map distance, not as a divergence. On the zoo the
#: estimate stayed within a factor 3 of the sampled KL up to 7e-4 bits/byte (bfloat16, weight
#: noise up to 10%) and exceeded it 13-143 times from 0.017 bits/byte on (fine-tunes, bases).
KL_REGIME_MAX_BITS_PER_BYTE = 1e-3


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


def _budget_tables(
    budget: list[dict],
    L_clipped: np.ndarray,
    keys: list[str],
    info: dict,
    config: KLTableConfig,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """Neighbour and pair rows of each budget model against every full model (weighted
    distances over its selected texts, weighted bootstrap intervals)."""
    N, mean_bytes = info["N"], info["mean_bytes"]
    k = min(config.neighbours, len(keys))
    nbr, prs = [], []
    rng = np.random.default_rng(0)
    for b in budget:
        full = np.asarray(L_clipped[:, b["columns"]], dtype=np.float64)
        weight = b["selection"]["weight"].to_numpy()
        est = (
            partial_row_distances(
                b["loglik"], L_clipped, b["columns"], weight, info["clip_threshold_nats"]
            )
            / N
        )
        samples = weighted_bootstrap_two_kl(
            b["loglik"],
            full,
            b["selection"]["count"].to_numpy(),
            b["selection"]["probability"].to_numpy(),
            info["clip_threshold_nats"],
            N,
            config.bootstrap_resamples,
            rng,
        )
        low, high = bootstrap_interval(est, samples, config.interval_level)
        order = np.argsort(est, kind="stable")[:k]
        gap_low = gap_high = float("nan")
        if k >= 2:
            gap = est[order[1]] - est[order[0]]
            sd = float(np.std(samples[:, order[1]] - samples[:, order[0]], ddof=1))
            z = z_value(config.interval_level)
            gap_low, gap_high = gap - z * sd, gap + z * sd
        table = pl.DataFrame(
            {
                "model": [b["key"]] * k,
                "rank": np.arange(1, k + 1, dtype=np.int64),
                "neighbour": [keys[j] for j in order],
                "two_kl_nats": est[order],
                "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(est[order], mean_bytes),
            }
        )
        nbr.append(
            _with_gap(
                with_interval_columns(table, low[order], high[order], mean_bytes),
                np.array([gap_low]),
                np.array([gap_high]),
            ).with_columns(pl.lit(TEXT_SET_BUDGET).alias("text_set"))
        )
        pair = pl.DataFrame(
            {
                "model_a": [b["key"]] * len(keys),
                "model_b": keys,
                "two_kl_nats": est,
                "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(est, mean_bytes),
            }
        )
        prs.append(
            with_interval_columns(pair, low, high, mean_bytes).with_columns(
                pl.lit(TEXT_SET_BUDGET).alias("text_set")
            )
        )
    return nbr, prs


def _with_gap(table: pl.DataFrame, gap_low: np.ndarray, gap_high: np.ndarray) -> pl.DataFrame:
    """Columns of the paired test on each model's rank-1 row (null on the others):
    ``second_minus_nearest_nats_low/_high`` and ``distinguishable`` (the interval excludes 0)."""
    first = pl.col("rank") == 1
    models = table.select("model").unique(maintain_order=True)
    if models.height != len(gap_low):  # K = 1: no neighbours, nothing to compare
        gap_low = gap_high = np.full(models.height, np.nan)
    per_model = models.with_columns(
        pl.Series("_gap_low", gap_low, dtype=pl.Float64),
        pl.Series("_gap_high", gap_high, dtype=pl.Float64),
    )
    table = table.join(per_model, on="model", how="left", maintain_order="left")
    return table.with_columns(
        pl.when(first).then(pl.col("_gap_low")).alias("second_minus_nearest_nats_low"),
        pl.when(first).then(pl.col("_gap_high")).alias("second_minus_nearest_nats_high"),
        pl.when(first & pl.col("_gap_low").is_not_nan())
        .then(pl.col("_gap_low") > 0)
        .alias("distinguishable"),
    ).drop("_gap_low", "_gap_high")


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
    K = len(keys)
    mean_bytes, level = info["mean_bytes"], config.interval_level
    idx, nn = nearest(Q, config.neighbours, read_graph(storage))
    neighbours = neighbour_table(idx, nn, keys, mean_bytes)
    iv = neighbour_intervals(Q, idx, config.bootstrap_resamples, level)
    neighbours = _with_gap(
        with_interval_columns(neighbours, iv["low"], iv["high"], mean_bytes),
        iv["gap_low"],
        iv["gap_high"],
    ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))
    corpus_df, _ = storage.read_corpus()
    budget = budget_rows(context, storage, info, corpus_df["text_id"].to_numpy())
    budget_nbr, budget_pairs = [], []
    if budget:
        L_clipped = np.load(
            storage.current_version_dir("coordinates") / "L_clipped.npy", mmap_mode="r"
        )
        budget_nbr, budget_pairs = _budget_tables(budget, L_clipped, keys, info, config)
    regime = config.kl_regime_max_bits_per_byte
    neighbours = mark_kl_regime(pl.concat([neighbours, *budget_nbr]), regime)
    out = storage.asset_dir("kl_table")
    table_meta = {
        "corpus_hash": info["corpus_hash"],
        "interval_level": level,
        "interval_method_neighbours": "closed-form standard error, log scale",
        "distinguishable_method": f"paired bootstrap, B={config.bootstrap_resamples}",
        "interval_method_pairs": "closed-form standard error, log scale",
        "interval_method_budget_rows": "weighted bootstrap SE, log scale",
        "kl_regime_max_bits_per_byte": regime,
        "budget_models": [b["key"] for b in budget],
    }
    write_parquet(neighbours, out / "neighbours.parquet", table_meta)
    n_outside = int((~neighbours["in_kl_regime"]).sum())
    metadata: dict = {
        "K": K,
        "corpus_hash": info["corpus_hash"],
        "interval_level": level,
        "bootstrap_resamples": config.bootstrap_resamples,
        "kl_regime_max_bits_per_byte": regime,
        "neighbours_outside_kl_regime": n_outside,
        "budget_models": dg.MetadataValue.json([b["key"] for b in budget]),
        "nearest_distinguishable_fraction": float(
            neighbours.filter(pl.col("rank") == 1)["distinguishable"].mean() or 0.0
        ),
    }
    if K <= config.max_pair_models:
        Q_all = np.asarray(Q)
        D = two_kl_nats(Q_all)
        low, high = normal_interval(D, two_kl_standard_errors(Q_all), level)
        a, b = np.triu_indices(K, k=1)
        pairs = with_interval_columns(
            pair_table(D, keys, mean_bytes), low[a, b], high[a, b], mean_bytes
        ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))
        pairs = mark_kl_regime(pl.concat([pairs, *budget_pairs]), regime)
        write_parquet(pairs, out / "pairs.parquet", table_meta)
        if pairs.height:
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
    else:
        # A table of an earlier, smaller K is not this one: never leave it to be read or logged.
        stale = out / "pairs.parquet"
        if stale.exists():
            stale.unlink()
            context.log.info(
                f"pairs.parquet removed: K={K} is over max_pair_models={config.max_pair_models}"
            )
        metadata["pairs"] = f"not written: K={K} > max_pair_models={config.max_pair_models}"
    metadata["nearest_neighbours"] = dg.MetadataValue.md(_nearest_md(neighbours, level))
    metadata["path"] = dg.MetadataValue.path(str(out))
    mlflow.log_run(
        "kl_table",
        params={
            "K": K,
            "corpus_hash": info["corpus_hash"],
            "neighbours": config.neighbours,
            "interval_level": level,
            "bootstrap_resamples": config.bootstrap_resamples,
            "kl_regime_max_bits_per_byte": regime,
            "budget_models": ",".join(b["key"] for b in budget)[:500],
        },
        metrics={
            k: float(v)
            for k, v in metadata.items()
            if k.startswith(("two_kl", "pairs_outside", "neighbours_outside", "nearest_dist"))
        },
        tags={"modelmap.asset": "kl_table"},
        artifacts={"kl_table": [out / "neighbours.parquet", *_if_exists(out / "pairs.parquet")]},
        context=context,
    )
    return dg.MaterializeResult(metadata=metadata)


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
