"""Screening for models that probably saw the corpus texts in training (data leakage).

Oyama et al. (ACL 2025, arXiv 2502.16173), section 7: across models, the log-likelihood of
a text corpus rises with general ability, which benchmark scores measure. A model whose
likelihood on the corpus is much higher than its benchmark scores explain has most likely
been trained on those very texts.

The rule, applied to the models whose two values are both finite:

1. ``loglik_per_byte``: each model's mean log-likelihood per byte of the corpus texts
   (nats/byte, negative; higher = the model finds the texts more likely).
   ``benchmark``: its mean benchmark score (0..100).
2. Fit a robust straight line ``loglik_per_byte ~ intercept + slope * benchmark`` with the
   Theil-Sen estimator (``scipy.stats.theilslopes``): the median of pairwise slopes, which
   the leaked models themselves cannot pull towards them. When all benchmarks are equal,
   the line is flat at the median likelihood. Above :data:`MAX_EXACT_MODELS` models (K^2/2
   slopes would take gigabytes) the median is taken over :data:`SAMPLED_PAIRS` pairs drawn
   uniformly (:func:`theil_sen`): the median of a uniform sample of the slopes estimates the
   same median, so the estimator keeps Theil-Sen's breakdown point (29%), and its rank among
   all slopes is within 0.1 percentage point with probability above 1 - 1e-3 (DKW).
3. ``residual = observed - fitted``; ``robust_z = (residual - median(residual)) / scale``
   with ``scale = 1.4826 * MAD(residual)``, the normal-consistent median absolute deviation.
4. Flag a model when ``robust_z > z_threshold`` (default 3.5, the cut-off of Iglewicz and
   Hoaglin's modified z-score). The test is one-sided: a likelihood far *below* the line
   (a broken tokenizer, a model that is bad at this kind of text) is not a sign of leakage.

Scale floor: when more than half of the residuals are equal, MAD is 0 and every other model
would get an infinite z. Then (as Iglewicz and Hoaglin suggest) ``scale = 1.2533 *
mean(|residual - median|)``, the mean absolute deviation made normal-consistent; if that is
also below :data:`MIN_SCALE` (all residuals equal up to rounding), ``scale = MIN_SCALE`` so
that nothing is flagged from rounding noise.

Models with a NaN benchmark (or likelihood) are neither fitted nor flagged: their
``robust_z`` is NaN. At least :data:`MIN_MODELS` models with both values are needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.storage import write_atomic

MIN_MODELS = 5
#: Exact Theil-Sen (every pair) up to this many models.
MAX_EXACT_MODELS = 2000
#: Pairs drawn for the slope's median above that (16 MB of slopes).
SAMPLED_PAIRS = 2_000_000
DEFAULT_Z_THRESHOLD = 3.5
#: 1 / Phi^-1(3/4): makes MAD estimate the standard deviation of normal residuals.
MAD_TO_SD = 1.4826
#: sqrt(pi / 2): makes the mean absolute deviation estimate the standard deviation.
MEANAD_TO_SD = 1.2533
#: Smallest residual scale in nats/byte; likelihoods per byte are of order 1, so this is
#: far above float64 rounding of the fit and far below any real spread between models.
MIN_SCALE = 1e-9
#: Points are annotated only up to this many flagged models (the rest are still red).
MAX_LABELS = 40


@dataclass
class LeakageReport:
    """Result of :func:`screen`.

    ``table``: one row per model (input order) with columns model, loglik_per_byte,
    benchmark, fitted, residual, robust_z, flagged. ``slope`` and ``intercept``: the
    Theil-Sen line; ``center``: median residual; ``scale``: residual scale (nats/byte) used
    for z; ``flagged``: keys of the flagged models, highest z first.
    """

    table: pl.DataFrame
    slope: float
    intercept: float
    scale: float
    z_threshold: float
    flagged: list[str]
    center: float = 0.0

    def threshold_line(self, benchmark: np.ndarray) -> np.ndarray:
        """The likelihood above which a model with this benchmark score is flagged."""
        fitted = self.intercept + self.slope * np.asarray(benchmark, dtype=np.float64)
        return fitted + self.center + self.z_threshold * self.scale


def theil_sen(y: np.ndarray, x: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """``(slope, intercept)`` of the Theil-Sen line through finite points (x not all equal).

    Slope: the median of ``(y_j - y_i) / (x_j - x_i)`` over pairs with ``x_i != x_j``, every
    pair up to :data:`MAX_EXACT_MODELS` points (``scipy.stats.theilslopes``), a uniform sample
    of :data:`SAMPLED_PAIRS` pairs above. Intercept: ``median(y) - slope * median(x)``
    (scipy's ``method="separate"``).
    """
    from scipy.stats import theilslopes

    n = len(x)
    if n <= MAX_EXACT_MODELS:
        res = theilslopes(y, x)
        return float(res.slope), float(res.intercept)
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, SAMPLED_PAIRS), rng.integers(0, n, SAMPLED_PAIRS)
    dx = x[j] - x[i]
    ok = dx != 0
    slope = float(np.median((y[j][ok] - y[i][ok]) / dx[ok]))
    return slope, float(np.median(y) - slope * np.median(x))


def _robust_scale(residual: np.ndarray, center: float) -> float:
    """1.4826 * MAD, with the mean-absolute-deviation and :data:`MIN_SCALE` floors."""
    deviation = np.abs(residual - center)
    scale = MAD_TO_SD * float(np.median(deviation))
    if scale < MIN_SCALE:
        scale = MEANAD_TO_SD * float(np.mean(deviation))
    return max(scale, MIN_SCALE)


def screen(
    models: Sequence[str],
    loglik_per_byte: np.ndarray,
    benchmark: np.ndarray,
    *,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
) -> LeakageReport:
    """Flag models whose corpus likelihood is far above what their benchmark score explains.

    See the module docstring for the rule. Raises ValueError when fewer than
    :data:`MIN_MODELS` models have both values finite, or when lengths differ.
    """
    y = np.asarray(loglik_per_byte, dtype=np.float64)
    x = np.asarray(benchmark, dtype=np.float64)
    K = len(models)
    if y.shape != (K,) or x.shape != (K,):
        raise ValueError(
            f"{K} models but loglik_per_byte has shape {y.shape} and benchmark {x.shape}"
        )
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    if n < MIN_MODELS:
        raise ValueError(
            f"leakage screening needs at least {MIN_MODELS} models with a finite "
            f"loglik_per_byte and benchmark, got {n}"
        )

    if np.ptp(x[ok]) > 0:
        slope, intercept = theil_sen(y[ok], x[ok])
    else:  # no slope can be estimated from a single benchmark value
        slope, intercept = 0.0, float(np.median(y[ok]))

    fitted = np.where(np.isfinite(x), intercept + slope * x, np.nan)
    residual = y - fitted
    center = float(np.median(residual[ok]))
    scale = _robust_scale(residual[ok], center)
    z = np.full(K, np.nan)
    z[ok] = (residual[ok] - center) / scale
    flagged_mask = np.zeros(K, dtype=bool)
    flagged_mask[ok] = z[ok] > z_threshold

    table = pl.DataFrame(
        {
            "model": list(models),
            "loglik_per_byte": y,
            "benchmark": x,
            "fitted": fitted,
            "residual": residual,
            "robust_z": z,
            "flagged": flagged_mask,
        },
        schema={
            "model": pl.String,
            "loglik_per_byte": pl.Float64,
            "benchmark": pl.Float64,
            "fitted": pl.Float64,
            "residual": pl.Float64,
            "robust_z": pl.Float64,
            "flagged": pl.Boolean,
        },
    )
    order = np.flatnonzero(flagged_mask)
    order = order[np.argsort(-z[order], kind="stable")]
    return LeakageReport(
        table=table,
        slope=slope,
        intercept=intercept,
        scale=scale,
        z_threshold=float(z_threshold),
        flagged=[str(models[i]) for i in order],
        center=center,
    )


def _family_list(
    models: list[str], families: Sequence[str] | Mapping[str, str] | None
) -> list[str] | None:
    """Families aligned with ``models``, from a list in model order or a model -> family map."""
    if families is None:
        return None
    if isinstance(families, Mapping):
        return [str(families.get(m, "other")) for m in models]
    if len(families) != len(models):
        raise ValueError(f"{len(families)} families for {len(models)} models")
    return [str(f) for f in families]


def leakage_png(
    report: LeakageReport,
    path: str | Path,
    *,
    families: Sequence[str] | Mapping[str, str] | None = None,
) -> Path:
    """Benchmark (x) against likelihood per byte (y), the robust line and the flag threshold.

    Flagged models are red and labelled with their key; the others are coloured by family
    when ``families`` is given (a list in the report's model order, or a model -> family
    mapping). Models without a benchmark cannot be placed and are left out. Written
    atomically (temporary file, then rename).
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = report.table
    models = t["model"].to_list()
    x = t["benchmark"].to_numpy()
    y = t["loglik_per_byte"].to_numpy()
    flagged = t["flagged"].to_numpy()
    placed = np.isfinite(x) & np.isfinite(y)
    fams = _family_list(models, families)

    fig = Figure(figsize=(9, 6.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    normal = placed & ~flagged
    size = 30 if placed.sum() <= 200 else 10
    if fams is None:
        ax.scatter(x[normal], y[normal], s=size, c="tab:blue", alpha=0.7, label="models")
    else:
        fam_arr = np.asarray(fams, dtype=object)
        names = sorted(set(fam_arr[normal]))
        cmap = matplotlib.colormaps["tab20"]
        for k, fam in enumerate(names):
            sel = normal & (fam_arr == fam)
            # The 10 dark tab20 colours first, then their light partners.
            colour = cmap((2 * k) % 20 + (k // 10) % 2)
            ax.scatter(x[sel], y[sel], s=size, color=colour, alpha=0.7, label=fam)
    ax.scatter(
        x[placed & flagged],
        y[placed & flagged],
        s=size * 1.8,
        c="red",
        edgecolors="black",
        linewidths=0.6,
        label=f"flagged (z > {report.z_threshold:g})",
        zorder=3,
    )
    for i in np.flatnonzero(placed & flagged)[:MAX_LABELS]:
        ax.annotate(models[i], (x[i], y[i]), xytext=(4, 4), textcoords="offset points", fontsize=8)

    if placed.any():
        lo, hi = float(np.min(x[placed])), float(np.max(x[placed]))
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        xs = np.linspace(lo - pad, hi + pad, 50)
        line = report.intercept + report.slope * xs
        upper = report.threshold_line(xs)
        ax.plot(xs, line, color="black", lw=1.2, label="Theil-Sen line")
        ax.plot(xs, upper, color="red", lw=1.0, ls="--", label="flag threshold")
        ax.fill_between(xs, line, upper, color="0.85", alpha=0.5, lw=0)

    n_missing = int((~placed).sum())
    title = f"Leakage screen: {int(flagged.sum())} of {int(placed.sum())} models flagged"
    if n_missing:
        title += f"; {n_missing} without both values not shown"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("mean benchmark score")
    ax.set_ylabel("corpus log-likelihood per byte (nats/byte)")
    n_entries = len(ax.get_legend_handles_labels()[1])
    if n_entries <= 25:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    return write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
