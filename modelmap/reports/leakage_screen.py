"""The leakage screen of the map: every statistic of `modelmap.reports.leakage_evidence`
computed from the map's matrices and combined into one verdict per model.

1. The paper's rule (`modelmap.reports.leakage.screen`) on the mean benchmark with the most
   scored models (:func:`paper_benchmark`), when at least `leakage.MIN_MODELS` have a score.
2. Each model's relatives: its confirmed lineage (declared bases the map supports,
   `modelmap.reports.lineage.check_lineage`), else its nearest models on the map
   (`leakage_evidence.choose_relatives`).
3. The gain against those relatives on the corpus, and the gap between the corpus and its
   unseen twin texts (`leakage_evidence.gather_evidence`), combined with the paper's rule
   (`leakage_evidence.combine`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from modelmap.geometry.kl import NeighbourGraph
from modelmap.reports import leakage, leakage_evidence, lineage
from modelmap.reports.benchmarks import primary_mean


@dataclass
class LeakageScreen:
    """Result of :func:`screen_for_leakage`.

    ``table``: one row per model (`leakage_evidence.combine`: statistics, z, flagged,
    verdict, evidence). ``evidence``: the per-model and per-domain statistics behind it.
    ``paper``: the paper's rule, or None when too few models have benchmark scores;
    ``benchmark``: the target it used. ``n_twins``: twin texts the twin gap was measured on.
    """

    table: pl.DataFrame
    evidence: leakage_evidence.Evidence
    paper: leakage.LeakageReport | None
    benchmark: str | None
    n_twins: int

    @property
    def flagged(self) -> list[str]:
        """Keys of the flagged models, in the table's order."""
        return self.table.filter(pl.col("flagged"))["model"].to_list()

    def domain_gain(self) -> pl.DataFrame:
        """One row per model: its mean gain over its relatives (nats/byte) per domain."""
        ev = self.evidence
        columns = {d: ev.domain_gain[:, j] for j, d in enumerate(ev.domains)}
        return pl.DataFrame({"model": ev.table["model"], **columns})


def paper_benchmark(target_map: Mapping[str, np.ndarray]) -> str | None:
    """The target of the paper's rule: the mean with the most models
    (`modelmap.reports.benchmarks.primary_mean`), else the target with the most scores."""
    return primary_mean(dict(target_map)) or max(
        target_map, key=lambda k: np.isfinite(target_map[k]).sum(), default=None
    )


def screen_for_leakage(
    keys: Sequence[str],
    Q: np.ndarray,
    corpus_loglik: np.ndarray,
    corpus_bytes: np.ndarray,
    corpus_domains: Sequence[str],
    *,
    loglik_per_byte: np.ndarray,
    targets: Mapping[str, np.ndarray],
    declared: Mapping[str, Sequence[str]],
    mean_bytes: float,
    graph: NeighbourGraph | None = None,
    twin_loglik: np.ndarray | None = None,
    twin_bytes: np.ndarray | None = None,
    twin_domains: Sequence[str] | None = None,
    z_threshold: float = leakage.DEFAULT_Z_THRESHOLD,
    support_z: float = leakage_evidence.DEFAULT_SUPPORT_Z,
    max_relatives: int = leakage_evidence.DEFAULT_MAX_RELATIVES,
    map_relatives: int = leakage_evidence.DEFAULT_MAP_RELATIVES,
) -> LeakageScreen:
    """The screen of the module docstring for the K models ``keys``.

    Args:
        Q: K x N double-centred log-likelihoods (nats); ``graph``: its nearest models.
        corpus_loglik: K x N raw log-likelihoods (nats) of the corpus texts, with their N
            UTF-8 lengths ``corpus_bytes`` and domains ``corpus_domains``.
        loglik_per_byte: K mean log-likelihoods per byte of the corpus (nats/byte).
        targets: benchmark -> K scores (NaN where missing; `benchmarks.targets`).
        declared: model key -> its declared base models; ``mean_bytes``: bytes per text.
        twin_loglik: K x M log-likelihoods of the twin texts (a NaN row for a model scored
            without them), ``twin_bytes`` and ``twin_domains`` their M lengths and domains;
            None: no twin statistic.
    """
    keys = list(keys)
    benchmark = paper_benchmark(targets)
    paper = None
    if benchmark is not None and np.isfinite(targets[benchmark]).sum() >= leakage.MIN_MODELS:
        paper = leakage.screen(keys, loglik_per_byte, targets[benchmark], z_threshold=z_threshold)
    supported = lineage.check_lineage(Q, keys, declared, mean_bytes, graph=graph).pairs
    links = [
        (r["model"], r["declared_base"])
        for r in supported.filter(pl.col("within_band")).iter_rows(named=True)
    ]
    relatives, sources = leakage_evidence.choose_relatives(
        Q, keys, links, max_relatives=max_relatives, map_relatives=map_relatives, graph=graph
    )
    evidence = leakage_evidence.gather_evidence(
        keys,
        np.asarray(corpus_loglik, dtype=np.float64),
        corpus_bytes,
        corpus_domains,
        relatives,
        twin_loglik=twin_loglik,
        twin_bytes=twin_bytes,
        twin_domains=twin_domains,
        relatives_source=sources,
    )
    table = leakage_evidence.combine(
        paper.table if paper is not None else None,
        evidence,
        z_threshold=z_threshold,
        support_z=support_z,
    )
    n_twins = 0 if twin_loglik is None else twin_loglik.shape[1]
    return LeakageScreen(table, evidence, paper, benchmark if paper is not None else None, n_twins)
