"""Lineage check: does the map confirm each model's declared base model?

Hub models declare their parents in their card (``base_model:``); the declarations are often
missing or wrong. The map measures behaviour whatever the architecture or format, so a
declared fine-tune should lie at a fine-tune's distance from its base, and two models at that
distance with no declared link are probably relatives nobody declared.

Inputs are the double-centred matrix Q (K x N, nats; `modelmap.geometry.centering`) and each
model's declared bases (model keys; a model may declare several, e.g. a merge). Distances are
the paper's estimate ``2KL(i, j) ~= ||q_i - q_j||^2 / N`` (`modelmap.geometry.kl`), compared in
bits per byte so that a band holds across corpora.

**The fine-tune band** is an upper bound on the 2KL (bits/byte) between a model and a model it
was fine-tuned from. It is configured, or measured on the map (:func:`measured_band`): the
fine-tune distance (the declared pairs the map supports) with :data:`HEADROOM`, and never past
the middle of the gap to the distance between unrelated models (different declared lineages).
The README ("Lineage") gives the distances and the band measured on the tests' zoo;
:data:`DEFAULT_BAND_BITS_PER_BYTE` is used only when nothing can be measured.

**Verdicts** (one per model; the first that applies):

- ``declared base far`` (flagged): no declared base on the map lies within the band, while
  another model that does not declare the same base does.
- ``undeclared relative`` (flagged): a model within the band has no declared link with this
  one, in either direction. Linked means connected through declarations (parent, child,
  siblings that declare the same base, and so on). A model whose place is explained (its
  declared base is within the band, or others declare it as their base and it declares no
  base on the map) is not flagged for a pair whose other member is unexplained: the missing
  declaration is the other's. When both or neither are explained, both are flagged.
- ``base not scored``: a declared base is not on the map (never an error).
- ``confirmed``: a declared base lies within the band.
- ``declared base beyond band``: the declared base is on the map, outside the band, but no
  other model is within it either (nothing contradicts the declaration; not flagged).
- ``no declared base``: nothing declared and no model within the band.

The ``family`` label is made from the same card data, so it is never used as evidence here.

Intervals: ``interval(Q, rows_a, rows_b) -> (low_nats, high_nats)`` gives a confidence
interval for each pair's 2KL over texts; the default, :func:`pair_intervals`, is the closed
form of `modelmap.geometry.intervals` (``SE^2 = (mean d^4 - (mean d^2)^2) / N``, the
interval built by its `normal_interval`) at :data:`INTERVAL_LEVEL`; ``interval=None`` leaves
the columns NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry import kl
from modelmap.geometry.intervals import normal_interval
from modelmap.geometry.kl import NeighbourGraph, nats_per_text_to_bits_per_byte
from modelmap.storage import write_atomic

#: Fallback band in bits/byte when it can neither be configured nor measured (see README).
DEFAULT_BAND_BITS_PER_BYTE = 0.1
#: The band is at most this many times the fine-tune distance (90th percentile of the declared
#: pairs the map supports): a fine-tune half as far again as nine in ten of the map's own is
#: still one. On the measured maps (README, "Lineage") the nearest unrelated models lie 2.1x
#: the fine-tune distance away (the tests' zoo: Llama and NeoX, 3.5 bits/byte, against 1.7)
#: and 2.3x (the demo's map: 3.8 against 1.65).
HEADROOM = 1.5
#: Pairs of models sampled for the distance between unrelated models (all pairs below this).
MAX_PAIRS = 20_000
#: Neighbours listed per model (the declared base's rank is given when within them).
DEFAULT_NEIGHBOURS = 10

CONFIRMED = "confirmed"
DECLARED_BASE_FAR = "declared base far"
UNDECLARED_RELATIVE = "undeclared relative"
BASE_NOT_SCORED = "base not scored"
BEYOND_BAND = "declared base beyond band"
NO_DECLARATION = "no declared base"
FLAGGED_VERDICTS = (DECLARED_BASE_FAR, UNDECLARED_RELATIVE)

Interval = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Two-sided level of the default 2KL intervals.
INTERVAL_LEVEL = 0.95


def pair_intervals(
    Q: np.ndarray, a: np.ndarray, b: np.ndarray, level: float = INTERVAL_LEVEL
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form interval (nats per text) of the 2KL of each row pair (a[n], b[n]) of Q.

    With ``d = q_a - q_b`` (rows of Q are centred), the estimate is ``mean(d^2)`` and its
    standard error over texts ``sqrt((mean(d^4) - mean(d^2)^2) / N)``, as for the pairs table
    (`modelmap.geometry.intervals.two_kl_standard_errors`); the interval from
    `modelmap.geometry.intervals.normal_interval`, as for every other 2KL the platform reports.
    """
    N = Q.shape[1]
    est, se = np.empty(len(a)), np.empty(len(a))
    for n, (i, j) in enumerate(zip(a, b, strict=True)):
        y = (np.asarray(Q[i], dtype=np.float64) - np.asarray(Q[j], dtype=np.float64)) ** 2
        est[n] = y.mean()
        se[n] = np.sqrt(max(float((y * y).mean() - est[n] ** 2), 0.0) / N)
    return normal_interval(est, se, level)


@dataclass
class LineageReport:
    """Result of :func:`check_lineage`.

    ``table``: one row per model (input order): model, declared_base (comma-separated),
    verdict, flagged, declared_base_rank (1 = nearest; null beyond the neighbours listed),
    two_kl_nats / two_kl_bits_per_byte to the nearest declared base on the map, with
    ``two_kl_nats_low/high`` and ``two_kl_bits_per_byte_low/high``; nearest, nearest_two_kl_
    bits_per_byte, within_band (comma-separated models within the band), suggested_base, text.
    ``pairs``: every declared (model, base) pair with its distance and whether the base is on
    the map. ``band_bits_per_byte`` and ``band_source`` ("configured", "measured", "default").
    """

    table: pl.DataFrame
    pairs: pl.DataFrame
    band_bits_per_byte: float
    band_source: str
    flagged: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)

    def verdict_counts(self) -> dict[str, int]:
        """Verdict -> number of models, in the verdicts' alphabetical order."""
        counts = self.table.group_by("verdict").len().sort("verdict")
        return dict(zip(counts["verdict"].to_list(), counts["len"].to_list(), strict=True))

    def findings(self) -> str:
        """One paragraph per flagged model (its key, verdict and text), or a line that says
        none is flagged."""
        verdicts = dict(zip(self.table["model"], self.table["verdict"], strict=True))
        paragraphs = [f"{k}: {verdicts[k]}. {self.texts[k]}" for k in self.flagged]
        return "\n\n".join(paragraphs) or "No model flagged."


def _sq_dist(Q: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||q_a - q_b||^2 / N`` (nats per text) for row pairs, in float64."""
    N = Q.shape[1]
    out = np.empty(len(a), dtype=np.float64)
    for n, (i, j) in enumerate(zip(a, b, strict=True)):
        d = np.asarray(Q[i], dtype=np.float64) - np.asarray(Q[j], dtype=np.float64)
        out[n] = float(d @ d) / N
    return out


def _components(keys: Sequence[str], declared: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Connected components of the declaration graph (edges model - declared base)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for key in keys:
        find(key)
        for base in declared.get(key, ()):
            parent[find(key)] = find(base)
    roots: dict[str, int] = {}
    return {k: roots.setdefault(find(k), len(roots)) for k in keys}


def measured_band(
    Q: np.ndarray,
    keys: Sequence[str],
    declared: Mapping[str, Sequence[str]],
    mean_bytes: float,
    graph: NeighbourGraph | None = None,
) -> float | None:
    """The fine-tune band (bits/byte) measured on the map, or None when nothing supports it.

    Declared pairs (model, base) where the base is among the model's two nearest models are
    taken as real fine-tunes; ``ft`` is the 90th percentile of their 2KL. ``unrelated`` is
    the 25th percentile of the 2KL between models of different declared lineages (all pairs,
    or :data:`MAX_PAIRS` sampled ones: the few pairs a wrong or missing declaration makes
    small cannot move a quantile of K^2 pairs). The band is :data:`HEADROOM` x ``ft``, capped
    at the geometric mean of ``ft`` and ``unrelated`` (the middle of the gap on a log scale;
    ``ft`` itself when there is no gap).

    The cap alone is not enough: ``unrelated`` is a quantile over all pairs, so on a map of
    distant groups (a zoo of tiny models, a zoo of small ones, a pretrained family) it follows
    the far pairs between groups, and the middle of the gap then took in two unrelated bases
    inside one group (README, "Lineage"). The headroom ties the band to what fine-tuning does.
    """
    row = {k: i for i, k in enumerate(keys)}
    K = len(keys)
    if K < 3:
        return None
    idx, _ = kl.nearest(Q, 2, graph)
    a, b = [], []
    for key, bases in declared.items():
        for base in bases:
            if key in row and base in row and row[base] in idx[row[key], :2]:
                a.append(row[key])
                b.append(row[base])
    if not a:
        return None
    supported = nats_per_text_to_bits_per_byte(_sq_dist(Q, np.array(a), np.array(b)), mean_bytes)
    ft = float(np.percentile(supported, 90))
    comp = _components(keys, declared)
    lineage_of = np.array([comp[k] for k in keys])
    rng = np.random.default_rng(0)
    if K * (K - 1) // 2 <= MAX_PAIRS:
        i, j = np.triu_indices(K, k=1)
    else:
        i, j = rng.integers(0, K, MAX_PAIRS), rng.integers(0, K, MAX_PAIRS)
    cross = lineage_of[i] != lineage_of[j]
    if not cross.any():
        return HEADROOM * ft
    unrelated = float(
        np.percentile(
            nats_per_text_to_bits_per_byte(_sq_dist(Q, i[cross], j[cross]), mean_bytes), 25
        )
    )
    if unrelated <= ft:
        return ft
    return float(min(HEADROOM * ft, np.sqrt(ft * unrelated)))


def check_lineage(
    Q: np.ndarray,
    keys: Sequence[str],
    declared: Mapping[str, Sequence[str]],
    mean_bytes: float,
    *,
    band_bits_per_byte: float | None = None,
    neighbours: int = DEFAULT_NEIGHBOURS,
    interval: Interval | None = pair_intervals,
    graph: NeighbourGraph | None = None,
) -> LineageReport:
    """Check every model's declared bases against the map; see the module docstring.

    Args:
        Q: K x N double-centred log-likelihoods (nats), rows in ``keys`` order.
        keys: the K model keys.
        declared: model key -> declared base keys (models absent or with [] declare none).
            Bases need not be on the map.
        mean_bytes: mean UTF-8 bytes per corpus text (for bits per byte).
        band_bits_per_byte: the fine-tune band; None: measured (:func:`measured_band`), else
            :data:`DEFAULT_BAND_BITS_PER_BYTE`.
        neighbours: how many nearest models to list and rank the declared base among.
        interval: 2KL interval function (see the module docstring); None: no intervals.
        graph: the nearest models of Q (`coordinates` keeps them), instead of a K^2 pass.
    """
    keys = list(keys)
    K = len(keys)
    if Q.shape[0] != K:
        raise ValueError(f"Q has {Q.shape[0]} rows for {K} model keys")
    row = {k: i for i, k in enumerate(keys)}
    declared = {k: [b for b in declared.get(k, ()) if b and b != k] for k in keys}

    if band_bits_per_byte is not None:
        band, source = float(band_bits_per_byte), "configured"
    elif (band := measured_band(Q, keys, declared, mean_bytes, graph)) is not None:
        source = "measured"
    else:
        band, source = DEFAULT_BAND_BITS_PER_BYTE, "default"

    k = min(neighbours, K - 1)
    if k > 0:
        idx, nn_nats = kl.nearest(Q, k, graph)
    else:
        idx, nn_nats = np.zeros((K, 0), dtype=np.int64), np.zeros((K, 0))
    nn_bpb = nats_per_text_to_bits_per_byte(nn_nats, mean_bytes)

    # Declared pairs with the base on the map: direct distances and intervals.
    pair_a, pair_b, pair_model, pair_base = [], [], [], []
    missing_pairs = []
    for key in keys:
        for base in declared[key]:
            if base in row:
                pair_a.append(row[key])
                pair_b.append(row[base])
                pair_model.append(key)
                pair_base.append(base)
            else:
                missing_pairs.append((key, base))
    a, b = np.array(pair_a, dtype=np.int64), np.array(pair_b, dtype=np.int64)
    nats = _sq_dist(Q, a, b) if len(a) else np.zeros(0)
    if interval is not None and len(a):
        low, high = (np.asarray(x, dtype=np.float64) for x in interval(Q, a, b))
    else:
        low = high = np.full(len(a), np.nan)
    bpb = nats_per_text_to_bits_per_byte(nats, mean_bytes)
    rank = []
    for i, j in zip(a, b, strict=True):
        hit = np.flatnonzero(idx[i] == j)
        rank.append(int(hit[0]) + 1 if len(hit) else None)
    pairs = pl.DataFrame(
        {
            "model": pair_model + [m for m, _ in missing_pairs],
            "declared_base": pair_base + [b_ for _, b_ in missing_pairs],
            "on_map": [True] * len(a) + [False] * len(missing_pairs),
            "rank": rank + [None] * len(missing_pairs),
            "two_kl_nats": np.concatenate([nats, np.full(len(missing_pairs), np.nan)]),
            "two_kl_nats_low": np.concatenate([low, np.full(len(missing_pairs), np.nan)]),
            "two_kl_nats_high": np.concatenate([high, np.full(len(missing_pairs), np.nan)]),
            "two_kl_bits_per_byte": np.concatenate([bpb, np.full(len(missing_pairs), np.nan)]),
            "within_band": np.concatenate([bpb <= band, np.zeros(len(missing_pairs), bool)]),
        },
        schema_overrides={"rank": pl.Int64},
    )

    comp = _components(keys, declared)
    has_children = {base for bases in declared.values() for base in bases}
    within = [[int(idx[i, n]) for n in range(k) if nn_bpb[i, n] <= band] for i in range(K)]

    def linked(i: int, j: int) -> bool:
        return comp[keys[i]] == comp[keys[j]]

    confirmed_models = set(pairs.filter(pl.col("within_band"))["model"].to_list())

    def accounted(i: int) -> bool:
        """Its place is explained: a declared base within the band, or a declared parent
        whose own declaration (if any) cannot be checked on the map."""
        key = keys[i]
        unchecked = not any(b in row for b in declared[key])
        return key in confirmed_models or (unchecked and key in has_children)

    # An unlinked pair within the band: the member whose place is not explained lacks the
    # declaration; when both (or neither) are explained, both are flagged.
    undeclared: dict[int, list[int]] = {i: [] for i in range(K)}
    for i in range(K):
        for j in within[i]:
            if not linked(i, j) and (not accounted(i) or accounted(j)):
                undeclared[i].append(j)

    by_model = {m: [] for m in keys}
    for r in pairs.iter_rows(named=True):
        by_model[r["model"]].append(r)

    rows, texts, flagged = [], {}, []
    for i, key in enumerate(keys):
        mine = by_model[key]
        on_map = [r for r in mine if r["on_map"]]
        best = min(on_map, key=lambda r: r["two_kl_nats"]) if on_map else None
        bases = set(declared[key])
        # Models within the band that do not declare (any of) the same base(s), nor are one.
        others = [
            j for j in within[i] if keys[j] not in bases and not (bases & set(declared[keys[j]]))
        ]
        nearest = keys[idx[i, 0]] if k else None
        nearest_bpb = float(nn_bpb[i, 0]) if k else math.nan
        suggested = None
        if best is not None and best["within_band"]:
            verdict = CONFIRMED
        elif best is not None and others:
            verdict, suggested = DECLARED_BASE_FAR, keys[others[0]]
        elif undeclared[i]:
            verdict, suggested = UNDECLARED_RELATIVE, keys[undeclared[i][0]]
        elif mine and best is None:
            verdict = BASE_NOT_SCORED
        elif best is not None:
            verdict = BEYOND_BAND
        else:
            verdict = NO_DECLARATION
        if verdict == CONFIRMED and undeclared[i]:
            verdict, suggested = UNDECLARED_RELATIVE, keys[undeclared[i][0]]
        is_flagged = verdict in FLAGGED_VERDICTS
        text = _finding_text(
            key, verdict, best, suggested, nn_bpb[i], idx[i], keys, band, declared[key]
        )
        if is_flagged:
            flagged.append(key)
            texts[key] = text
        rows.append(
            {
                "model": key,
                "declared_base": ",".join(declared[key]),
                "verdict": verdict,
                "flagged": is_flagged,
                "declared_base_rank": best["rank"] if best else None,
                "two_kl_nats": best["two_kl_nats"] if best else math.nan,
                "two_kl_nats_low": best["two_kl_nats_low"] if best else math.nan,
                "two_kl_nats_high": best["two_kl_nats_high"] if best else math.nan,
                "two_kl_bits_per_byte": best["two_kl_bits_per_byte"] if best else math.nan,
                "nearest": nearest,
                "nearest_two_kl_bits_per_byte": nearest_bpb,
                "within_band": ",".join(keys[j] for j in within[i]),
                "suggested_base": suggested,
                "text": text,
            }
        )
    table = pl.DataFrame(rows, schema_overrides={"declared_base_rank": pl.Int64})
    table = table.with_columns(
        (pl.col(c) / (mean_bytes * math.log(2.0))).alias(c.replace("nats", "bits_per_byte"))
        for c in ("two_kl_nats_low", "two_kl_nats_high")
    )
    pairs = pairs.with_columns(
        (pl.col(c) / (mean_bytes * math.log(2.0))).alias(c.replace("nats", "bits_per_byte"))
        for c in ("two_kl_nats_low", "two_kl_nats_high")
    )
    return LineageReport(table, pairs, band, source, flagged, texts)


def _finding_text(
    key: str,
    verdict: str,
    best: dict | None,
    suggested: str | None,
    nn_bpb: np.ndarray,
    nn_idx: np.ndarray,
    keys: Sequence[str],
    band: float,
    bases: Sequence[str],
) -> str:
    """A few sentences a reviewer can act on."""
    near = ", ".join(f"{keys[j]} ({d:.3g})" for j, d in zip(nn_idx[:3], nn_bpb[:3], strict=False))
    declared = ", ".join(bases) or "nothing"
    if verdict == DECLARED_BASE_FAR:
        rank = f"rank {best['rank']}" if best["rank"] else "not among its nearest models"
        return (
            f"{key} declares {best['declared_base']} as its base, but that model is "
            f"{best['two_kl_bits_per_byte']:.3g} bits/byte away ({rank}), outside the fine-tune "
            f"band of {band:.3g} bits/byte, while {suggested} lies within it and does not "
            f"declare the same base. Nearest models: {near}. Check the card's base_model; "
            f"{suggested} (or a model it derives from) is the likelier base."
        )
    if verdict == UNDECLARED_RELATIVE:
        return (
            f"{key} (declares {declared}) lies within the fine-tune band ({band:.3g} bits/byte) "
            f"of {suggested}, and neither declares a link to the other. Nearest models: {near}. "
            f"If one derives from the other, add base_model to the card; otherwise look for a "
            f"shared undeclared ancestor or a merge."
        )
    if verdict == BASE_NOT_SCORED:
        return (
            f"{key} declares {declared}; not on the map, so the declaration cannot be checked. "
            f"Score the base to check it. Nearest models: {near}."
        )
    if verdict == CONFIRMED:
        return (
            f"{key}: declared base {best['declared_base']} at "
            f"{best['two_kl_bits_per_byte']:.3g} bits/byte, within the band."
        )
    if verdict == BEYOND_BAND:
        return (
            f"{key}: declared base {best['declared_base']} at "
            f"{best['two_kl_bits_per_byte']:.3g} bits/byte, beyond the band, with no other model "
            f"closer than the band: a longer fine-tune, or a distant relative."
        )
    return f"{key}: no declared base and no model within the band. Nearest models: {near}."


#: Rows drawn in the per-model figure at most (flagged models first).
MAX_PLOTTED_MODELS = 60


def lineage_png(report: LineageReport, path: str | Path) -> Path:
    """Each model's 2KL to its declared base (or to its nearest model) on a log scale,
    with the fine-tune band; flagged models in red and labelled. Written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = report.table
    K_all = t.height
    if K_all > MAX_PLOTTED_MODELS:  # one row per model: a K = 10,000 figure cannot be drawn
        is_flagged = pl.col("verdict").is_in(list(FLAGGED_VERDICTS))
        t = pl.concat([t.filter(is_flagged), t.filter(~is_flagged)]).head(MAX_PLOTTED_MODELS)
    models = t["model"].to_list()
    declared = t["two_kl_bits_per_byte"].to_numpy()
    nearest = t["nearest_two_kl_bits_per_byte"].to_numpy()
    verdicts = t["verdict"].to_list()
    colours = {
        CONFIRMED: "tab:green",
        DECLARED_BASE_FAR: "red",
        UNDECLARED_RELATIVE: "tab:orange",
        BASE_NOT_SCORED: "tab:gray",
        BEYOND_BAND: "tab:blue",
        NO_DECLARATION: "0.6",
    }
    K = len(models)
    fig = Figure(figsize=(9, max(3.0, 0.28 * K + 1.5)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(K)
    floor = 1e-5
    for v, colour in colours.items():
        sel = np.array([x == v for x in verdicts])
        if sel.any():
            ax.scatter(
                np.maximum(declared[sel], floor), y[sel], color=colour, s=36, label=v, zorder=3
            )
    ax.scatter(
        np.maximum(nearest, floor),
        y,
        marker="|",
        color="black",
        s=80,
        label="nearest model",
        zorder=2,
    )
    ax.axvline(report.band_bits_per_byte, color="black", ls="--", lw=1)
    ax.axvspan(floor, report.band_bits_per_byte, color="0.9", zorder=0)
    ax.set_xscale("log")
    ax.set_yticks(
        y,
        [
            f"{m}{' *' if v in FLAGGED_VERDICTS else ''}"
            for m, v in zip(models, verdicts, strict=True)
        ],
        fontsize=7,
    )
    ax.invert_yaxis()
    ax.set_xlabel("2KL to the declared base (dots) and to the nearest model (bars), bits/byte")
    ax.set_title(
        f"Lineage: {len(report.flagged)} of {K_all} flagged"
        + (f" ({K} shown, flagged first)" if K < K_all else "")
        + "; fine-tune band "
        f"{report.band_bits_per_byte:.3g} bits/byte ({report.band_source})",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=7)
    return write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
