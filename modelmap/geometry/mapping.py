"""The 2-D model map: embedding of Q, a static PNG and an interactive HTML page.

Oyama et al. (ACL 2025, arXiv 2502.16173), figure 1: t-SNE of the rows of the double-centred
matrix Q with scikit-learn (perplexity 30, ``init="pca"``, ``metric="sqeuclidean"``,
``random_state=42``).

Note on the metric, kept as in the paper: scikit-learn squares whatever distance the metric
returns, so ``"sqeuclidean"`` makes t-SNE's input affinities use ``||q_i - q_j||^4`` (i.e.
``(2KL)^2``) rather than ``||q_i - q_j||^2``. It only changes the neighbourhood widths that the
perplexity calibration picks, not which models are near each other.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modelmap.storage import write_atomic

#: Below this many models ``method="auto"`` uses PCA: t-SNE on a handful of points only
#: reflects its perplexity calibration, not the data.
MIN_MODELS_FOR_TSNE = 8
#: Points are labelled with their short name on the PNG only up to this many models.
MAX_LABELLED_POINTS = 80
PAPER_PERPLEXITY = 30.0
#: t-SNE runs on one OpenMP thread up to this many models (see ``_tsne_2d``).
MAX_MODELS_SINGLE_THREAD = 10_000


def tsne_perplexity(K: int) -> float:
    """``min(30, (K - 1) / 3)``: the paper's 30, lowered so that it stays below K.

    scikit-learn requires perplexity < K, and its Barnes-Hut neighbour search uses
    ``3 * perplexity + 1`` neighbours, which then fits in the K - 1 other models.
    """
    return min(PAPER_PERPLEXITY, (K - 1) / 3.0)


def _pca_2d(Q: np.ndarray) -> np.ndarray:
    """First two principal components (K x 2), zero-padded when K or N < 2."""
    from sklearn.decomposition import PCA

    K, N = Q.shape
    n_comp = min(2, K, N)
    xy = np.zeros((K, 2), dtype=np.float64)
    if n_comp > 0:
        # "full" SVD is deterministic (sklearn's svd_flip fixes the signs).
        pca = PCA(n_components=n_comp, svd_solver="full")
        xy[:, :n_comp] = pca.fit_transform(np.asarray(Q, dtype=np.float64))
    return xy


def _tsne_2d(Q: np.ndarray, seed: int) -> np.ndarray:
    """The paper's t-SNE; single-threaded up to :data:`MAX_MODELS_SINGLE_THREAD` models.

    scikit-learn's Barnes-Hut gradient runs OpenMP threads that stall when the cores are
    shared with other work (measured: 12 models took 44 s with 2 threads on a busy 2-core
    machine, 0.04 s with 1); for a few thousand models one thread is fast enough anyway.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    tsne = TSNE(
        n_components=2,
        perplexity=tsne_perplexity(Q.shape[0]),
        init="pca",
        metric="sqeuclidean",
        random_state=seed,
    )
    if Q.shape[0] <= MAX_MODELS_SINGLE_THREAD:
        with threadpool_limits(limits=1, user_api="openmp"):
            return tsne.fit_transform(np.asarray(Q)).astype(np.float64)
    return tsne.fit_transform(np.asarray(Q)).astype(np.float64)


def embed_2d(Q: np.ndarray, seed: int = 42, method: str = "auto") -> tuple[np.ndarray, str]:
    """2-D coordinates of the K models from their rows of Q (K x N, nats).

    Args:
        Q: K x N double-centred log-likelihoods (nats), K >= 1.
        seed: ``random_state`` of t-SNE (the paper's 42); the result is deterministic.
        method: ``"tsne"`` (the paper's t-SNE, perplexity ``min(30, (K - 1) / 3)``),
            ``"pca"`` (first two principal components), or ``"auto"``: t-SNE when
            K >= 8, else PCA.

    Returns:
        ``(xy, method_used)``: K x 2 float64 coordinates (unitless for t-SNE, nats for PCA)
        and one of ``"tsne"``, ``"pca"``, ``"single"`` or ``"line"``. Whatever the method,
        K = 1 gives the origin (``"single"``) and K = 2 two points on the x axis at
        ``-d/2`` and ``+d/2``, ``d = ||q_0 - q_1||`` (``"line"``).
    """
    if method not in ("auto", "tsne", "pca"):
        raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")
    if Q.ndim != 2 or Q.shape[0] == 0:
        raise ValueError(f"Q must be K x N with K >= 1, got shape {Q.shape}")
    K = Q.shape[0]
    if K == 1:
        return np.zeros((1, 2), dtype=np.float64), "single"
    if K == 2:
        d = float(np.linalg.norm(np.asarray(Q[0], np.float64) - np.asarray(Q[1], np.float64)))
        return np.array([[-d / 2, 0.0], [d / 2, 0.0]]), "line"
    if method == "pca" or (method == "auto" and K < MIN_MODELS_FOR_TSNE):
        return _pca_2d(Q), "pca"
    return _tsne_2d(Q, seed), "tsne"


def short_name(model_key: str) -> str:
    """``"org/name"`` -> ``"name"``: the label printed next to a point."""
    return model_key.rsplit("/", 1)[-1]


def _check_inputs(
    xy: np.ndarray, labels: Sequence[str], families: Sequence[str] | None
) -> list[str]:
    K = len(labels)
    if xy.shape != (K, 2):
        raise ValueError(f"xy must be K x 2 with K = {K} labels, got shape {xy.shape}")
    fams = ["model"] * K if families is None else [str(f) for f in families]
    if len(fams) != K:
        raise ValueError(f"{len(fams)} families for {K} labels")
    return fams


def _family_order(families: Sequence[str]) -> list[str]:
    """Families sorted by size (largest first, then name), so colours are stable."""
    counts: dict[str, int] = {}
    for f in families:
        counts[f] = counts.get(f, 0) + 1
    return sorted(counts, key=lambda f: (-counts[f], f))


def plot_map_png(
    xy: np.ndarray,
    labels: Sequence[str],
    families: Sequence[str] | None,
    path: str | os.PathLike,
    title: str = "Model map (t-SNE of log-likelihood vectors)",
) -> Path:
    """Write a scatter plot of the map to ``path`` (PNG), coloured by family, atomically.

    Args:
        xy: K x 2 coordinates from :func:`embed_2d`.
        labels: K model keys; points are annotated with :func:`short_name` when
            K <= 80.
        families: K family names (legend entries), or None for a single family.
        path: destination ``.png``; written to a temporary file in the same folder first.
        title: figure title.

    Uses ``matplotlib.figure.Figure`` directly, so no pyplot global state or backend is
    touched.
    """
    import matplotlib
    from matplotlib.figure import Figure

    xy = np.asarray(xy, dtype=np.float64)
    fams = _check_inputs(xy, labels, families)
    K = len(labels)
    order = _family_order(fams)
    fam_arr = np.asarray(fams, dtype=object)

    fig = Figure(figsize=(12, 9), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab20"]
    markers = "osD^vP*Xh<>"
    for n, fam in enumerate(order):
        sel = fam_arr == fam
        # 20 colours x 11 markers distinguish 220 families.
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=36 if K <= 200 else 12,
            # The 10 dark tab20 colours first, then their light partners: neighbouring
            # families never get a dark/light pair of the same hue.
            color=cmap((2 * n) % 20 + (n // 10) % 2),
            marker=markers[(n // 20) % len(markers)],
            label=f"{fam} ({int(sel.sum())})",
            alpha=0.85,
            edgecolors="none",
        )
    if K <= MAX_LABELLED_POINTS:
        fontsize = 8 if K <= 40 else 6
        for (x, y), label in zip(xy, labels, strict=True):
            ax.annotate(
                short_name(label),
                (x, y),
                xytext=(3, 3),
                textcoords="offset points",
                fontsize=fontsize,
            )
    ax.margins(0.08)  # room for the labels of the outermost points
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    if len(order) <= 40:
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=8,
            frameon=False,
            ncols=1 if len(order) <= 20 else 2,
            title="family",
        )
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def write_map_html(
    xy: np.ndarray,
    labels: Sequence[str],
    families: Sequence[str] | None,
    path: str | os.PathLike,
    extra: dict[str, list] | None = None,
    title: str = "Model map (t-SNE of log-likelihood vectors)",
) -> Path:
    """Write an interactive, self-contained (offline) HTML map to ``path``, atomically.

    One plotly trace per family (click the legend to hide/show a family); hovering a point
    shows the model key, its family and every column of ``extra``.

    Args:
        xy: K x 2 coordinates from :func:`embed_2d`.
        labels: K model keys.
        families: K family names, or None for a single family.
        path: destination ``.html``; plotly.js is embedded (``include_plotlyjs=True``,
            ~4.7 MB) so the page works without a network.
        extra: optional columns for the hover box, each a list of K values, e.g.
            ``{"mean loglik (nats)": [...], "nearest": [...]}``.
        title: page and figure title.
    """
    import plotly.graph_objects as go

    xy = np.asarray(xy, dtype=np.float64)
    fams = _check_inputs(xy, labels, families)
    K = len(labels)
    extra = dict(extra or {})
    for name, values in extra.items():
        if len(values) != K:
            raise ValueError(f"extra column {name!r} has {len(values)} values for {K} models")
    fam_arr = np.asarray(fams, dtype=object)
    label_arr = np.asarray(list(labels), dtype=object)
    extra_names = list(extra)
    extra_arr = [np.asarray(list(v), dtype=object) for v in extra.values()]

    hover = "<b>%{customdata[0]}</b><br>family: %{customdata[1]}"
    for n, name in enumerate(extra_names):
        hover += f"<br>{html.escape(str(name))}: %{{customdata[{n + 2}]}}"
    hover += "<extra></extra>"

    fig = go.Figure()
    for fam in _family_order(fams):
        sel = np.flatnonzero(fam_arr == fam)
        custom = [
            [str(label_arr[i]), fam] + [_hover_value(col[i]) for col in extra_arr] for i in sel
        ]
        fig.add_trace(
            go.Scatter(
                x=xy[sel, 0],
                y=xy[sel, 1],
                mode="markers+text" if K <= MAX_LABELLED_POINTS else "markers",
                text=[short_name(str(label_arr[i])) for i in sel],
                textposition="top center",
                textfont={"size": 9},
                marker={"size": 9, "opacity": 0.85},
                name=f"{fam} ({len(sel)})",
                customdata=custom,
                hovertemplate=hover,
            )
        )
    fig.update_layout(
        title=title,
        template="plotly_white",
        xaxis={"showticklabels": False, "zeroline": False},
        yaxis={"showticklabels": False, "zeroline": False},
        legend={"title": {"text": "family"}},
        height=800,
    )
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    return write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _hover_value(value: object) -> str:
    """Floats with 4 significant digits, everything else as text."""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)
