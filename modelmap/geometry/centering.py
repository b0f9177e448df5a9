"""From raw log-likelihoods L to the double-centred matrix Q.

Oyama et al., *Mapping 1,000+ Language Models via the Log-Likelihood Vector* (ACL 2025,
arXiv 2502.16173), section 3:

1. ``L`` is the K x N matrix of text log-likelihoods ``l_i(x_s)`` in nats (K models, N texts).
2. Global clipping: every entry below the 2nd percentile of *all* K*N entries is raised to
   it, so that a few catastrophic texts (a model that breaks on one text) do not dominate
   the squared distances.
3. Double centring: ``Q = L - row_mean - col_mean(L - row_mean)``. Removing the row mean
   removes the overall strength of a model (its mean log-likelihood); removing the column
   mean over models then removes the difficulty of each text. Every row and every column of
   Q sums to zero.

Memory: for K = 100,000 models and N = 10,000 texts, L in float32 is 4 GB.
:func:`double_centre_into` streams row blocks (for example from a ``np.memmap``) and only ever
holds one ``block_rows x N`` float64 block plus O(K + N) float64 vectors.
"""

from __future__ import annotations

import numpy as np

#: Rows processed at once by :func:`double_centre_into`: 2,048 x 10,000 float64 = 164 MB.
DEFAULT_BLOCK_ROWS = 2048


def clip_global(L: np.ndarray, percentile: float | None = 2.0) -> tuple[np.ndarray, float]:
    """Raise every value of ``L`` below its global ``percentile``-th percentile to that value.

    Args:
        L: K x N log-likelihoods in nats (float32 or float64). Must not contain NaN;
            ``-inf`` entries are allowed as long as the percentile itself is finite (they are
            then clipped, which is exactly what clipping is for).
        percentile: in [0, 100). The percentile is taken over all K*N entries with numpy's
            default linear interpolation (``np.percentile(L, percentile)``); the paper uses 2.

    Returns:
        ``(L_clipped, threshold_nats)``. ``L_clipped`` is a new array with the dtype of ``L``
        (``np.maximum(L, threshold)``). With ``percentile`` None or 0 nothing is clipped:
        ``L`` itself is returned (not a copy) with threshold ``-inf``.

    Note: ``np.percentile`` partitions a flattened copy, so a 4 GB memmap needs 4 GB of RAM
    here.
    """
    if percentile is None or percentile == 0:
        return L, float("-inf")
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    if L.size == 0:
        raise ValueError("cannot clip an empty matrix")
    if np.isnan(L).any():
        raise ValueError("L contains NaN; drop or re-score those texts before clipping")
    threshold = float(np.percentile(L, percentile))
    if not np.isfinite(threshold):
        raise ValueError(f"the {percentile}th percentile of L is {threshold}, not finite")
    # Cast the threshold to L's dtype so a float32 L stays float32.
    return np.maximum(L, L.dtype.type(threshold)), threshold


def _out_dtype(L: np.ndarray) -> np.dtype:
    """float32 stays float32 (memory); every other input gives float64."""
    return np.dtype(np.float32) if L.dtype == np.float32 else np.dtype(np.float64)


def double_centre_into(
    L: np.ndarray, out: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS
) -> np.ndarray:
    """Write the double-centred ``Q`` of ``L`` into ``out``, one block of rows at a time.

    ``Q[i, s] = L[i, s] - mean_s' L[i, s'] - mean_i' (L[i', s] - mean_s' L[i', s'])``,
    all in nats. The second mean equals ``colmean(L)[s] - mean(row means)``, so a single
    pass over L gives the row means and the column sums (accumulated in float64), and a
    second pass writes Q.

    Args:
        L: K x N log-likelihoods in nats; any array supporting row slicing, e.g. a
            read-only ``np.memmap`` of float32.
        out: K x N float array (float32 or float64) to receive Q, e.g. a writable
            ``np.memmap``. May be ``L`` itself (in-place): each block is read before it is
            overwritten.
        block_rows: rows per block; only ``block_rows x N`` float64 values are held at once.

    Returns:
        ``out``.
    """
    if L.ndim != 2:
        raise ValueError(f"L must be K x N, got shape {L.shape}")
    if out.shape != L.shape:
        raise ValueError(f"out has shape {out.shape}, L has {L.shape}")
    if block_rows < 1:
        raise ValueError("block_rows must be >= 1")
    K, N = L.shape
    if K == 0 or N == 0:
        return out

    row_means = np.empty(K, dtype=np.float64)
    col_sums = np.zeros(N, dtype=np.float64)
    for start in range(0, K, block_rows):
        block = np.asarray(L[start : start + block_rows], dtype=np.float64)
        row_means[start : start + len(block)] = block.mean(axis=1)
        col_sums += block.sum(axis=0)
    # Column means of the row-centred matrix (text difficulty after removing model strength).
    col_means = col_sums / K - row_means.mean()

    for start in range(0, K, block_rows):
        # np.array copies: np.asarray would hand back a view of a float64 L and the in-place
        # subtractions below would then overwrite the caller's L.
        block = np.array(L[start : start + block_rows], dtype=np.float64)
        stop = start + len(block)
        block -= row_means[start:stop, None]
        block -= col_means[None, :]
        out[start:stop] = block
    return out


def double_centre(L: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Double-centred ``Q`` (K x N, nats) of ``L`` (K x N, nats), in a new in-memory array.

    Row means (model strength) then column means over models (text difficulty) are removed,
    accumulating in float64; the result is float32 when ``L`` is float32, else float64.
    See :func:`double_centre_into` for the formula and for out-of-core use.
    """
    L = np.asarray(L)  # a view, not a copy, for np.memmap
    out = np.empty(L.shape, dtype=_out_dtype(L))
    return double_centre_into(L, out, block_rows=block_rows)
