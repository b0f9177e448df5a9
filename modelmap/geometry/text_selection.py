"""Sizing and drawing the text budget of a map (arXiv 2505.15428).

The n-against-error curve of :func:`modelmap.geometry.textbudget.budget_error_curve` (median
relative error of pairwise 2KL from n selected texts against all N, for uniform and LS
sampling, over several seeds) gives the smallest n whose LS error meets the target; that
many distinct texts are then drawn by LS from every model of Q, each with its importance
weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry.textbudget import (
    Selection,
    budget_error_curve,
    n_needed,
    select_texts,
    summarise_curve,
)
from modelmap.storage import write_atomic


@dataclass(frozen=True)
class TextBudgetSettings:
    """target_rel_error: target median relative error of pairwise 2KL against all N texts;
    n_seeds: draw streams per sampler; grid_ratio: consecutive n of the grid differ by at most
    this factor; n_min: smallest n of the grid; max_queries: models whose distances to every
    model are evaluated; budget_texts: select this many texts whatever the curve says (None:
    the curve decides); seed: seed of the budget's draw."""

    target_rel_error: float = 0.05
    n_seeds: int = 10
    grid_ratio: float = 1.2
    n_min: int = 10
    max_queries: int = 200
    budget_texts: int | None = None
    seed: int = 42


@dataclass(frozen=True)
class TextBudget:
    """The curve that sized the budget and the selection drawn.

    Attributes:
        curve: per sampler, n and seed, the errors (`budget_error_curve`).
        summary: seed means per sampler and n (`summarise_curve`).
        needed: per sampler, the smallest n meeting the target (None: not on the grid).
        selection: the drawn texts (column indices into Q), counts, probabilities, weights.
    """

    curve: pl.DataFrame
    summary: pl.DataFrame
    needed: dict[str, int | None]
    selection: Selection

    @property
    def ls_over_uniform(self) -> float | None:
        """Texts LS needs over texts uniform sampling needs for the target (None: unknown)."""
        ls, uniform = self.needed.get("ls"), self.needed.get("uniform")
        return ls / uniform if ls and uniform else None

    def selected(self, text_ids: np.ndarray) -> pl.DataFrame:
        """text_id (int64, from the corpus's (N,) `text_ids`), count, probability, weight."""
        sel = self.selection
        return pl.DataFrame(
            {
                "text_id": text_ids[sel.index].astype(np.int64),
                "count": sel.count,
                "probability": sel.probability,
                "weight": sel.weight,
            }
        )


def size_text_budget(
    Q: np.ndarray, families: list[str], settings: TextBudgetSettings
) -> TextBudget:
    """The error curve on Q (K x N, nats; K >= 3) with the models' families (held out by
    family), and ``settings.budget_texts`` or else the smallest n meeting the target by LS
    (all N when LS does not reach it on the grid) drawn by LS with ``settings.seed``."""
    K, N = Q.shape
    if K < 3:
        raise ValueError(f"a text budget needs at least 3 models on the map, got {K}")
    curve = budget_error_curve(
        Q,
        families,
        target_rel_error=settings.target_rel_error,
        n_seeds=settings.n_seeds,
        grid_ratio=settings.grid_ratio,
        n_min=settings.n_min,
        max_queries=settings.max_queries,
    )
    summary = summarise_curve(curve)
    needed = n_needed(summary, settings.target_rel_error)
    n_budget = settings.budget_texts or needed.get("ls") or N
    selection = select_texts(Q, min(n_budget, N), sampler="ls", seed=settings.seed)
    return TextBudget(curve, summary, needed, selection)


def plot_curve_png(summary: pl.DataFrame, target: float, path: Path) -> Path:
    """The n-against-error curve per sampler (log-log, seed sd as error bars) and the target,
    written to ``path`` as a PNG, atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for sampler, colour in (("uniform", "tab:blue"), ("ls", "tab:red")):
        rows = summary.filter(pl.col("sampler") == sampler)
        if rows.height:
            ax.errorbar(
                rows["n_texts"],
                rows["median_rel_error"],
                yerr=rows["median_rel_error_sd"].fill_null(0.0),
                label=sampler.upper() if sampler == "ls" else sampler,
                color=colour,
                marker="o",
                ms=3,
                capsize=2,
            )
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distinct texts n")
    ax.set_ylabel("median relative error of 2KL")
    ax.legend(frameon=False)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
