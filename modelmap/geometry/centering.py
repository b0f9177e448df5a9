"""From raw log-likelihoods L to the double-centred matrix Q: the one fitted centring.

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

:class:`Centring` is the one implementation: it fits the clip value and the column means
once and gives Q for any rows (`coordinates`, the placement of a new model, the benchmark
predictor). :func:`clip_global`, :func:`double_centre` and :func:`double_centre_into` are
the paper's two steps for a whole matrix, done by a :class:`Centring`.

Memory: for K = 100,000 models and N = 10,000 texts, L in float32 is 4 GB. Every pass here
streams row blocks (for example from a ``np.memmap``) and holds one ``block_rows x N``
float64 block plus O(K + N) float64 vectors; the clip value is found exactly without a copy
of L (:func:`streaming_percentile`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelmap.storage import write_atomic

#: Rows read at once when streaming over L (2,048 x 10,000 float64 = 164 MB).
DEFAULT_BLOCK_ROWS = 2048
#: Entries sampled to bracket the percentile before the exact streaming pass.
PERCENTILE_SAMPLE = 200_000
_FORMAT_VERSION = 1


def row_blocks(K: int, block_rows: int):
    """(start, stop) of each block of at most ``block_rows`` rows out of ``K``."""
    for start in range(0, K, block_rows):
        yield start, min(start + block_rows, K)


def streaming_percentile(
    L: np.ndarray,
    percentile: float,
    *,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    sample: int = PERCENTILE_SAMPLE,
    seed: int = 0,
) -> float:
    """``np.percentile(L, percentile)`` (linear interpolation) without a copy of ``L``.

    Exact, not approximate: a uniform sample of ``sample`` entries brackets the two order
    statistics the linear interpolation needs (the sample quantiles at ``p -/+ 6`` standard
    errors of a sample proportion, ``sqrt(p (1 - p) / sample)``); one pass over the rows then
    counts the entries below the bracket and keeps those inside it. If the bracket misses
    (probability below 1e-8 per side) it is widened to the whole range and the pass repeated.

    Memory: one ``block_rows x N`` block plus the bracketed entries, about
    ``12 * sqrt(p (1 - p) / sample) * K * N`` values (0.34% of L with the defaults at p = 2%).

    Args:
        L: K x N array (``np.memmap`` welcome), finite or with ``-inf`` below the percentile.
        percentile: in (0, 100).
    """
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    K, N = L.shape
    n = K * N
    if n == 0:
        raise ValueError("cannot take a percentile of an empty matrix")
    p = percentile / 100.0
    h = (n - 1) * p  # numpy's "linear" method: between order statistics floor(h) and +1
    lo_rank, hi_rank = math.floor(h), min(math.floor(h) + 1, n - 1)

    rng = np.random.default_rng(seed)
    m = min(sample, n)
    flat = np.sort(rng.choice(n, size=m, replace=False) if m == n else rng.integers(0, n, m))
    values = np.sort(np.asarray(L[flat // N, flat % N], dtype=np.float64))
    half_width = 6.0 * math.sqrt(p * (1 - p) / m) + 1.0 / m
    lo0 = values[max(0, math.floor((p - half_width) * m))] if p - half_width > 0 else -np.inf
    hi0 = values[min(m - 1, math.ceil((p + half_width) * m))] if p + half_width < 1 else np.inf

    for lo, hi in ((lo0, hi0), (-np.inf, np.inf)):
        below, kept = 0, []
        for start, stop in row_blocks(K, block_rows):
            block = np.asarray(L[start:stop], dtype=np.float64)
            below += int(np.count_nonzero(block < lo))
            inside = block[(block >= lo) & (block <= hi)]
            kept.append(inside)
        kept_arr = np.sort(np.concatenate(kept)) if kept else np.empty(0)
        if below <= lo_rank and hi_rank < below + len(kept_arr):
            x_lo = kept_arr[lo_rank - below]
            x_hi = kept_arr[hi_rank - below]
            return float(x_lo + (h - lo_rank) * (x_hi - x_lo))
    raise AssertionError("the full-range pass always contains both order statistics")


def _check_matrix(L: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> None:
    """Fail unless ``L`` is a non-empty K x N matrix without NaN (read one block at a time)."""
    if L.ndim != 2 or L.shape[0] == 0 or L.shape[1] == 0:
        raise ValueError(f"L must be a non-empty K x N matrix, got shape {L.shape}")
    for start, stop in row_blocks(L.shape[0], block_rows):
        if np.isnan(np.asarray(L[start:stop])).any():
            raise ValueError(f"L contains NaN (rows {start}..{stop - 1}); re-score those models")


def global_clip_value(
    L: np.ndarray, percentile: float | None, *, block_rows: int = DEFAULT_BLOCK_ROWS
) -> float:
    """The clip value of ``L`` (K x N, nats): its global ``percentile``-th percentile.

    ``-inf`` (nothing clipped, ``L`` not read) for ``percentile`` None or 0. The percentile
    is taken over all K*N entries with numpy's linear interpolation, exactly
    (:func:`streaming_percentile`); ``-inf`` entries are allowed as long as the percentile
    itself is finite. Fails on NaN.
    """
    if percentile is None or percentile == 0:
        return -math.inf
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    _check_matrix(L, block_rows)
    value = streaming_percentile(L, percentile, block_rows=block_rows)
    if not math.isfinite(value):
        raise ValueError(f"the {percentile}th percentile of L is {value}, not finite")
    return value


@dataclass
class Centring:
    """Clip value and column means of L, fitted once per full refresh; Q for any rows.

    ``transform(L) = max(L, clip_value) - row_mean - col_means`` (nats), so that
    ``transform`` of the training L is the paper's double-centred Q. A model scored after
    the fit is centred with the same frozen values: its distances to the mapped models are
    exact (the column means cancel), and only the map's own column means go stale until
    the next full refresh.

    Attributes:
        percentile: the clipping percentile (paper: 2), or None for no clipping.
        clip_value: the percentile of the training L in nats (``-inf`` without clipping).
        col_means: (N,) float64 column means of the clipped, row-centred training L.
        n_models: K of the fit.
    """

    percentile: float | None = 2.0
    clip_value: float = -math.inf
    col_means: np.ndarray | None = None
    n_models: int = 0

    def fit(
        self,
        L: np.ndarray,
        block_rows: int = DEFAULT_BLOCK_ROWS,
        clip_value: float | None = None,
    ) -> Centring:
        """Clip value (exact, streamed) and column means from the K x N training L.

        ``clip_value``: use this frozen clip value instead of taking the percentile.
        """
        if clip_value is None and self.percentile:
            self.clip_value = global_clip_value(L, self.percentile, block_rows=block_rows)
        else:
            _check_matrix(L, block_rows)
            self.clip_value = -math.inf if clip_value is None else float(clip_value)
        K, N = L.shape
        col_sums = np.zeros(N, dtype=np.float64)
        for start, stop in row_blocks(K, block_rows):
            col_sums += self._clip_rowcentre(L[start:stop]).sum(axis=0)
        self.col_means = col_sums / K
        self.n_models = K
        return self

    def _clip_rowcentre(self, rows: np.ndarray) -> np.ndarray:
        X = np.maximum(np.asarray(rows, dtype=np.float64), self.clip_value)
        X -= X.mean(axis=1, keepdims=True)
        return X

    @property
    def n_texts(self) -> int:
        self._check_fitted()
        return len(self.col_means)

    def _check_fitted(self) -> None:
        if self.col_means is None:
            raise ValueError("Centring is not fitted: call fit(L) first")

    def clip(self, rows: np.ndarray) -> np.ndarray:
        """``max(rows, clip_value)`` as float64 (m x N)."""
        return np.maximum(np.asarray(rows, dtype=np.float64), self.clip_value)

    def transform(self, L: np.ndarray) -> np.ndarray:
        """m x N (or N) raw log-likelihoods (nats) -> their rows of Q, float64."""
        self._check_fitted()
        X = np.asarray(L, dtype=np.float64)
        single = X.ndim == 1
        X = np.atleast_2d(X)
        if X.shape[1] != self.n_texts:
            raise ValueError(f"rows have {X.shape[1]} texts, the centring has {self.n_texts}")
        Q = self._clip_rowcentre(X) - self.col_means
        return Q[0] if single else Q

    def transform_into(
        self,
        L: np.ndarray,
        Q_out: np.ndarray,
        clipped_out: np.ndarray | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> np.ndarray:
        """Write Q (and optionally the clipped L) for every row of L, block by block."""
        self._check_fitted()
        for start, stop in row_blocks(L.shape[0], block_rows):
            rows = self.clip(L[start:stop])
            if clipped_out is not None:
                clipped_out[start:stop] = rows
            rows -= rows.mean(axis=1, keepdims=True)
            rows -= self.col_means
            Q_out[start:stop] = rows
        return Q_out

    def save(self, path: str | Path) -> Path:
        """One ``.npz`` (no pickle), written atomically."""
        self._check_fitted()
        arrays = {
            "format_version": np.array(_FORMAT_VERSION),
            "percentile": np.array(np.nan if self.percentile is None else self.percentile),
            "clip_value": np.array(self.clip_value),
            "col_means": self.col_means,
            "n_models": np.array(self.n_models),
        }

        def _write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        return write_atomic(Path(path), _write)

    @classmethod
    def load(cls, path: str | Path) -> Centring:
        with np.load(Path(path), allow_pickle=False) as z:
            if int(z["format_version"]) != _FORMAT_VERSION:
                raise ValueError(f"{path}: unsupported centring format {int(z['format_version'])}")
            pct = float(z["percentile"])
            return cls(
                percentile=None if math.isnan(pct) else pct,
                clip_value=float(z["clip_value"]),
                col_means=np.asarray(z["col_means"], dtype=np.float64),
                n_models=int(z["n_models"]),
            )


def _out_dtype(L: np.ndarray) -> np.dtype:
    """float32 stays float32 (memory); every other input gives float64."""
    return np.dtype(np.float32) if L.dtype == np.float32 else np.dtype(np.float64)


def clip_global(L: np.ndarray, percentile: float | None = 2.0) -> tuple[np.ndarray, float]:
    """Raise every value of ``L`` below its global ``percentile``-th percentile to that value.

    Args:
        L: K x N log-likelihoods in nats (float32 or float64). Must not contain NaN;
            ``-inf`` entries are allowed as long as the percentile itself is finite (they are
            then clipped, which is exactly what clipping is for).
        percentile: in [0, 100); the paper uses 2. The value is :func:`global_clip_value`'s,
            the clip value a :class:`Centring` fits.

    Returns:
        ``(L_clipped, threshold_nats)``. ``L_clipped`` is a new array with the dtype of ``L``
        (``np.maximum(L, threshold)``); ``threshold_nats`` is the percentile in that dtype
        (for a float32 ``L``, rounded to the nearest float32: the value applied). With
        ``percentile`` None or 0 nothing is clipped: ``L`` itself is returned (not a copy)
        with threshold ``-inf``.
    """
    value = global_clip_value(L, percentile)
    if value == -math.inf:
        return L, value
    # In L's dtype, so that a float32 L stays float32 and the threshold is the value applied.
    threshold = L.dtype.type(value)
    return np.maximum(L, threshold), float(threshold)


def double_centre_into(
    L: np.ndarray, out: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS
) -> np.ndarray:
    """Write the double-centred ``Q`` of ``L`` into ``out``, one block of rows at a time.

    ``Q[i, s] = L[i, s] - mean_s' L[i, s'] - mean_i' (L[i', s] - mean_s' L[i', s'])``,
    all in nats: a :class:`Centring` without clipping, fitted on ``L`` (one pass for the
    column means, accumulated in float64) and applied to ``L`` (a second pass writes Q).

    Args:
        L: K x N log-likelihoods in nats, without NaN; any array supporting row slicing,
            e.g. a read-only ``np.memmap`` of float32.
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
    if L.shape[0] == 0 or L.shape[1] == 0:
        return out
    centring = Centring(percentile=None).fit(L, block_rows=block_rows)
    return centring.transform_into(L, out, block_rows=block_rows)


def double_centre(L: np.ndarray, block_rows: int = DEFAULT_BLOCK_ROWS) -> np.ndarray:
    """Double-centred ``Q`` (K x N, nats) of ``L`` (K x N, nats), in a new in-memory array.

    Row means (model strength) then column means over models (text difficulty) are removed,
    accumulating in float64; the result is float32 when ``L`` is float32, else float64.
    See :func:`double_centre_into` for the formula and for out-of-core use.
    """
    L = np.asarray(L)  # a view, not a copy, for np.memmap
    out = np.empty(L.shape, dtype=_out_dtype(L))
    return double_centre_into(L, out, block_rows=block_rows)
