"""Clipping and double centring (the fitted `Centring`) against values worked out by hand and
against a plain numpy reference of the paper's formula."""

import numpy as np
import pytest

from modelmap.geometry.centering import (
    Centring,
    clip_global,
    double_centre,
    double_centre_into,
    streaming_percentile,
)

# 3 models x 4 texts, log-likelihoods in nats.
L_HAND = np.array(
    [
        [-10.0, -20.0, -30.0, -40.0],
        [-15.0, -18.0, -33.0, -30.0],
        [-9.0, -29.0, -34.0, -48.0],
    ]
)
# Row means (model strength): -100/4, -96/4, -120/4.
ROW_MEANS = np.array([-25.0, -24.0, -30.0])
# L minus its row means.
ROW_CENTRED = np.array(
    [
        [15.0, 5.0, -5.0, -15.0],
        [9.0, 6.0, -9.0, -6.0],
        [21.0, 1.0, -4.0, -18.0],
    ]
)
# Column means of ROW_CENTRED (text difficulty): 45/3, 12/3, -18/3, -39/3.
COL_MEANS = np.array([15.0, 4.0, -6.0, -13.0])
Q_HAND = np.array(
    [
        [0.0, 1.0, 1.0, -2.0],
        [-6.0, 2.0, -3.0, 7.0],
        [6.0, -3.0, 2.0, -5.0],
    ]
)


def test_hand_worked_intermediates_are_consistent():
    np.testing.assert_array_equal(L_HAND.mean(axis=1), ROW_MEANS)
    np.testing.assert_array_equal(L_HAND - ROW_MEANS[:, None], ROW_CENTRED)
    np.testing.assert_array_equal(ROW_CENTRED.mean(axis=0), COL_MEANS)
    np.testing.assert_array_equal(ROW_CENTRED - COL_MEANS, Q_HAND)


def test_double_centre_hand_example():
    Q = double_centre(L_HAND)
    assert Q.dtype == np.float64
    np.testing.assert_allclose(Q, Q_HAND, atol=1e-12)
    np.testing.assert_allclose(Q.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Q.sum(axis=1), 0.0, atol=1e-12)


def test_double_centre_keeps_float32():
    Q = double_centre(L_HAND.astype(np.float32))
    assert Q.dtype == np.float32
    np.testing.assert_allclose(Q, Q_HAND, atol=1e-5)


def test_double_centre_does_not_modify_input():
    L = L_HAND.copy()
    double_centre(L)
    np.testing.assert_array_equal(L, L_HAND)


@pytest.mark.parametrize("block_rows", [1, 7, 13, 49, 50, 1000])
def test_blockwise_equals_dense(block_rows):
    rng = np.random.default_rng(0)
    L = rng.normal(-300.0, 40.0, size=(50, 30)) + rng.normal(0, 20, size=(50, 1))
    dense = L - L.mean(axis=1, keepdims=True)
    dense -= dense.mean(axis=0, keepdims=True)
    out = np.empty_like(L)
    double_centre_into(L, out, block_rows=block_rows)
    np.testing.assert_allclose(out, dense, atol=1e-10)
    np.testing.assert_allclose(out.sum(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(out.sum(axis=1), 0.0, atol=1e-9)


def test_in_place():
    L = L_HAND.copy()
    double_centre_into(L, L, block_rows=2)
    np.testing.assert_allclose(L, Q_HAND, atol=1e-12)


def test_memmap_in_and_out(tmp_path):
    rng = np.random.default_rng(1)
    L = rng.normal(-300.0, 40.0, size=(50, 30)).astype(np.float32)
    src = np.memmap(tmp_path / "L.f32", dtype=np.float32, mode="w+", shape=L.shape)
    src[:] = L
    src.flush()
    src = np.memmap(tmp_path / "L.f32", dtype=np.float32, mode="r", shape=L.shape)
    out = np.memmap(tmp_path / "Q.f32", dtype=np.float32, mode="w+", shape=L.shape)
    double_centre_into(src, out, block_rows=7)
    out.flush()
    Q = np.memmap(tmp_path / "Q.f32", dtype=np.float32, mode="r", shape=L.shape)
    np.testing.assert_allclose(Q, double_centre(L.astype(np.float64)), atol=1e-4)
    np.testing.assert_allclose(double_centre(src), Q, atol=1e-6)


def test_clip_second_percentile_hand_example():
    # Sorted: -100, -8, -7, -6, -5, -4, -3, -2, -1, 0. numpy's linear interpolation puts
    # the 2nd percentile at position 0.02 * (10 - 1) = 0.18: -100 + 0.18 * (-8 - -100)
    # = -100 + 16.56 = -83.44. Only the -100 changes.
    L = np.array([[-100.0, -3.0, -2.0, -1.0, 0.0], [-4.0, -5.0, -6.0, -7.0, -8.0]])
    clipped, threshold = clip_global(L)
    assert threshold == pytest.approx(-83.44)
    expected = L.copy()
    expected[0, 0] = -83.44
    np.testing.assert_allclose(clipped, expected)
    assert L[0, 0] == -100.0  # input untouched


def test_clip_twentieth_percentile_changes_two_values():
    # Position 0.2 * 9 = 1.8: -8 + 0.8 * (-7 - -8) = -7.2; -100 and -8 are raised.
    L = np.array([[-100.0, -3.0, -2.0, -1.0, 0.0], [-4.0, -5.0, -6.0, -7.0, -8.0]])
    clipped, threshold = clip_global(L, percentile=20.0)
    assert threshold == pytest.approx(-7.2)
    assert clipped[0, 0] == pytest.approx(-7.2)
    assert clipped[1, 4] == pytest.approx(-7.2)
    np.testing.assert_array_equal(np.delete(clipped.ravel(), [0, 9]), np.delete(L.ravel(), [0, 9]))


def test_clip_keeps_float32_and_handles_minus_inf():
    L = np.array([[-np.inf] + [-1.0] * 99], dtype=np.float32)
    clipped, threshold = clip_global(L)
    assert clipped.dtype == np.float32
    assert threshold == -1.0
    assert np.all(clipped == -1.0)


@pytest.mark.parametrize("percentile", [None, 0, 0.0])
def test_no_clipping(percentile):
    clipped, threshold = clip_global(L_HAND, percentile)
    assert clipped is L_HAND
    assert threshold == -np.inf


def test_clip_rejects_nan():
    with pytest.raises(ValueError):
        clip_global(np.array([[np.nan, 1.0]]))


def _family_L(K: int, N: int, seed: int = 0) -> np.ndarray:
    """Float32 log-likelihoods (nats) of K models in 4 families on N texts, a few of them
    catastrophic (to be clipped)."""
    rng = np.random.default_rng(seed)
    families = rng.normal(0, 3, size=(4, N))
    strength = rng.normal(-300, 20, size=(K, 1))
    L = strength + families[np.arange(K) % 4] + rng.normal(0, 1, size=(K, N))
    L[rng.integers(0, K, 5), rng.integers(0, N, 5)] -= 500
    return L.astype(np.float32)


@pytest.mark.parametrize("percentile", [0.01, 2.0, 50.0, 99.9])
@pytest.mark.parametrize("block_rows", [1, 7, 1000])
def test_streaming_percentile_equals_numpy(percentile, block_rows):
    L = _family_L(37, 53)
    got = streaming_percentile(L, percentile, block_rows=block_rows, sample=500)
    # Interpolated in float64 (numpy interpolates a float32 L in float32).
    expected = float(np.percentile(L.astype(np.float64), percentile))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-9)


def test_streaming_percentile_recovers_from_a_bracket_that_misses():
    # A sample of 1 entry cannot bracket anything: the full-range pass still gives the answer.
    L = _family_L(20, 30)
    assert streaming_percentile(L, 2.0, sample=1) == pytest.approx(np.percentile(L, 2.0))


def _reference_Q(L: np.ndarray, percentile: float | None) -> tuple[np.ndarray, float]:
    """The paper's Q in plain numpy, dense and in float64: clip at the global percentile,
    subtract row means, then column means."""
    X = np.asarray(L, dtype=np.float64)
    threshold = -np.inf if percentile is None else float(np.percentile(X, percentile))
    X = np.maximum(X, threshold)
    X = X - X.mean(axis=1, keepdims=True)
    return X - X.mean(axis=0, keepdims=True), threshold


@pytest.mark.parametrize("percentile", [None, 2.0, 20.0])
@pytest.mark.parametrize("seed", range(5))
def test_centring_equals_the_reference_on_random_matrices(percentile, seed):
    rng = np.random.default_rng(seed)
    K, N = rng.integers(2, 60), rng.integers(2, 200)
    L = _family_L(K, N, seed=seed)
    Q_ref, threshold = _reference_Q(L, percentile)
    c = Centring(percentile=percentile).fit(L, block_rows=int(rng.integers(1, 20)))
    assert c.clip_value == pytest.approx(threshold, rel=1e-12)
    np.testing.assert_allclose(c.transform(L), Q_ref, atol=1e-9)
    Q = np.empty(L.shape, np.float32)
    clipped = np.empty(L.shape, np.float32)
    c.transform_into(L, Q, clipped, block_rows=3)
    np.testing.assert_allclose(Q, Q_ref, atol=1e-3)
    np.testing.assert_allclose(clipped, np.maximum(L.astype(np.float64), threshold), rtol=1e-6)
    # The paper's two steps for a whole matrix: the same clip value and Q.
    L_clipped, t = clip_global(L.astype(np.float64), percentile)
    assert t == c.clip_value
    np.testing.assert_allclose(double_centre(L_clipped), Q_ref, atol=1e-9)


def test_centring_save_load(tmp_path):
    c = Centring(percentile=2.0).fit(_family_L(10, 12))
    back = Centring.load(c.save(tmp_path / "centring.npz"))
    assert back.clip_value == c.clip_value and back.n_models == 10
    np.testing.assert_array_equal(back.col_means, c.col_means)
    none = Centring(percentile=None).fit(_family_L(10, 12))
    assert Centring.load(none.save(tmp_path / "n.npz")).percentile is None


def test_unfitted_and_bad_rows_fail_clearly():
    with pytest.raises(ValueError, match="not fitted"):
        Centring().transform(np.zeros((1, 3)))
    c = Centring().fit(_family_L(5, 6))
    with pytest.raises(ValueError, match="6"):
        c.transform(np.zeros((1, 4)))
    bad = _family_L(5, 6)
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Centring().fit(bad)
