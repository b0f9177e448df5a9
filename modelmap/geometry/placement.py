"""The fitted centring of L, and placing a new model's row without rebuilding Q.

Oyama et al. (ACL 2025, arXiv 2502.16173), section 3, and :mod:`modelmap.geometry.centering`:
``Q = max(L, c) - row_mean - col_mean``. Two facts make a new model cheap to place:

* ``2 KL(p_i, p_j) ~= ||q_i - q_j||^2 / N`` does not depend on the column means (they
  cancel in ``q_i - q_j``), only on each row's clipping and mean. With the clip value ``c``
  frozen per corpus, a new row's distances to every mapped model need only the existing
  ``Q`` and the fitted column means: one pass over Q, no K x K matrix.
* The clip value is one number for the whole corpus; :func:`streaming_percentile` finds it
  exactly, equal to ``np.percentile(L, p)``, holding one block of rows and a small bracket
  of values around the percentile, never a copy of L.

:class:`Centring` is the one fitted transform (clip value + column means) used by the
`coordinates` asset, by :func:`place_rows` and by the benchmark-score predictor.
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


def _blocks(K: int, block_rows: int):
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
        for start, stop in _blocks(K, block_rows):
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
        if L.ndim != 2 or L.shape[0] == 0 or L.shape[1] == 0:
            raise ValueError(f"L must be a non-empty K x N matrix, got shape {L.shape}")
        K, N = L.shape
        for start, stop in _blocks(K, block_rows):
            if np.isnan(np.asarray(L[start:stop])).any():
                raise ValueError(
                    f"L contains NaN (rows {start}..{stop - 1}); re-score those models"
                )
        if clip_value is not None:
            self.clip_value = float(clip_value)
        elif self.percentile is None or self.percentile == 0:
            self.clip_value = -math.inf
        else:
            self.clip_value = streaming_percentile(L, self.percentile, block_rows=block_rows)
            if not math.isfinite(self.clip_value):
                raise ValueError(f"the {self.percentile}th percentile of L is not finite")
        col_sums = np.zeros(N, dtype=np.float64)
        for start, stop in _blocks(K, block_rows):
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
        for start, stop in _blocks(L.shape[0], block_rows):
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
    for start, stop in _blocks(K, block_rows):
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
