"""Leakage evidence that does not lean on benchmark scores, combined with the paper's rule.

The paper's rule (`modelmap.reports.leakage`) flags a model whose corpus likelihood is far
above what its benchmark scores explain. It catches heavy leaks; a model that saw the corpus
briefly, or saw part of it, stays within the spread of the other families, and a mean of a
few benchmark scores is noisy. Two more statistics calibrate a model's likelihood against a
reference, as membership-inference attacks do (the reference here is the model's relatives
and texts no model saw):

**Gain against relatives** (``relatives_gain``, nats/byte). Per text, the model's
log-likelihood per byte minus the median over its relatives (`choose_relatives`); the mean of
that gain per domain; the statistic is the *median over domains*. A model that saw the corpus
gains on the corpus texts of every domain; a domain fine-tune gains on its own domain and not
on the others, so its median over domains stays near zero.

**Gain on the corpus over unseen twins** (``twin_gap``, nats/byte). The same per-text gain on
the held-out twin texts (same sources, documents no model should have seen: the ``corpus``
asset's ``twins.parquet``); per domain, mean gain on the corpus texts minus mean gain on the
twins; averaged over the domains that have twins, weighted by their number of corpus texts.
A model that saw the corpus gains more on the corpus texts than on their twins; a model that
is simply better (or better on a domain) gains on both. Twin texts never enter L or Q.

**Robust z**: for each statistic, ``z = (x - median) / (1.4826 MAD)`` over the models that have
it (`modelmap.reports.leakage`'s scale with its floors).

**Verdict** (:func:`combine`; every test one-sided, so a model is never flagged for a *low*
likelihood): a model is flagged ``leak`` when

- the twin gap is positive with ``z > z_threshold`` (direct evidence of membership: a gain
  on these very texts over unseen texts of the same sources), or
- the paper's rule (``z > z_threshold`` on the benchmark residual) or the gain against
  relatives (positive, ``z > z_threshold``) is *corroborated* by another statistic above
  ``support_z``, or is the only statistic available (no twins and no benchmarks).

Otherwise ``no evidence``. Uncorroborated, neither flags: a model trained further on general
text of the corpus's kind gains on every domain too, and only the twins tell it from one that
saw these texts; and the paper's rule on a mean of a few benchmark scores is noisy (on the
tests' zoo, adding three planted models pushed two honest fine-tunes past z 4 on it alone).
A model trained on the whole source (twins included, as a Pile-trained model on the paper's
corpus) shows no twin gap but gains against its relatives *and* above its benchmark line:
the two corroborate each other.

Keeping a leak from choosing its own relatives: the reference of a model is the per-text
*median* over its declared lineage, and a declared link counts only when the map confirms it
(`modelmap.reports.lineage`: the declared base lies within the fine-tune band). So a leaker
cannot pick a reference by declaring one, and a few relatives that leaked the same texts (who
would gain as much and cancel the gain) cannot decide a median over the lineage. Models
without a confirmed lineage take their nearest models on Q; row centring absorbs a uniform
gain, so a leak moves a model on the map far less than it raises its mean, and its nearest
models stay its real relatives.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry.kl import NeighbourGraph, nearest
from modelmap.reports.leakage import DEFAULT_Z_THRESHOLD, _robust_scale
from modelmap.storage import write_atomic

#: The twin gap must reach this z for the gain against relatives to count.
DEFAULT_SUPPORT_Z = 2.0
#: Relatives taken from a model's lineage (nearest first), or from the map without one.
DEFAULT_MAX_RELATIVES = 25
DEFAULT_MAP_RELATIVES = 5
#: A domain enters the twin gap only with at least this many twin texts.
MIN_TWINS_PER_DOMAIN = 3

LEAK = "leak"
NO_EVIDENCE = "no evidence"


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(x - median) / scale`` over the finite values (NaN elsewhere); scale as in the paper's
    rule: 1.4826 MAD, floored by the mean absolute deviation and a tiny constant."""
    x = np.asarray(values, dtype=np.float64)
    z = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return z
    center = float(np.median(x[ok]))
    z[ok] = (x[ok] - center) / _robust_scale(x[ok], center)
    return z


def choose_relatives(
    Q: np.ndarray,
    keys: Sequence[str],
    lineage_links: Sequence[tuple[str, str]],
    *,
    max_relatives: int = DEFAULT_MAX_RELATIVES,
    map_relatives: int = DEFAULT_MAP_RELATIVES,
    graph: NeighbourGraph | None = None,
) -> tuple[list[np.ndarray], list[str]]:
    """Each model's relatives (row indices) and where they came from ("lineage" or "map").

    Args:
        Q: K x N double-centred log-likelihoods (nats), rows in ``keys`` order.
        lineage_links: confirmed (model, declared base) pairs; their connected components
            are the lineages.
        max_relatives: at most this many lineage members, the nearest on Q first.
        map_relatives: without a lineage of at least two other members, this many nearest
            models on Q.
        graph: the nearest models of Q (`coordinates` keeps them), instead of a K^2 pass.
    """
    K = len(keys)
    row = {k: i for i, k in enumerate(keys)}
    parent = list(range(K))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in lineage_links:
        if a in row and b in row:
            parent[find(row[a])] = find(row[b])
    comp = np.array([find(i) for i in range(K)])
    order_k = min(K - 1, max(max_relatives, map_relatives))
    idx, _ = nearest(Q, order_k, graph) if order_k > 0 else (np.zeros((K, 0), int), None)
    # Members of each lineage, grouped once (a scan of all K per model is K^2).
    order = np.argsort(comp, kind="stable")
    starts = np.searchsorted(comp[order], comp[order], side="left")
    ends = np.searchsorted(comp[order], comp[order], side="right")
    lineage_of = np.empty(K, dtype=object)
    for pos, i in enumerate(order):
        lineage_of[i] = order[starts[pos] : ends[pos]]
    relatives, sources = [], []
    for i in range(K):
        members = lineage_of[i][lineage_of[i] != i]
        if len(members) >= 2:
            near = [int(j) for j in idx[i] if comp[j] == comp[i]][:max_relatives]
            listed = set(near)
            # Beyond the listed neighbours, in row order (only as many as still wanted).
            rest = (int(j) for j in members if int(j) not in listed)
            chosen = near + list(itertools.islice(rest, max_relatives - len(near)))
            relatives.append(np.array(chosen, dtype=np.int64))
            sources.append("lineage")
        else:
            relatives.append(np.array(idx[i, :map_relatives], dtype=np.int64))
            sources.append("map")
    return relatives, sources


def _gain(
    Y: np.ndarray, relatives: Sequence[np.ndarray], block_values: int = 4_000_000
) -> np.ndarray:
    """Per-text gain over the median of the relatives (K x N, same units as Y).

    Models with the same number of relatives are stacked and their medians taken together
    (:func:`_median_over_relatives`; a ``np.nanmedian`` per model cost ~3 ms each, minutes at
    K = 10,000). NaN (a model scored without twins) is skipped as in ``np.nanmedian``."""
    K, N = Y.shape
    G = np.full(Y.shape, np.nan)
    by_size: dict[int, list[int]] = {}
    for i, rel in enumerate(relatives):
        if len(rel):
            by_size.setdefault(len(rel), []).append(i)
    for r, models in by_size.items():
        step = max(1, block_values // max(1, r * N))
        for start in range(0, len(models), step):
            rows = np.array(models[start : start + step])
            stacked = Y[np.stack([relatives[i] for i in rows])]  # block x r x N
            G[rows] = Y[rows] - _median_over_relatives(stacked)
    return G


def _median_over_relatives(stacked: np.ndarray) -> np.ndarray:
    """``np.nanmedian(stacked, axis=1)`` (NaN where a whole column is NaN), 3x faster: the
    short relatives axis is made contiguous and sorted, NaN last, and the middle taken."""
    y = np.ascontiguousarray(stacked.transpose(0, 2, 1))  # block x N x r
    y.sort(axis=-1)
    count = (~np.isnan(y)).sum(axis=-1)
    low = np.take_along_axis(y, np.maximum(count - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    high = np.take_along_axis(y, (count // 2)[..., None], axis=-1)[..., 0]
    median = (low + high) / 2
    median[count == 0] = np.nan
    return median


def _domain_means(G: np.ndarray, domains: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """K x D mean of G over the texts of each domain."""
    out = np.full((G.shape[0], len(names)), np.nan)
    with warnings.catch_warnings():  # a model without twin rows: a row of NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        for d, name in enumerate(names):
            sel = domains == name
            if sel.any():
                out[:, d] = np.nanmean(G[:, sel], axis=1)
    return out


@dataclass
class Evidence:
    """Per-model statistics of :func:`gather_evidence` (rows in the input order).

    ``table``: model, relatives_source, relatives (comma-separated), relatives_gain (median
    over domains of the mean gain per byte, nats/byte), min_domain_gain, max_domain_gain,
    twin_gap (nats/byte; NaN without twins), corpus_gain, twin_gain (means over texts).
    ``domain_gain``: K x D mean gain on the corpus per domain (``domains`` names D).
    """

    table: pl.DataFrame
    domain_gain: np.ndarray
    domains: list[str]


def gather_evidence(
    keys: Sequence[str],
    corpus_loglik: np.ndarray,
    corpus_bytes: np.ndarray,
    corpus_domains: Sequence[str],
    relatives: Sequence[np.ndarray],
    *,
    twin_loglik: np.ndarray | None = None,
    twin_bytes: np.ndarray | None = None,
    twin_domains: Sequence[str] | None = None,
    relatives_source: Sequence[str] | None = None,
) -> Evidence:
    """The two statistics of the module docstring for every model.

    Args:
        corpus_loglik: K x N raw log-likelihoods (nats) of the corpus texts.
        corpus_bytes, corpus_domains: N UTF-8 lengths and domain names.
        relatives: per model, the row indices of its relatives (`choose_relatives`).
        twin_loglik: K x M log-likelihoods of the twin texts; a row of NaN for a model
            scored without them. twin_bytes, twin_domains: M lengths and domains.
    """
    K = len(keys)
    Y = np.asarray(corpus_loglik, dtype=np.float64) / np.asarray(corpus_bytes, np.float64)
    dom = np.asarray(corpus_domains, dtype=object)
    names = sorted(set(dom.tolist()))
    G = _gain(Y, relatives)
    per_domain = _domain_means(G, dom, names)
    with np.errstate(all="ignore"):
        rel_gain = np.nanmedian(per_domain, axis=1)
        min_gain, max_gain = np.nanmin(per_domain, axis=1), np.nanmax(per_domain, axis=1)
    corpus_gain = np.nanmean(G, axis=1)
    twin_gap = np.full(K, np.nan)
    twin_gain = np.full(K, np.nan)
    if twin_loglik is not None and np.asarray(twin_loglik).size:
        Yt = np.asarray(twin_loglik, dtype=np.float64) / np.asarray(twin_bytes, np.float64)
        tdom = np.asarray(twin_domains, dtype=object)
        Gt = _gain(Yt, relatives)
        twin_per_domain = _domain_means(Gt, tdom, names)
        counts = np.array([(dom == n).sum() for n in names], dtype=np.float64)
        usable = np.array([(tdom == n).sum() >= MIN_TWINS_PER_DOMAIN for n in names])
        gap = per_domain - twin_per_domain  # K x D
        w = np.where(usable, counts, 0.0)
        for i in range(K):
            ok = usable & np.isfinite(gap[i])
            if ok.any():
                twin_gap[i] = float(np.sum(gap[i, ok] * w[ok]) / np.sum(w[ok]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            twin_gain = np.nanmean(Gt, axis=1)
    table = pl.DataFrame(
        {
            "model": list(keys),
            "relatives_source": list(relatives_source or ["given"] * K),
            "relatives": [",".join(keys[j] for j in rel) for rel in relatives],
            "relatives_gain": rel_gain,
            "min_domain_gain": min_gain,
            "max_domain_gain": max_gain,
            "twin_gap": twin_gap,
            "corpus_gain": corpus_gain,
            "twin_gain": twin_gain,
        }
    )
    return Evidence(table, per_domain, names)


def combine(
    paper: pl.DataFrame | None,
    evidence: Evidence,
    *,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    support_z: float = DEFAULT_SUPPORT_Z,
) -> pl.DataFrame:
    """One row per model: each statistic, its robust z, the verdict and the evidence.

    ``paper``: the paper's rule table (`modelmap.reports.leakage.screen`: model, robust_z,
    residual, ...), or None when benchmark scores are missing; models it lacks get NaN.
    Columns: model, paper_residual, paper_z, relatives_gain, relatives_z, twin_gap, twin_z,
    relatives_source, relatives, flagged, verdict, evidence.
    """
    t = evidence.table
    keys = t["model"].to_list()
    paper_z = np.full(len(keys), np.nan)
    paper_res = np.full(len(keys), np.nan)
    if paper is not None:
        lookup = {r["model"]: r for r in paper.iter_rows(named=True)}
        for i, k in enumerate(keys):
            if k in lookup:
                paper_z[i] = _num(lookup[k]["robust_z"])
                paper_res[i] = _num(lookup[k]["residual"])
    rel = t["relatives_gain"].to_numpy()
    gap = t["twin_gap"].to_numpy()
    rel_z, twin_z = robust_z(rel), robust_z(gap)
    flagged, verdicts, texts = [], [], []
    for i, key in enumerate(keys):
        # Each statistic's z where it points at a leak (a positive gain); NaN where missing.
        z_of: dict[str, float] = {
            "twin": twin_z[i] if gap[i] > 0 or not np.isfinite(gap[i]) else -np.inf,
            "paper": paper_z[i],
            "relatives": rel_z[i] if rel[i] > 0 or not np.isfinite(rel[i]) else -np.inf,
        }

        def supported(name: str, z_of: dict = z_of) -> str | None:
            """Another statistic above support_z, or the only statistic there is."""
            if [n for n, z in z_of.items() if not np.isnan(z)] == [name]:
                return "the only statistic available"
            for other, z in z_of.items():
                if other != name and z > support_z:
                    return f"{other} z {z:.1f} > {support_z:g}"
            return None

        reasons, unsupported = [], []
        if z_of["twin"] > z_threshold:
            reasons.append(
                f"gains {gap[i]:.4f} nats/byte more on the corpus texts than on their unseen "
                f"twins (z {twin_z[i]:.1f})"
            )
        if z_of["paper"] > z_threshold:
            text = (
                f"corpus likelihood {paper_res[i]:.4f} nats/byte above what its benchmark "
                f"scores explain (paper's rule, z {paper_z[i]:.1f}"
            )
            why = supported("paper")
            (reasons if why else unsupported).append(text + (f"; {why})" if why else ")"))
        if z_of["relatives"] > z_threshold:
            text = (
                f"gains {rel[i]:.4f} nats/byte over its relatives in the median domain "
                f"(z {rel_z[i]:.1f}"
            )
            why = supported("relatives")
            (reasons if why else unsupported).append(text + (f"; {why})" if why else ")"))
        is_leak = bool(reasons)
        flagged.append(is_leak)
        verdicts.append(LEAK if is_leak else NO_EVIDENCE)
        if is_leak:
            texts.append(f"{key}: possible corpus leakage: " + "; ".join(reasons) + ".")
        elif unsupported:
            texts.append(
                f"{key}: not flagged: "
                + "; ".join(unsupported)
                + f", with no other statistic above z {support_z:g} (a model gaining as much "
                "on the unseen twins is better, not leaked; the paper's rule alone is noisy)."
            )
        else:
            texts.append(f"{key}: no statistic above z {z_threshold:g}.")
    return pl.DataFrame(
        {
            "model": keys,
            "paper_residual": paper_res,
            "paper_z": paper_z,
            "relatives_gain": rel,
            "relatives_z": rel_z,
            "twin_gap": gap,
            "twin_z": twin_z,
            "relatives_source": t["relatives_source"],
            "relatives": t["relatives"],
            "flagged": flagged,
            "verdict": verdicts,
            "evidence": texts,
        }
    )


def _num(value) -> float:
    return float("nan") if value is None else float(value)


STATISTICS = (
    ("paper_z", "paper's rule (benchmark residual)"),
    ("relatives_z", "gain against relatives"),
    ("twin_z", "corpus over unseen twins"),
)


#: Models drawn in the per-model figure at most (flagged first, then the highest z).
MAX_PLOTTED_MODELS = 60


def statistics_png(
    combined: pl.DataFrame,
    path: str | Path,
    *,
    z_threshold: float = DEFAULT_Z_THRESHOLD,
    families: Mapping[str, str] | None = None,
) -> Path:
    """One panel per statistic: each model's robust z as a bar, the threshold as a line;
    flagged models in red. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    K_all = combined.height
    if K_all > MAX_PLOTTED_MODELS:  # one bar per model: a K = 10,000 figure cannot be drawn
        top = pl.max_horizontal([pl.col(c).fill_nan(None) for c, _ in STATISTICS])
        combined = combined.sort([pl.col("flagged"), top], descending=True, nulls_last=True).head(
            MAX_PLOTTED_MODELS
        )
    models = combined["model"].to_list()
    flagged = combined["flagged"].to_numpy()
    K = len(models)
    fig = Figure(figsize=(12, max(3.0, 0.25 * K + 1.5)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(STATISTICS), sharey=True)
    y = np.arange(K)
    for ax, (column, title) in zip(axes, STATISTICS, strict=True):
        z = combined[column].to_numpy().astype(np.float64)
        shown = np.nan_to_num(z, nan=0.0)
        colours = ["red" if f else "tab:blue" for f in flagged]
        ax.barh(y, np.clip(shown, -10, 30), color=colours, alpha=0.8)
        for i in np.flatnonzero(~np.isfinite(z)):
            ax.text(0, y[i], " n/a", va="center", fontsize=6, color="0.4")
        ax.axvline(z_threshold, color="black", ls="--", lw=1)
        ax.axvline(0, color="0.5", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("robust z (clipped to [-10, 30])", fontsize=8)
    label = [f"{m} ({families[m]})" if families and m in families else m for m in models]
    axes[0].set_yticks(y, label, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(
        f"Leakage screen: {int(flagged.sum())} of {K_all} flagged (red)"
        + (f", the {K} highest z shown" if K < K_all else "")
        + f"; threshold z = {z_threshold:g}",
        fontsize=10,
    )
    return write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
