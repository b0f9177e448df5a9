"""The two tables of `kl_table`: every model's nearest neighbours and every pair, in 2KL.

``2 KL(p_i, p_j) ~= ||q_i - q_j||^2 / N`` nats per text (Oyama et al., arXiv 2502.16173,
section 3; :mod:`modelmap.geometry.kl`), in bits per byte after dividing by the mean bytes
per text and ln 2. Each estimate carries an interval over texts
(:mod:`modelmap.geometry.intervals`) and is marked inside or outside the KL regime
(:mod:`modelmap.geometry.regime`).

A model scored on a text budget (``text_set = budget``) has a partial row: its distances to
the full models are weighted over its selected texts (:mod:`modelmap.geometry.textbudget`),
with weighted-bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from modelmap.geometry.intervals import (
    bootstrap_interval,
    neighbour_intervals,
    normal_interval,
    two_kl_standard_errors,
    with_interval_columns,
    z_value,
)
from modelmap.geometry.kl import (
    NeighbourGraph,
    nats_per_text_to_bits_per_byte,
    nearest,
    neighbour_table,
    pair_table,
    two_kl_nats,
)
from modelmap.geometry.regime import KL_REGIME_MAX_BITS_PER_BYTE, mark_kl_regime
from modelmap.geometry.textbudget import partial_row_distances, weighted_bootstrap_two_kl
from modelmap.likelihoods import TEXT_SET_ALL, TEXT_SET_BUDGET


@dataclass(frozen=True)
class KLTableSettings:
    """neighbours: kept per model; max_pair_models: the pairs table is built while K is at
    most this; interval_level: two-sided level of the intervals over texts;
    bootstrap_resamples: B of the neighbours' paired test and the budget rows' intervals;
    kl_regime_max_bits_per_byte: estimates above this are outside the KL regime."""

    neighbours: int = 5
    max_pair_models: int = 2000
    interval_level: float = 0.95
    bootstrap_resamples: int = 200
    kl_regime_max_bits_per_byte: float = KL_REGIME_MAX_BITS_PER_BYTE


def with_gap(table: pl.DataFrame, gap_low: np.ndarray, gap_high: np.ndarray) -> pl.DataFrame:
    """Columns of the paired test on each model's rank-1 row (null on the others):
    ``second_minus_nearest_nats_low/_high`` and ``distinguishable`` (the interval excludes 0).

    ``gap_low``, ``gap_high``: one value per model of ``table``, in its order (nats/text)."""
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


def full_neighbours(
    Q: np.ndarray,
    keys: list[str],
    mean_bytes: float,
    settings: KLTableSettings,
    graph: NeighbourGraph | None = None,
) -> pl.DataFrame:
    """Each mapped model's nearest models on Q (K x N, nats), with closed-form intervals and
    the paired bootstrap test of its first two (``text_set = all``)."""
    level = settings.interval_level
    idx, nn = nearest(Q, settings.neighbours, graph)
    table = neighbour_table(idx, nn, keys, mean_bytes)
    iv = neighbour_intervals(Q, idx, settings.bootstrap_resamples, level)
    return with_gap(
        with_interval_columns(table, iv["low"], iv["high"], mean_bytes),
        iv["gap_low"],
        iv["gap_high"],
    ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))


def full_pairs(Q: np.ndarray, keys: list[str], mean_bytes: float, level: float) -> pl.DataFrame:
    """Every pair i < j of the mapped models, with closed-form intervals (``text_set = all``)."""
    Q_all = np.asarray(Q)
    D = two_kl_nats(Q_all)
    low, high = normal_interval(D, two_kl_standard_errors(Q_all), level)
    a, b = np.triu_indices(len(keys), k=1)
    return with_interval_columns(
        pair_table(D, keys, mean_bytes), low[a, b], high[a, b], mean_bytes
    ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))


def budget_tables(
    budget: list[dict],
    L_clipped: np.ndarray,
    keys: list[str],
    mean_bytes: float,
    clip_threshold_nats: float,
    settings: KLTableSettings,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """Neighbour and pair rows of each budget model against every full model (weighted
    distances over its selected texts, weighted bootstrap intervals; ``text_set = budget``).

    Args:
        budget: per model ``key``, ``loglik`` (n,) nats on its selected texts in selection
            order, ``selection`` (text_id, count, probability, weight) and ``columns`` (n,)
            the column of each selected text in L.
        L_clipped: K x N clipped L of the full models (nats), rows in the order of `keys`.
        clip_threshold_nats: the clip value the full models were clipped at.
    """
    N = L_clipped.shape[1]
    k = min(settings.neighbours, len(keys))
    level = settings.interval_level
    nbr, prs = [], []
    rng = np.random.default_rng(0)
    for b in budget:
        full = np.asarray(L_clipped[:, b["columns"]], dtype=np.float64)
        weight = b["selection"]["weight"].to_numpy()
        est = (
            partial_row_distances(b["loglik"], L_clipped, b["columns"], weight, clip_threshold_nats)
            / N
        )
        samples = weighted_bootstrap_two_kl(
            b["loglik"],
            full,
            b["selection"]["count"].to_numpy(),
            b["selection"]["probability"].to_numpy(),
            clip_threshold_nats,
            N,
            settings.bootstrap_resamples,
            rng,
        )
        low, high = bootstrap_interval(est, samples, level)
        order = np.argsort(est, kind="stable")[:k]
        gap_low = gap_high = float("nan")
        if k >= 2:
            gap = est[order[1]] - est[order[0]]
            sd = float(np.std(samples[:, order[1]] - samples[:, order[0]], ddof=1))
            z = z_value(level)
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
            with_gap(
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


def kl_tables(
    Q: np.ndarray,
    keys: list[str],
    mean_bytes: float,
    settings: KLTableSettings,
    *,
    graph: NeighbourGraph | None = None,
    budget: Sequence[dict] = (),
    L_clipped: np.ndarray | None = None,
    clip_threshold_nats: float = -np.inf,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """``(neighbours, pairs)`` of the mapped models (rows of Q, K x N nats, named by `keys`)
    and of the budget models (`budget_tables`' inputs), each row marked for the KL regime;
    ``pairs`` is None when K is over ``settings.max_pair_models``."""
    budget_nbr, budget_pairs = [], []
    if budget:
        budget_nbr, budget_pairs = budget_tables(
            budget, L_clipped, keys, mean_bytes, clip_threshold_nats, settings
        )
    regime = settings.kl_regime_max_bits_per_byte
    neighbours = full_neighbours(Q, keys, mean_bytes, settings, graph)
    neighbours = mark_kl_regime(pl.concat([neighbours, *budget_nbr]), regime)
    if len(keys) > settings.max_pair_models:
        return neighbours, None
    pairs = full_pairs(Q, keys, mean_bytes, settings.interval_level)
    return neighbours, mark_kl_regime(pl.concat([pairs, *budget_pairs]), regime)
