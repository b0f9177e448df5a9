"""The 2-D model map: embedding of Q, a static PNG and an interactive HTML page.

Oyama et al. (ACL 2025, arXiv 2502.16173), figure 1: t-SNE of the rows of the double-centred
matrix Q with scikit-learn (perplexity 30, ``init="pca"``, ``metric="sqeuclidean"``,
``random_state=42``). Here the same affinities (a Gaussian kernel on ``||q_i - q_j||^2``, i.e.
on 2KL, over the ``3 * perplexity`` nearest models) are optimised with openTSNE's Barnes-Hut
gradients (scikit-learn's method too) on every core the process may use.

A map users can learn does not move when models are added:

* :func:`place_on_map` puts new models into an existing map without moving it (openTSNE's
  optimisation of new points against a fixed reference embedding);
* :func:`embed_stable` re-embeds everything starting from the previous map (new models start
  at their placed position) and aligns the result to the previous map by orthogonal
  Procrustes (:func:`align_to`), so the map neither rotates nor flips.
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
#: Points are labelled (:func:`point_labels`) on the PNG and the HTML only up to this many
#: models.
MAX_LABELLED_POINTS = 80
PAPER_PERPLEXITY = 30.0
#: Exact PCA (for the t-SNE initialisation) up to this many models, randomized above.
MAX_MODELS_FULL_PCA = 3000
#: Placing new points against a fixed map: openTSNE's FFT gradients from this many mapped
#: models, Barnes-Hut below.
MIN_MODELS_FFT = 2000
#: A re-embedding from a previous map: steps, and openTSNE's automatic learning rate (K for
#: no exaggeration) divided by this.
STABLE_ITERATIONS = 250
STABLE_RATE_DIVISOR = 40.0


def tsne_perplexity(K: int) -> float:
    """``min(30, (K - 1) / 3)``: the paper's 30, lowered so that it stays below K.

    The affinities use ``3 * perplexity + 1`` neighbours, which then fit in the K - 1 other
    models.
    """
    return min(PAPER_PERPLEXITY, (K - 1) / 3.0)


def _pca_2d(Q: np.ndarray, seed: int = 42) -> np.ndarray:
    """First two principal components (K x 2), zero-padded when K or N < 2.

    Exact ("full") SVD up to :data:`MAX_MODELS_FULL_PCA` models; above, randomized SVD with a
    fixed seed (a full SVD of 10,000 x 10,000 takes minutes, the randomized one seconds).
    """
    from sklearn.decomposition import PCA

    K, N = Q.shape
    n_comp = min(2, K, N)
    xy = np.zeros((K, 2), dtype=np.float64)
    if n_comp > 0:
        # "full" SVD is deterministic (sklearn's svd_flip fixes the signs).
        small = K <= MAX_MODELS_FULL_PCA
        pca = PCA(
            n_components=n_comp, svd_solver="full" if small else "randomized", random_state=seed
        )
        # float32 for large K: a float64 copy of a 10,000 x 10,000 Q is 800 MB.
        xy[:, :n_comp] = pca.fit_transform(np.asarray(Q, dtype=np.float64 if small else np.float32))
    return xy


def tsne_affinities(Q: np.ndarray, perplexity: float, graph=None):
    """t-SNE input affinities of the rows of Q from their exact nearest neighbours by 2KL.

    The ``3 * perplexity`` nearest models of each model (``kl.nearest_neighbours``, blocked,
    no K x K matrix; read from ``graph``, a ``kl.NeighbourGraph`` of Q, when given), a
    Gaussian kernel on ``||q_i - q_j||^2`` calibrated to the perplexity, symmetrised and
    normalised to sum 1: scikit-learn's Barnes-Hut affinities (the paper's
    ``metric="sqeuclidean"`` passes squared distances to the same kernel).

    Returns an ``openTSNE.affinity.PrecomputedAffinities`` (sparse K x K).
    """
    from openTSNE.affinity import PrecomputedAffinities, joint_probabilities_nn

    from modelmap.geometry.kl import nearest

    K = Q.shape[0]
    k = min(K - 1, int(3 * perplexity + 1))
    idx, two_kl = nearest(Q, k, graph)
    P = joint_probabilities_nn(
        idx,
        np.sqrt(two_kl),
        [perplexity],
        symmetrize=True,
        normalization="pair-wise",
        n_reference_samples=K,
    )
    return PrecomputedAffinities(P, normalize=False)


def threads() -> int:
    """Threads for t-SNE: the cores this process may run on, at most ``OMP_NUM_THREADS``
    when that is set (test workers set 1: more OpenMP threads than cores spin)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores or 1, int(limit) if limit.isdigit() and int(limit) > 0 else 1 << 30))


def _tsne_2d(Q: np.ndarray, seed: int, init: np.ndarray | None = None, graph=None) -> np.ndarray:
    """The paper's t-SNE (perplexity ``min(30, (K - 1) / 3)``) with openTSNE's gradients.

    Barnes-Hut gradients (theta 0.5, as scikit-learn's), on :func:`threads` threads. Not
    openTSNE's FFT interpolation: its PyPI wheels call numpy's FFT from Python at every step
    (they are built without FFTW), which at K = N = 10,000 on 2 cores took 118 s against
    20 s for Barnes-Hut (the same affinities and steps; the FFT's grid grows with the map).

    Args:
        init: K x 2 starting positions from a previous map, at the map's own scale. The
            optimisation then skips the early-exaggeration phase (which exists to untangle a
            random or PCA start, and would reshuffle a good one) and takes 250 steps at a
            40-fold smaller learning rate. Default: the first two
            principal components rescaled to a standard deviation of 1e-4, as openTSNE
            advises, with the usual 250 exaggerated steps first.
    """
    from openTSNE import TSNE
    from openTSNE.initialization import rescale

    K = Q.shape[0]
    start = rescale(_pca_2d(Q, seed)) if init is None else np.asarray(init, dtype=np.float64)
    fresh = init is None
    tsne = TSNE(
        n_components=2,
        negative_gradient_method="bh",
        early_exaggeration_iter=250 if fresh else 0,
        # From a previous map: a short, gentle run settles the new points and lets the old
        # ones relax without drifting (measured on 400 models + 1%: median displacement 0.5%
        # of the map's diameter with openTSNE's automatic rate reduced 40-fold, 5% without).
        n_iter=500 if fresh else STABLE_ITERATIONS,
        learning_rate="auto" if fresh else max(K / STABLE_RATE_DIVISOR, 10.0),
        n_jobs=threads(),
        random_state=seed,
        verbose=False,
    )
    affinities = tsne_affinities(Q, tsne_perplexity(K), graph)
    embedding = tsne.fit(affinities=affinities, initialization=start)
    return np.asarray(embedding, dtype=np.float64)


def embed_2d(
    Q: np.ndarray, seed: int = 42, method: str = "auto", graph=None
) -> tuple[np.ndarray, str]:
    """2-D coordinates of the K models from their rows of Q (K x N, nats).

    Args:
        Q: K x N double-centred log-likelihoods (nats), K >= 1.
        seed: ``random_state`` of t-SNE (the paper's 42); the result is deterministic.
        method: ``"tsne"`` (the paper's t-SNE, perplexity ``min(30, (K - 1) / 3)``),
            ``"pca"`` (first two principal components), or ``"auto"``: t-SNE when
            K >= 8, else PCA.
        graph: a ``kl.NeighbourGraph`` of Q (its nearest models), to skip that pass.

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
    return _tsne_2d(Q, seed, graph=graph), "tsne"


def align_to(xy: np.ndarray, reference: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``xy`` rotated (or reflected) and translated so that ``xy[rows]`` best match ``reference``.

    Orthogonal Procrustes without scaling (t-SNE maps of similar data have similar scales,
    and a fixed scale keeps the map valid for :func:`place_on_map`): the rotation minimising
    ``||(xy[rows] - mean) R - (reference - mean_ref)||``, from the SVD of the 2 x 2
    cross-covariance, applied to every row of ``xy``.

    Args:
        xy: K x 2 positions to move.
        reference: m x 2 target positions of ``xy[rows]``.
        rows: (m,) indices into ``xy``; default every row (m = K).

    Returns:
        K x 2 float64.
    """
    xy = np.asarray(xy, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    moving = xy if rows is None else xy[np.asarray(rows)]
    if moving.shape != reference.shape or reference.ndim != 2:
        raise ValueError(f"shapes differ: {moving.shape} and {reference.shape}")
    mu, mu_ref = moving.mean(axis=0), reference.mean(axis=0)
    U, _, Vt = np.linalg.svd((moving - mu).T @ (reference - mu_ref))
    return (xy - mu) @ (U @ Vt) + mu_ref


def _reference_embedding(xy: np.ndarray):
    """A fixed openTSNE embedding of the mapped points, to optimise new points against."""
    import scipy.sparse as sp
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PrecomputedAffinities

    K = len(xy)
    return TSNEEmbedding(
        np.array(xy, dtype=np.float64),
        PrecomputedAffinities(sp.csr_matrix((K, K)), normalize=False),
        negative_gradient_method="fft" if K >= MIN_MODELS_FFT else "bh",
        n_jobs=1,
        random_state=42,
    )


#: Perplexity and initial neighbours for new points (openTSNE's defaults for ``transform``).
PLACE_PERPLEXITY = 5.0
PLACE_INIT_NEIGHBOURS = 25


def place_on_map(xy: np.ndarray, two_kl_new: np.ndarray) -> np.ndarray:
    """Positions of m new models on an existing map of K models, which does not move.

    Each new point starts at the median position of its 25 nearest mapped models and is
    then optimised against the fixed map (250 steps of openTSNE's partial t-SNE: learning
    rate 0.1, exaggeration 1.5, momentum 0.8, gradient norm at most 0.25; the settings of
    ``openTSNE.TSNEEmbedding.transform``), with affinities from a Gaussian kernel on its 2KL
    to its ``3 * 5`` nearest mapped models (perplexity 5).

    Args:
        xy: K x 2 map.
        two_kl_new: m x K estimated 2KL (nats per text) from each new model to each mapped
            one (:func:`modelmap.geometry.placement.two_kl_to_rows`).

    Returns:
        m x 2 float64 positions on the map. K < 3 mapped models: the nearest one's position.
    """
    from openTSNE import PartialTSNEEmbedding
    from openTSNE.affinity import joint_probabilities_nn

    from modelmap.geometry.placement import nearest_of_rows

    xy = np.asarray(xy, dtype=np.float64)
    two_kl_new = np.atleast_2d(np.asarray(two_kl_new, dtype=np.float64))
    K = len(xy)
    if two_kl_new.shape[1] != K:
        raise ValueError(f"{two_kl_new.shape[1]} distances per new model for a map of {K}")
    if K < 3:
        return xy[np.argmin(two_kl_new, axis=1)].copy()
    perplexity = min(PLACE_PERPLEXITY, (K - 1) / 3.0)
    k = max(int(3 * perplexity + 1), PLACE_INIT_NEIGHBOURS)
    idx, d = nearest_of_rows(two_kl_new, min(k, K))
    n_aff = min(K, int(3 * perplexity + 1))
    P = joint_probabilities_nn(
        idx[:, :n_aff],
        np.sqrt(d[:, :n_aff]),
        [perplexity],
        symmetrize=False,
        normalization="point-wise",
        n_reference_samples=K,
    )
    # openTSNE's interpolation grid expects a centred reference; shift back afterwards.
    shift = (xy.max(axis=0) + xy.min(axis=0)) / 2
    reference = _reference_embedding(xy - shift)
    init = np.median((xy - shift)[idx[:, :PLACE_INIT_NEIGHBOURS]], axis=1)
    partial = PartialTSNEEmbedding(init, reference, P=P, **reference.gradient_descent_params)
    partial.optimize(
        n_iter=250,
        learning_rate=0.1,
        exaggeration=1.5,
        momentum=0.8,
        max_grad_norm=0.25,
        inplace=True,
    )
    return np.asarray(partial, dtype=np.float64) + shift


def embed_stable(
    Q: np.ndarray,
    previous_xy: np.ndarray,
    previous_rows: np.ndarray,
    seed: int = 42,
    graph=None,
) -> np.ndarray:
    """Re-embed all K models so that those already on the previous map stay where they were.

    The t-SNE starts from the previous positions (``previous_rows`` of Q were at
    ``previous_xy``); the other models start where :func:`place_on_map` puts them. The
    result is aligned to the previous map by :func:`align_to` on the models of both.

    Args:
        Q: K x N double-centred matrix (nats), K >= :data:`MIN_MODELS_FOR_TSNE`.
        previous_xy: m x 2 previous positions.
        previous_rows: (m,) row index in Q of each previous position (m >= 3).
        graph: a ``kl.NeighbourGraph`` of Q, to skip the nearest-model pass.

    Returns:
        K x 2 float64.
    """
    from modelmap.geometry.placement import two_kl_to_rows

    K = Q.shape[0]
    previous_rows = np.asarray(previous_rows, dtype=np.int64)
    previous_xy = np.asarray(previous_xy, dtype=np.float64)
    if len(previous_rows) < 3 or K < MIN_MODELS_FOR_TSNE:
        return _tsne_2d(Q, seed, graph=graph)
    init = np.empty((K, 2), dtype=np.float64)
    init[previous_rows] = previous_xy
    new_rows = np.setdiff1d(np.arange(K), previous_rows)
    if len(new_rows):
        d = two_kl_to_rows(np.asarray(Q)[previous_rows], np.asarray(Q)[new_rows])
        init[new_rows] = place_on_map(previous_xy, d)
    xy = _tsne_2d(Q, seed, init=init, graph=graph)
    return align_to(xy, previous_xy, previous_rows)


def point_labels(labels: Sequence[str]) -> list[str]:
    """The text printed next to each point: the shortest form that tells the models apart.

    A label is a model key, optionally followed by a note after a space (``" [budget]"``).
    A model's name (its key without ``org/``) stands alone when no other model has that
    name; models that share a name keep their whole key. ``["tiny/llama-base",
    "zoo/llama-base", "zoo/gpt2-base [budget]"]`` -> ``["tiny/llama-base", "zoo/llama-base",
    "gpt2-base [budget]"]``.
    """
    parts = [str(label).partition(" ") for label in labels]  # (key, " ", note)
    keys_by_name: dict[str, set[str]] = {}
    for key, _, _ in parts:
        keys_by_name.setdefault(key.rsplit("/", 1)[-1], set()).add(key)
    out = []
    for key, sep, note in parts:
        name = key.rsplit("/", 1)[-1]
        out.append((name if len(keys_by_name[name]) == 1 else key) + sep + note)
    return out


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
        labels: K model keys; points are annotated with :func:`point_labels` when
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
        for (x, y), label in zip(xy, point_labels(labels), strict=True):
            ax.annotate(
                label,
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
    notes_html: str | None = None,
) -> Path:
    """Write an interactive, self-contained (offline) HTML map to ``path``, atomically.

    ``notes_html``: a trusted HTML fragment shown under the map (the scale to read
    distances by).

    One plotly trace per family (click the legend to hide/show a family); each point is
    labelled as :func:`point_labels` says, and hovering it shows the model key, its family
    and every column of ``extra``.

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
    text_arr = np.asarray(point_labels(labels), dtype=object)
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
                text=[str(text_arr[i]) for i in sel],
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
    if notes_html:
        page = page.replace("</body>", f"<div style='margin:1em 3em'>{notes_html}</div></body>", 1)
    return write_atomic(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def _hover_value(value: object) -> str:
    """Floats with 4 significant digits, everything else as text."""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    return str(value)
