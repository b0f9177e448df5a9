"""A text budget: which texts a new model needs to read, chosen by likelihood variance.

Oyama et al., *Likelihood variance as text importance for resampling texts to map language
models* (arXiv 2505.15428). Texts are drawn with replacement from a probability vector ``p``
over the N corpus texts:

- **uniform**: ``p_s = 1 / N``;
- **LS** (length-squared): ``p_s = ||Q[:, s]||^2 / ||Q||_F^2``, the variance of text s's
  log-likelihood across models (the squared norm of its column of the double-centred Q).

After ``m`` draws a text drawn ``c_s`` times gets the importance weight
``w_s = c_s / (m p_s)`` (the paper's per-draw factor ``1 / sqrt(m p_s)``, squared and summed
over the text's draws). ``sum_s w_s f(s)`` is then an unbiased estimate of ``sum_{s=1}^N f(s)``,
so ``w_s`` is "how many corpus texts this text stands for" and ``sum_s w_s ~= N``.

The estimated squared distance between models i and j over the selected texts S, with
``d_s = l_i(x_s) - l_j(x_s)`` (clipped log-likelihoods, nats) and ``W = sum_S w_s``, is

    G_ij = sum_S w_s (d_s - dbar)^2,   dbar = sum_S w_s d_s / W

(each row centred by its weighted mean over S, as the full matrix centres each row by its
mean over all N texts), and ``2 KL ~= G_ij / N`` nats per text, the same quantity as
``||q_i - q_j||^2 / N`` from all N texts. Any per-row or per-column constant cancels, so Q
itself (not only clipped L) can be fed in.

**n counts distinct texts** (a model scores each selected text once): a draw stream stops at
the draw that brings the n-th distinct text, and ``m`` is the number of draws so far.
LS repeats high-variance texts, so it needs more draws than uniform for the same n.

The error of a budget is measured against all N texts: median relative error of 2KL over
pairs, and agreement of each model's nearest neighbour and top-5 with the full-N ones.
LS probabilities are fitted on models *other* than those evaluated (leave one family out),
which is how a budget is used: chosen from the models on the map, read by a new model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

SAMPLERS = ("uniform", "ls")


def ls_probabilities(Q: np.ndarray) -> np.ndarray:
    """LS sampling probabilities: squared column norms of ``Q`` (K x N), normalised to 1.

    Returns N float64 probabilities; all-zero Q gives the uniform vector.
    """
    Q64 = np.asarray(Q, dtype=np.float64)
    scores = np.einsum("ks,ks->s", Q64, Q64)
    total = scores.sum()
    if not total > 0:
        return np.full(Q.shape[1], 1.0 / Q.shape[1])
    return scores / total


def sampler_probabilities(sampler: str, Q: np.ndarray) -> np.ndarray:
    """Probabilities over the N texts for ``sampler`` ("uniform" or "ls") fitted on ``Q``."""
    if sampler == "uniform":
        return np.full(Q.shape[1], 1.0 / Q.shape[1])
    if sampler == "ls":
        return ls_probabilities(Q)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


class DrawStream:
    """Draws with replacement from ``p``, extended on demand, with the draw index at which
    each new distinct text first appears (so any prefix holding n distinct texts is known)."""

    def __init__(self, p: np.ndarray, rng: np.random.Generator, block: int | None = None):
        self.p = np.asarray(p, dtype=np.float64)
        self.cdf = np.cumsum(self.p)
        self.cdf /= self.cdf[-1]
        self.rng = rng
        self.block = block or max(1024, len(p))
        self.draws = np.empty(0, dtype=np.int64)
        self.first_seen = np.zeros(len(p), dtype=bool)
        self.new_at: list[np.ndarray] = []  # positions of first occurrences, in order
        self.n_distinct = 0

    def _extend(self) -> None:
        u = self.rng.random(self.block)
        fresh = np.minimum(np.searchsorted(self.cdf, u, side="right"), len(self.p) - 1)
        start = len(self.draws)
        # First occurrences inside this block of texts not seen before.
        uniq, first = np.unique(fresh, return_index=True)
        keep = ~self.first_seen[uniq]
        pos = np.sort(first[keep]) + start
        self.first_seen[uniq[keep]] = True
        self.new_at.append(pos)
        self.n_distinct += len(pos)
        self.draws = np.concatenate([self.draws, fresh])

    def draws_for(self, n_distinct: int, max_draws: int) -> int | None:
        """Number of draws m whose prefix holds exactly ``n_distinct`` texts (the stream stops
        at the draw bringing the n-th); None if that takes more than ``max_draws`` draws."""
        while self.n_distinct < n_distinct and len(self.draws) < max_draws:
            self._extend()
        if self.n_distinct < n_distinct:
            return None
        pos = np.concatenate(self.new_at)[n_distinct - 1]
        return int(pos) + 1 if pos < max_draws else None


@dataclass(frozen=True)
class Selection:
    """Selected texts (column indices into the corpus order) and their weights.

    ``weight[s] = count[s] / (n_draws * probability[s])``: corpus texts each one stands for.
    """

    index: np.ndarray  # n distinct int64 column indices, ascending
    count: np.ndarray  # times each was drawn (int64)
    probability: np.ndarray  # its sampling probability (float64)
    weight: np.ndarray  # importance weight (float64); sums to ~N
    n_draws: int
    sampler: str


def selection_from_draws(draws: np.ndarray, p: np.ndarray, sampler: str) -> Selection:
    index, count = np.unique(draws, return_counts=True)
    m = len(draws)
    return Selection(
        index=index.astype(np.int64),
        count=count.astype(np.int64),
        probability=p[index],
        weight=count / (m * p[index]),
        n_draws=m,
        sampler=sampler,
    )


def select_texts(Q: np.ndarray, n_distinct: int, sampler: str = "ls", seed: int = 42) -> Selection:
    """Draw texts by ``sampler`` fitted on all of Q until ``n_distinct`` distinct texts."""
    N = Q.shape[1]
    if not 1 <= n_distinct <= N:
        raise ValueError(f"n_distinct must be in [1, {N}], got {n_distinct}")
    p = sampler_probabilities(sampler, Q)
    if np.count_nonzero(p) < n_distinct:
        raise ValueError(f"only {np.count_nonzero(p)} texts have non-zero probability")
    stream = DrawStream(p, np.random.default_rng(seed))
    m = stream.draws_for(n_distinct, max_draws=10**9)
    return selection_from_draws(stream.draws[:m], p, sampler)


def selection_hash(corpus_hash: str, text_ids: np.ndarray, weights: np.ndarray) -> str:
    """Version of a selection: sha256 over the corpus hash, text ids and weights."""
    h = hashlib.sha256(corpus_hash.encode())
    h.update(np.asarray(text_ids, dtype=np.int64).tobytes())
    h.update(np.asarray(weights, dtype=np.float64).tobytes())
    return h.hexdigest()


def weighted_sq_distances(rows_a: np.ndarray, rows_b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``G[i, j] = sum_s w_s (d_s - dbar)^2`` with ``d = a_i - b_j`` over the selected texts.

    Args:
        rows_a: A x n log-likelihoods (nats) on the selected texts (clipped L or Q).
        rows_b: B x n, the same texts in the same order.
        weight: n importance weights.

    Returns:
        A x B float64 estimates of ``||q_i - q_j||^2`` (divide by N for 2KL in nats per text).
        Computed from explicitly centred rows (float64), clamped at 0.
    """
    w = np.asarray(weight, dtype=np.float64)
    W = w.sum()
    a = np.asarray(rows_a, dtype=np.float64)
    b = np.asarray(rows_b, dtype=np.float64)
    a = a - (a @ w / W)[:, None]
    b = b - (b @ w / W)[:, None]
    sw = np.sqrt(w)
    a *= sw
    b *= sw
    G = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
    G -= 2.0 * (a @ b.T)
    return np.maximum(G, 0.0)


def family_folds(families: list[str], max_folds: int = 5) -> np.ndarray:
    """Fold of each model: one fold per family (leave one family out); with more than
    ``max_folds`` families, families are dealt round-robin (in name order) into
    ``max_folds`` folds, so each fold still holds whole families only."""
    names = sorted(set(families))
    fold_of = {f: i % max_folds for i, f in enumerate(names)}
    return np.array([fold_of[f] for f in families], dtype=np.int64)


def _held_out_ls(Q64: np.ndarray, held: np.ndarray, totals) -> np.ndarray:
    """LS probabilities from the double-centred matrix of the models *not* in ``held``.

    Q's rows are centred already; the other models' own column centring subtracts their
    column mean, so ``||col||^2 = sum_other Q^2 - (sum_other Q)^2 / K_other``.
    ``totals`` = (column sums, column sums of squares) of all of Q.
    """
    k = int((~held).sum())
    if k == 0:  # one family only: nothing else to learn from
        held = np.zeros_like(held)
        k = len(held)
    sub = Q64[held]
    s1 = totals[0] - sub.sum(axis=0)
    s2 = totals[1] - np.einsum("ks,ks->s", sub, sub)
    scores = np.maximum(s2 - s1 * s1 / k, 0.0)
    total = scores.sum()
    return scores / total if total > 0 else np.full(Q64.shape[1], 1.0 / Q64.shape[1])


def n_grid(n_min: int, n_max: int, ratio: float) -> list[int]:
    """Integers from ``n_min`` to ``n_max`` with consecutive ratios at most ``ratio``."""
    if ratio <= 1.0:
        raise ValueError("ratio must be > 1")
    grid = [n_min]
    while grid[-1] < n_max:
        grid.append(min(n_max, max(grid[-1] + 1, int(grid[-1] * ratio))))
    return grid


class _StreamState:
    """Running sums of one draw stream for the query rows against all rows."""

    def __init__(self, p, rng, queries, K):
        self.stream = DrawStream(p, rng)
        self.p = p
        self.queries = queries
        self.m = 0
        self.a = np.zeros(K)  # sum over draws of l^2 / p
        self.b = np.zeros(K)  # sum of l / p
        self.c = 0.0  # sum of 1 / p
        self.cross = np.zeros((len(queries), K))  # sum of l_q l_j / p

    def advance(self, QT: np.ndarray, m: int) -> None:
        draws = self.stream.draws[self.m : m]
        texts, counts = np.unique(draws, return_counts=True)
        v = counts / self.p[texts]
        X = np.asarray(QT[texts], dtype=np.float64)  # n x K
        self.a += v @ (X * X)
        self.b += v @ X
        self.c += float(v.sum())
        self.cross += (X[:, self.queries] * v[:, None]).T @ X
        self.m = m

    def sq_distances(self) -> np.ndarray:
        q = self.queries
        G = self.a[q][:, None] + self.a[None, :] - 2.0 * self.cross
        G -= (self.b[q][:, None] - self.b[None, :]) ** 2 / self.c
        return np.maximum(G / self.m, 0.0)


def _top_k(G: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k smallest entries per row (any order)."""
    return np.argpartition(G, k - 1, axis=1)[:, :k]


def _agreement(G_est: np.ndarray, ref: dict, queries: np.ndarray):
    """Per query: relative errors of its pairs, nearest-neighbour match, top-k overlap."""
    est = G_est.copy()
    est[np.arange(len(queries)), queries] = np.inf
    rel = np.abs(est.ravel()[ref["pairs"]] - ref["G_pairs"]) / ref["G_pairs"]
    nn_same = np.argmin(est, axis=1) == ref["nn"]
    top_est = _top_k(est, ref["top"].shape[1])
    overlap = (top_est[:, :, None] == ref["top"][:, None, :]).any(axis=2).mean(axis=1)
    return rel, nn_same, overlap


def _reference(G_ref: np.ndarray, queries: np.ndarray, top: int, max_pairs: int, rng) -> dict:
    """Full-N neighbours of the queries, and the pairs (at most ``max_pairs``, drawn at
    random) whose relative error is measured."""
    ref = G_ref.copy()
    ref[np.arange(len(queries)), queries] = np.inf
    k = min(top, G_ref.shape[1] - 1)
    valid = np.flatnonzero(np.isfinite(ref) & (ref > 0))
    if len(valid) > max_pairs:
        valid = np.sort(rng.choice(valid, max_pairs, replace=False))
    return {
        "G": ref,
        "pairs": valid,
        "G_pairs": ref.ravel()[valid],
        "nn": np.argmin(ref, axis=1),
        "top": _top_k(ref, k),
    }


def budget_error_curve(
    Q: np.ndarray,
    families: list[str],
    target_rel_error: float = 0.05,
    n_seeds: int = 10,
    grid_ratio: float = 1.2,
    n_min: int = 10,
    n_max: int | None = None,
    max_queries: int = 200,
    max_pairs: int = 20_000,
    max_draws_factor: float = 20.0,
    top: int = 5,
    seed: int = 0,
    samplers: tuple[str, ...] = SAMPLERS,
) -> pl.DataFrame:
    """Error of the distances from n selected texts against all N, for uniform and LS.

    Args:
        Q: K x N double-centred log-likelihoods (nats); the reference is ``||q_i - q_j||^2``.
        families: K family names; LS probabilities for a model are fitted on the models of
            the other folds (`family_folds`: one family per fold up to 5 families, else
            whole families dealt into 5 folds).
        target_rel_error: the sweep stops one grid step after every sampler's seed-mean
            median relative error is at or below it (and at ``n_max``).
        n_seeds: independent draw streams per sampler and fold (the paper's seeds).
        grid_ratio: consecutive grid values of n differ by at most this factor.
        n_max: largest n (default N); a stream that needs more than
            ``max_draws_factor * N`` draws for an n stops there.
        max_queries: evaluated models (spread over folds); each is compared with all K.
        max_pairs: pairs (drawn at random among those) whose relative error is measured.

    Returns:
        One row per (sampler, n, seed): ``sampler``, ``n_texts`` (distinct), ``seed``,
        ``n_draws`` (mean over folds), ``median_rel_error`` (over every evaluated pair),
        ``nn_agreement`` and ``top5_agreement`` (fractions of evaluated models).
    """
    K, N = Q.shape
    if K < 3:
        raise ValueError(f"need at least 3 models to compare neighbours, got {K}")
    Q64 = np.ascontiguousarray(Q, dtype=np.float64)
    QT = np.ascontiguousarray(Q64.T)  # N x K: a selected text's column is one row
    folds = family_folds(list(families))
    rng = np.random.default_rng(seed)
    n_max = min(n_max or N, N)
    max_draws = int(max_draws_factor * N)

    # Queries: up to max_queries models, spread over folds in proportion to their size.
    take = min(K, max_queries)
    order = rng.permutation(K)
    queries_all = np.sort(order[:take])
    sq = np.einsum("ks,ks->k", Q64, Q64)
    totals = (Q64.sum(axis=0), np.einsum("ks,ks->s", Q64, Q64))
    pair_cap = max(1, max_pairs // max(1, len(np.unique(folds))))
    plan = []  # (fold queries, probabilities per sampler, reference distances)
    for f in np.unique(folds):
        held = folds == f
        q = queries_all[held[queries_all]]
        if len(q) == 0:
            continue
        ref = sq[q][:, None] + sq[None, :] - 2.0 * (Q64[q] @ Q64.T)
        probs = {
            s: np.full(N, 1.0 / N) if s == "uniform" else _held_out_ls(Q64, held, totals)
            for s in samplers
        }
        plan.append((q, probs, _reference(np.maximum(ref, 0.0), q, top, pair_cap, rng)))

    states = {
        (s, r, i): _StreamState(probs[s], np.random.default_rng([seed, r, i, k]), q, K)
        for i, (q, probs, _) in enumerate(plan)
        for k, s in enumerate(samplers)
        for r in range(n_seeds)
    }
    rows = []
    done_after: dict[str, int] = {}
    for n in n_grid(min(n_min, n_max), n_max, grid_ratio):
        live = [s for s in samplers if done_after.get(s, 2) > 0]
        if not live:
            break
        for s in live:
            errs = []
            for r in range(n_seeds):
                rels, nns, tops, draws = [], [], [], []
                for i, (q, _, ref) in enumerate(plan):
                    st = states[(s, r, i)]
                    m = st.stream.draws_for(n, max_draws)
                    if m is None:
                        break
                    st.advance(QT, m)
                    rel, nn, top_k = _agreement(st.sq_distances(), ref, q)
                    rels.append(rel)
                    nns.append(nn)
                    tops.append(top_k)
                    draws.append(m)
                else:
                    rows.append(
                        {
                            "sampler": s,
                            "n_texts": n,
                            "seed": r,
                            "n_draws": float(np.mean(draws)),
                            "median_rel_error": float(np.median(np.concatenate(rels))),
                            "nn_agreement": float(np.concatenate(nns).mean()),
                            "top5_agreement": float(np.concatenate(tops).mean()),
                        }
                    )
                    errs.append(rows[-1]["median_rel_error"])
                    continue
                done_after[s] = 0  # this n is out of reach within max_draws
                break
            if done_after.get(s) == 0:
                continue
            if len(errs) == n_seeds and np.mean(errs) <= target_rel_error:
                done_after[s] = done_after.get(s, 2) - 1
    return pl.DataFrame(
        rows,
        schema={
            "sampler": pl.String,
            "n_texts": pl.Int64,
            "seed": pl.Int64,
            "n_draws": pl.Float64,
            "median_rel_error": pl.Float64,
            "nn_agreement": pl.Float64,
            "top5_agreement": pl.Float64,
        },
    )


def summarise_curve(curve: pl.DataFrame) -> pl.DataFrame:
    """Seed means per (sampler, n): the n-against-error table."""
    return (
        curve.group_by("sampler", "n_texts")
        .agg(
            pl.len().alias("n_seeds"),
            pl.col("n_draws").mean(),
            pl.col("median_rel_error").mean(),
            pl.col("median_rel_error").std().alias("median_rel_error_sd"),
            pl.col("nn_agreement").mean(),
            pl.col("top5_agreement").mean(),
        )
        .sort("sampler", "n_texts")
    )


def n_needed(summary: pl.DataFrame, target_rel_error: float) -> dict[str, int | None]:
    """Smallest n whose seed-mean median relative error is at most the target, per sampler
    (None: not reached on the grid)."""
    out: dict[str, int | None] = {}
    for s in summary["sampler"].unique().sort().to_list():
        hit = summary.filter(
            (pl.col("sampler") == s) & (pl.col("median_rel_error") <= target_rel_error)
        )
        out[s] = int(hit["n_texts"].min()) if hit.height else None
    return out


# -- a model scored on the budget: its partial row against the full rows ---------------------


def partial_row_distances(
    row_nats: np.ndarray,
    L_clipped: np.ndarray,
    columns: np.ndarray,
    weight: np.ndarray,
    clip_threshold: float,
) -> np.ndarray:
    """Estimated ``||q_new - q_j||^2`` of a model scored on the selected texts only.

    - **clipping**: the new row is raised to the map's global clip threshold (the 2nd
      percentile of the full L, `coordinates`' ``clip_threshold_nats``); the full rows are
      the already clipped L, restricted to the selected texts;
    - **row mean**: every row (the new one and the full ones alike) is centred by its
      importance-weighted mean over the selected texts, an estimate of its mean over all N
      (a common per-column shift, such as Q's column means, cancels in a difference);
    - **distance**: ``sum_S w_s (d_s - dbar)^2`` (`weighted_sq_distances`); divide by N for
      2KL. Computed by `modelmap.geometry.placement.two_kl_to_rows` (the placement of any
      new row), whose weighted variance is normalised by ``sum_S w_s``; multiplying back by
      ``sum_S w_s`` gives the paper's unnormalised estimate (``sum_S w_s ~= N``).

    Args:
        row_nats: n log-likelihoods of the new model on the selected texts, in selection order.
        L_clipped: K x N clipped log-likelihoods of the full models (memmap welcome).
        columns: n column indices of the selected texts in L_clipped.
        weight: n importance weights of the selection.
        clip_threshold: the map's clip value in nats (``-inf``: no clipping).

    Returns:
        K float64 squared distances (nats^2 summed over texts, i.e. N x 2KL).
    """
    from modelmap.geometry.placement import two_kl_to_rows

    row = np.maximum(np.asarray(row_nats, dtype=np.float64), clip_threshold)
    w = np.asarray(weight, dtype=np.float64)
    return two_kl_to_rows(L_clipped, row, columns=columns, weights=w)[0] * w.sum()


def place_from_neighbours(xy: np.ndarray, sq_dist: np.ndarray, k: int = 5) -> np.ndarray:
    """Map position of a row that cannot enter the embedding: the mean of its ``k`` nearest
    models' positions weighted by ``1 / distance`` (an exact duplicate lands on its twin).

    Args:
        xy: K x 2 positions of the embedded models; sq_dist: K squared distances to them.

    Returns:
        2 coordinates.
    """
    k = min(k, len(sq_dist))
    near = np.argsort(sq_dist, kind="stable")[:k]
    d = np.sqrt(np.maximum(sq_dist[near], 0.0))
    if d[0] == 0.0:
        return np.asarray(xy[near[0]], dtype=np.float64)
    w = 1.0 / d
    return (w[:, None] * np.asarray(xy[near], dtype=np.float64)).sum(axis=0) / w.sum()


def weighted_bootstrap_two_kl(
    row_nats: np.ndarray,
    full_rows_nats: np.ndarray,
    selection_count: np.ndarray,
    selection_probability: np.ndarray,
    clip_threshold: float,
    n_corpus: int,
    B: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """B x K resampled 2KL (nats per text) of a budget row: the selection's m draws are
    resampled with replacement (`modelmap.geometry.intervals.bootstrap_two_kl`)."""
    from modelmap.geometry.intervals import bootstrap_two_kl, multinomial_counts

    row = np.maximum(np.asarray(row_nats, dtype=np.float64), clip_threshold)
    count = np.asarray(selection_count, dtype=np.float64)
    m = int(count.sum())
    counts = multinomial_counts(len(count), m, B, rng, probs=count / m)
    diffs = row[None, :] - np.asarray(full_rows_nats, dtype=np.float64)
    return bootstrap_two_kl(diffs, counts, 1.0 / selection_probability, m, n_corpus)
