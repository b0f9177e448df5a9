"""Placing new rows with a frozen centring, against plain numpy."""

import numpy as np
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.geometry.kl import two_kl_nats
from modelmap.geometry.placement import Centring, nearest_of_rows, two_kl_to_rows


def _family_L(K: int, N: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    families = rng.normal(0, 3, size=(4, N))
    strength = rng.normal(-300, 20, size=(K, 1))
    L = strength + families[np.arange(K) % 4] + rng.normal(0, 1, size=(K, N))
    L[rng.integers(0, K, 5), rng.integers(0, N, 5)] -= 500  # catastrophic texts to clip
    return L.astype(np.float32)


def test_new_row_distances_equal_the_refit_matrix():
    # 2KL from a new model to the mapped ones does not depend on the column means: placing
    # it with the frozen centring equals refitting Q with it (same clip value).
    L = _family_L(25, 60)
    new = _family_L(3, 60, seed=1)
    c = Centring(percentile=2.0).fit(L)
    Q = c.transform(L)
    d = two_kl_to_rows(Q, c.transform(new), block_rows=4)
    both = np.vstack([L, new]).astype(np.float64)
    full = two_kl_nats(double_centre(np.maximum(both, c.clip_value)))
    np.testing.assert_allclose(d, full[25:, :25], rtol=1e-9, atol=1e-9)


def test_subset_rows_with_weights_are_a_weighted_variance():
    L = _family_L(12, 50)
    new = _family_L(1, 50, seed=2)[0]
    c = Centring(percentile=2.0).fit(L)
    Q = c.transform(L)
    cols = np.array([1, 4, 9, 10, 20, 33, 41])
    w = np.array([1.0, 2.0, 0.5, 1.0, 3.0, 1.0, 1.0])
    q_sub = c.clip(new[cols]) - c.col_means[cols]
    got = two_kl_to_rows(Q, q_sub, columns=cols, weights=w)[0]
    # Reference: weighted variance of the clipped log-likelihood difference on those texts.
    Lc = c.clip(L)
    for j in range(12):
        diff = c.clip(new)[cols] - Lc[j, cols]
        mean = np.average(diff, weights=w)
        assert got[j] == pytest.approx(np.average((diff - mean) ** 2, weights=w), rel=1e-9)
    # Every text, equal weights: the full-row value.
    full = two_kl_to_rows(Q, c.transform(new))[0]
    every = two_kl_to_rows(Q, c.clip(new) - c.col_means, columns=np.arange(50))[0]
    np.testing.assert_allclose(every, full, rtol=1e-9, atol=1e-12)


def test_nearest_of_rows_orders_by_value_then_index():
    d = np.array([[3.0, 1.0, 1.0, 0.5, 9.0]])
    idx, val = nearest_of_rows(d, 3)
    np.testing.assert_array_equal(idx, [[3, 1, 2]])
    np.testing.assert_array_equal(val, [[0.5, 1.0, 1.0]])
