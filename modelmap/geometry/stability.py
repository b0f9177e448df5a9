"""How much a map moves when models are added, and how well it keeps neighbourhoods.

The two figures of the `stability` entry of ``benchmarks/scale.json``:

* ``displacement_frac``: the median distance an existing model moves between the previous
  map and the new one (after Procrustes alignment), divided by the 95th percentile of the
  pairwise distances on the previous map (a robust diameter).
* ``knn_preservation``: the mean fraction of each model's k nearest models by 2KL (rows of
  Q) that are also among its k nearest points on the map; the gap between a fresh
  embedding's value and a stable one's says what stability costs in faithfulness.
"""

from __future__ import annotations

import numpy as np

#: Pairs sampled for the 95th percentile of map distances above this many points.
MAX_PAIRS = 2_000_000


def pairwise_percentile(xy: np.ndarray, q: float = 95.0, seed: int = 0) -> float:
    """The ``q``-th percentile of the distances between points of ``xy`` (K x 2).

    Exact up to 2,000 points; above, over 2,000,000 pairs drawn uniformly (the sample
    quantile's rank is then within 0.2 percentage points with probability > 1 - 1e-6, by the
    Dvoretzky-Kiefer-Wolfowitz inequality).
    """
    xy = np.asarray(xy, dtype=np.float64)
    K = len(xy)
    if K < 2:
        raise ValueError("need at least 2 points")
    if K * (K - 1) // 2 <= MAX_PAIRS:
        a, b = np.triu_indices(K, k=1)
    else:
        rng = np.random.default_rng(seed)
        a, b = rng.integers(0, K, MAX_PAIRS), rng.integers(0, K, MAX_PAIRS)
        keep = a != b
        a, b = a[keep], b[keep]
    return float(np.percentile(np.linalg.norm(xy[a] - xy[b], axis=1), q))


def displacement_frac(before: np.ndarray, after: np.ndarray) -> float:
    """Median ``||after_i - before_i||`` over ``pairwise_percentile(before, 95)`` (m x 2 each)."""
    before = np.asarray(before, dtype=np.float64)
    after = np.asarray(after, dtype=np.float64)
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {before.shape} and {after.shape}")
    moved = np.linalg.norm(after - before, axis=1)
    return float(np.median(moved) / pairwise_percentile(before, 95.0))


def knn_preservation(high_nn: np.ndarray, xy: np.ndarray) -> float:
    """Mean fraction of each point's k nearest neighbours (``high_nn``, K x k indices, e.g.
    by 2KL from ``kl.nearest_neighbours``) that are among its k nearest points on ``xy``."""
    from scipy.spatial import cKDTree

    high_nn = np.asarray(high_nn)
    K, k = high_nn.shape
    _, map_nn = cKDTree(np.asarray(xy, dtype=np.float64)).query(xy, k=k + 1)
    hits = 0
    for i in range(K):
        mine = map_nn[i][map_nn[i] != i][:k]
        hits += len(np.intersect1d(mine, high_nn[i], assume_unique=True))
    return hits / (K * k)
