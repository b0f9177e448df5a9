"""Placing a new model's row without rebuilding Q.

Oyama et al. (ACL 2025, arXiv 2502.16173), section 3: ``2 KL(p_i, p_j) ~= ||q_i - q_j||^2 / N``
does not depend on the column means of Q (they cancel in ``q_i - q_j``), only on each row's
clipping and mean. With the clip value frozen per corpus (the fitted
:class:`modelmap.geometry.centering.Centring`, importable from here too), a new row's
distances to every mapped model need only the existing ``Q`` and the fitted column means:
one pass over Q, no K x K matrix.
"""

from __future__ import annotations

import numpy as np

from modelmap.geometry.centering import Centring, row_blocks

__all__ = ["Centring", "nearest_of_rows", "two_kl_to_rows"]


def two_kl_to_rows(
    Q: np.ndarray,
    q_new: np.ndarray,
    *,
    columns: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    block_rows: int = 4096,
) -> np.ndarray:
    """Estimated ``2 KL`` (nats per text) from each of m new rows to each of K mapped models.

    Full rows (``columns`` None): ``||q_new - q_j||^2 / N``, exactly the value
    :func:`modelmap.geometry.kl.two_kl_nats` gives for a pair inside Q.

    A row scored on a subset of the texts (a text budget): ``columns`` (n,) are the indices
    of its texts in Q's columns and ``weights`` (n,) their importance weights (default 1).
    The estimate is then the weighted variance of ``q_new - q_j`` over those texts,
    ``sum_s w_s (d_s - dbar_w)^2 / sum_s w_s`` with ``d = q_new - q_j`` restricted to them;
    with every text and equal weights it equals the full-row value up to rounding (both
    rows of Q are centred). ``q_new`` is then the row over those n texts only, centred with
    the frozen column means of those texts (``Centring.col_means[columns]``), its own row
    mean removed or not (the weighted centring removes it).

    Args:
        Q: K x N double-centred matrix (``np.memmap`` welcome), nats.
        q_new: m x N (or m x n with ``columns``) new rows, nats.

    Returns:
        m x K float64, clamped at 0.
    """
    q_new = np.atleast_2d(np.asarray(q_new, dtype=np.float64))
    K, N = Q.shape
    if columns is None:
        if q_new.shape[1] != N:
            raise ValueError(f"new rows have {q_new.shape[1]} texts, Q has {N}")
        w = None
    else:
        columns = np.asarray(columns, dtype=np.int64)
        if q_new.shape[1] != len(columns):
            raise ValueError(f"new rows have {q_new.shape[1]} values for {len(columns)} texts")
        w = np.ones(len(columns)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(columns),) or not np.all(w >= 0) or w.sum() <= 0:
            raise ValueError("weights must be one non-negative value per text, not all 0")
        w = w / w.sum()
        q_new = q_new - (q_new @ w)[:, None]
    out = np.empty((len(q_new), K), dtype=np.float64)
    if w is None:
        sq_new = np.einsum("ij,ij->i", q_new, q_new)
    else:
        sq_new = (q_new**2) @ w
    for start, stop in row_blocks(K, block_rows):
        B = np.asarray(Q[start:stop], dtype=np.float64)
        if w is None:
            d = sq_new[:, None] + np.einsum("ij,ij->i", B, B)[None, :] - 2.0 * (q_new @ B.T)
            d /= N
        else:
            B = B[:, columns]
            B -= (B @ w)[:, None]
            d = sq_new[:, None] + ((B**2) @ w)[None, :] - 2.0 * (q_new @ (B * w).T)
        out[:, start:stop] = np.maximum(d, 0.0)
    return out


def nearest_of_rows(two_kl: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(m x k indices, m x k 2KL) of the k smallest entries per row, ties to the lower index."""
    k = min(k, two_kl.shape[1])
    part = np.argpartition(two_kl, k - 1, axis=1)[:, :k] if k else np.empty((len(two_kl), 0), int)
    d = np.take_along_axis(two_kl, part, axis=1)
    order = np.lexsort((part, d), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(d, order, axis=1)
