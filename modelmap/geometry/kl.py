"""KL divergences between models estimated from the double-centred matrix Q.

Oyama et al. (ACL 2025, arXiv 2502.16173), section 3: for models p_i, p_j and texts x drawn
from the corpus,

    2 KL(p_i, p_j) ~= Var_x(l_i(x) - l_j(x)) ~= ||q_i - q_j||^2 / N

where q_i is row i of the double-centred K x N matrix Q (nats) and N the number of texts.
The estimate is in *nats per text*; dividing by the mean text length in bytes and by ln 2
gives *bits per byte*, comparable across corpora (arXiv 2505.15353: random seeds differ by
~0.1 bits/byte, model sizes by 0.3-2, consecutive checkpoints by 0.02-0.07).

Squared distances use the Gram identity ``||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b`` in
float64: Q is centred, so the cancellation is mild, but float32 would lose near-duplicate
models (fine-tunes, checkpoints) whose distance is tiny compared with ``||q||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

#: Rows of Q per block in :func:`nearest_neighbours`: two 4,096 x N float64 blocks and one
#: 4,096 x 4,096 distance block are held at once (~790 MB for N = 10,000).
DEFAULT_BLOCK_ROWS = 4096


def _sq_norms(Q64: np.ndarray) -> np.ndarray:
    """Squared row norms (float64) of a float64 block."""
    return np.einsum("ij,ij->i", Q64, Q64)


def _sq_dist_block(
    A64: np.ndarray, sqA: np.ndarray, B64: np.ndarray, sqB: np.ndarray
) -> np.ndarray:
    """``||a_i - b_j||^2`` for all rows of A and B (float64), tiny negatives clamped to 0."""
    D = A64 @ B64.T
    D *= -2.0  # in place: no extra K x K temporaries
    D += sqA[:, None]
    D += sqB[None, :]
    np.maximum(D, 0.0, out=D)  # rounding in the Gram identity can go slightly below 0
    return D


def _smallest_per_row(D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, D.shape[1])`` smallest entries of each row and their column indices,
    ordered by (value, column): equal values go to the lower column.

    ``argpartition`` is O(width) but picks arbitrarily among values equal to the k-th;
    rows that have such a tie at the boundary (rare) fall back to a stable full sort.
    """
    m = min(k, D.shape[1])
    part = np.argpartition(D, m - 1, axis=1)[:, :m]
    part_d = np.take_along_axis(D, part, axis=1)
    kth = part_d.max(axis=1)
    tied = np.flatnonzero((D <= kth[:, None]).sum(axis=1) > m)
    if len(tied):
        part[tied] = np.argsort(D[tied], axis=1, kind="stable")[:, :m]
        part_d[tied] = np.take_along_axis(D[tied], part[tied], axis=1)
    order = np.lexsort((part, part_d), axis=1)
    return np.take_along_axis(part_d, order, axis=1), np.take_along_axis(part, order, axis=1)


def two_kl_nats(Q: np.ndarray) -> np.ndarray:
    """Dense K x K matrix of estimated ``2 KL(p_i, p_j) ~= ||q_i - q_j||^2 / N``.

    Args:
        Q: K x N double-centred log-likelihoods in nats (float32 or float64).

    Returns:
        K x K float64, nats per text; symmetric, non-negative, exact zeros on the diagonal.
        Meant for small K (K^2 floats); use :func:`nearest_neighbours` for large K.
    """
    if Q.ndim != 2:
        raise ValueError(f"Q must be K x N, got shape {Q.shape}")
    K, N = Q.shape
    if N == 0:
        raise ValueError("Q has no texts (N = 0)")
    Q64 = np.asarray(Q, dtype=np.float64)
    sq = _sq_norms(Q64)
    D = _sq_dist_block(Q64, sq, Q64, sq)
    D = (D + D.T) / 2.0  # BLAS may round a.b and b.a differently
    np.fill_diagonal(D, 0.0)
    D /= N
    return D


def nats_per_text_to_bits_per_byte(x: float | np.ndarray, mean_bytes_per_text: float) -> np.ndarray:
    """Convert nats per text to bits per byte: ``x / (mean_bytes_per_text * ln 2)``.

    Args:
        x: scalar or array in nats per text (e.g. 2KL estimates).
        mean_bytes_per_text: mean UTF-8 length of the corpus texts in bytes (972 for the
            paper's Pile sample).
    """
    if not mean_bytes_per_text > 0:
        raise ValueError(f"mean_bytes_per_text must be > 0, got {mean_bytes_per_text}")
    return np.asarray(x, dtype=np.float64) / (mean_bytes_per_text * math.log(2.0))


def nearest_neighbours(
    Q: np.ndarray, k: int, block_rows: int = DEFAULT_BLOCK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest models of every model by estimated 2KL, without a K x K matrix.

    Distances are ``||q_i - q_j||^2 / N`` (nats per text), as in :func:`two_kl_nats`,
    computed for one ``block_rows x block_rows`` tile at a time in float64, so K = 100,000
    works from a memory-mapped float32 Q. The model itself is excluded; ties are broken by
    the lower neighbour index, so for a given ``block_rows`` the result is deterministic.
    (Distances that are equal in exact arithmetic, e.g. to two identical models, can differ
    by one rounding step between tilings, so their order may depend on ``block_rows``.)

    Args:
        Q: K x N double-centred log-likelihoods in nats (array or ``np.memmap``).
        k: neighbours wanted; clamped to ``K - 1`` (so K = 1 gives a K x 0 result).
        block_rows: rows (and columns) per tile.

    Returns:
        ``(idx, two_kl_nats)``: K x k int64 neighbour indices, nearest first, and the K x k
        float64 estimated 2KL in nats per text.
    """
    if Q.ndim != 2:
        raise ValueError(f"Q must be K x N, got shape {Q.shape}")
    if k < 0 or block_rows < 1:
        raise ValueError("k must be >= 0 and block_rows >= 1")
    K, N = Q.shape
    if N == 0:
        raise ValueError("Q has no texts (N = 0)")
    k = min(k, K - 1)
    idx = np.empty((K, k), dtype=np.int64)
    dist = np.empty((K, k), dtype=np.float64)
    if k == 0:
        return idx, dist

    sq = np.empty(K, dtype=np.float64)
    for c0 in range(0, K, block_rows):
        sq[c0 : c0 + block_rows] = _sq_norms(np.asarray(Q[c0 : c0 + block_rows], np.float64))

    for r0 in range(0, K, block_rows):
        A = np.asarray(Q[r0 : r0 + block_rows], dtype=np.float64)
        best_d = np.empty((len(A), 0), dtype=np.float64)
        best_i = np.empty((len(A), 0), dtype=np.int64)
        for c0 in range(0, K, block_rows):
            B = A if c0 == r0 else np.asarray(Q[c0 : c0 + block_rows], dtype=np.float64)
            D = _sq_dist_block(A, sq[r0 : r0 + len(A)], B, sq[c0 : c0 + len(B)])
            if c0 == r0:  # row and column tiles share boundaries: self is on this diagonal
                np.fill_diagonal(D, np.inf)
            tile_d, tile_i = _smallest_per_row(D, k)
            # Merge the running best with this tile's best, ordered by (distance, index).
            cand_d = np.concatenate([best_d, tile_d], axis=1)
            cand_i = np.concatenate([best_i, tile_i + c0], axis=1)
            order = np.lexsort((cand_i, cand_d), axis=1)[:, :k]
            best_d = np.take_along_axis(cand_d, order, axis=1)
            best_i = np.take_along_axis(cand_i, order, axis=1)
        idx[r0 : r0 + len(A)] = best_i
        dist[r0 : r0 + len(A)] = best_d / N
    return idx, dist


#: Neighbours per model in the graph `coordinates` keeps next to Q: t-SNE's ``3 x 30 + 1``
#: (perplexity 30), more than the tables and reports list, so each of them takes its first
#: columns instead of another pass over all K^2 pairs (about 15 s at K = N = 10,000 on 2 cores).
GRAPH_NEIGHBOURS = 91


@dataclass(frozen=True)
class NeighbourGraph:
    """The nearest models of every model (:func:`nearest_neighbours` of one Q), computed once.

    ``idx``: K x m int64 neighbour rows, nearest first; ``two_kl``: K x m float64 estimated
    2KL (nats per text). Its first k columns are exactly ``nearest_neighbours(Q, k)``.
    """

    idx: np.ndarray
    two_kl: np.ndarray

    @classmethod
    def of(cls, Q: np.ndarray, k: int = GRAPH_NEIGHBOURS) -> NeighbourGraph:
        return cls(*nearest_neighbours(Q, k))

    def save(self, path: Path) -> Path:
        """An uncompressed ``.npz`` (no pickle); the caller's folder is published whole."""
        with open(path, "wb") as f:
            np.savez(f, idx=self.idx, two_kl=self.two_kl)
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> NeighbourGraph:
        with np.load(path, allow_pickle=False) as z:
            return cls(np.asarray(z["idx"], dtype=np.int64), np.asarray(z["two_kl"]))


def nearest(
    Q: np.ndarray, k: int, graph: NeighbourGraph | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_neighbours(Q, k)``, read from ``graph`` (of this Q) when it holds k columns."""
    k = min(k, Q.shape[0] - 1)
    if graph is not None and graph.idx.shape[0] == Q.shape[0] and graph.idx.shape[1] >= k >= 0:
        return graph.idx[:, :k], graph.two_kl[:, :k]
    return nearest_neighbours(Q, k)


def pair_table(
    two_kl_nats_matrix: np.ndarray, model_keys: Sequence[str], mean_bytes_per_text: float
) -> pl.DataFrame:
    """Long table of every pair ``i < j`` from a dense K x K 2KL matrix (nats per text).

    Columns: ``model_a``, ``model_b`` (str), ``two_kl_nats``, ``two_kl_bits_per_byte``
    (float64); K(K-1)/2 rows in row-major order of the upper triangle.
    """
    K = two_kl_nats_matrix.shape[0]
    if two_kl_nats_matrix.shape != (K, K) or len(model_keys) != K:
        raise ValueError("need a K x K matrix and K model keys")
    a, b = np.triu_indices(K, k=1)
    values = np.asarray(two_kl_nats_matrix, dtype=np.float64)[a, b]
    keys = np.asarray(list(model_keys), dtype=object)
    return pl.DataFrame(
        {
            "model_a": pl.Series(keys[a].tolist(), dtype=pl.String),
            "model_b": pl.Series(keys[b].tolist(), dtype=pl.String),
            "two_kl_nats": values,
            "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(values, mean_bytes_per_text),
        }
    )


def neighbour_table(
    idx: np.ndarray,
    two_kl_nats_nn: np.ndarray,
    model_keys: Sequence[str],
    mean_bytes_per_text: float,
) -> pl.DataFrame:
    """Long table of the output of :func:`nearest_neighbours`.

    Columns: ``model``, ``rank`` (1 = nearest, int64), ``neighbour`` (str),
    ``two_kl_nats``, ``two_kl_bits_per_byte`` (float64); K * k rows, by model then rank.
    """
    K, k = idx.shape
    if two_kl_nats_nn.shape != (K, k) or len(model_keys) != K:
        raise ValueError("idx and two_kl_nats_nn must both be K x k, with K model keys")
    keys = np.asarray(list(model_keys), dtype=object)
    values = np.asarray(two_kl_nats_nn, dtype=np.float64).ravel()
    return pl.DataFrame(
        {
            "model": pl.Series(np.repeat(keys, k).tolist(), dtype=pl.String),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int64), K),
            "neighbour": pl.Series(keys[idx.ravel()].tolist(), dtype=pl.String),
            "two_kl_nats": values,
            "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(values, mean_bytes_per_text),
        }
    )
