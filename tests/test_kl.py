"""2KL estimates, unit conversion, neighbours and tables against hand-worked values."""

import math

import numpy as np
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.geometry.kl import (
    nats_per_text_to_bits_per_byte,
    nearest_neighbours,
    neighbour_table,
    pair_table,
    two_kl_nats,
)

# 3 models x 2 texts; rows and columns sum to zero.
Q_3x2 = np.array([[3.0, -3.0], [-1.0, 1.0], [-2.0, 2.0]])
# ||q0 - q1||^2 / N = (4^2 + 4^2) / 2 = 16; ||q0 - q2||^2 / 2 = (25 + 25) / 2 = 25;
# ||q1 - q2||^2 / 2 = (1 + 1) / 2 = 1.
TWO_KL_3x2 = np.array([[0.0, 16.0, 25.0], [16.0, 0.0, 1.0], [25.0, 1.0, 0.0]])


def test_two_kl_hand_example():
    D = two_kl_nats(Q_3x2)
    np.testing.assert_allclose(D, TWO_KL_3x2, atol=1e-12)
    assert np.all(np.diag(D) == 0.0)
    np.testing.assert_array_equal(D, D.T)


def test_two_kl_of_the_3x4_centring_example():
    # Q from tests/test_centering.py; differences q0-q1 = (6,-1,4,-9) -> 134/4 = 33.5,
    # q0-q2 = (-6,4,-1,3) -> 62/4 = 15.5, q1-q2 = (-12,5,-5,12) -> 338/4 = 84.5.
    Q = np.array([[0.0, 1.0, 1.0, -2.0], [-6.0, 2.0, -3.0, 7.0], [6.0, -3.0, 2.0, -5.0]])
    D = two_kl_nats(Q.astype(np.float32))
    assert D.dtype == np.float64
    np.testing.assert_allclose(D[0, 1], 33.5)
    np.testing.assert_allclose(D[0, 2], 15.5)
    np.testing.assert_allclose(D[1, 2], 84.5)


def test_two_kl_is_variance_of_loglik_difference():
    # The theory: ||q_i - q_j||^2 / N equals the (population) variance over texts of
    # l_i - l_j, because double centring removes exactly the per-model mean.
    rng = np.random.default_rng(3)
    L = rng.normal(-200, 30, size=(6, 40))
    D = two_kl_nats(double_centre(L))
    for i in range(6):
        for j in range(6):
            assert D[i, j] == pytest.approx(np.var(L[i] - L[j]), abs=1e-9)


def test_identical_models_give_exact_zero_and_no_negatives():
    rng = np.random.default_rng(4)
    q = rng.normal(size=(1, 1000)) * 1e3
    D = two_kl_nats(np.vstack([q, q, q + 1e-3]))
    assert np.all(D >= 0.0)
    assert D[0, 1] == pytest.approx(0.0, abs=1e-6)


def test_bits_per_byte():
    # 16 nats per text over 1000-byte texts: 16 / (1000 * 0.693147...) = 0.0230831 bits/byte.
    assert nats_per_text_to_bits_per_byte(16.0, 1000.0) == pytest.approx(0.0230831, rel=1e-5)
    np.testing.assert_allclose(
        nats_per_text_to_bits_per_byte(np.array([math.log(2) * 972]), 972.0), [1.0]
    )
    with pytest.raises(ValueError):
        nats_per_text_to_bits_per_byte(1.0, 0.0)


def test_nearest_neighbours_hand_example():
    idx, d = nearest_neighbours(Q_3x2, k=2)
    np.testing.assert_array_equal(idx, [[1, 2], [2, 0], [1, 0]])
    np.testing.assert_allclose(d, [[16.0, 25.0], [1.0, 16.0], [1.0, 25.0]])
    assert idx.dtype == np.int64


def test_nearest_neighbours_ties_broken_by_index():
    # q0 and q2 identical: 2KL(0,2) = 0, 2KL(0,1) = 2KL(1,2) = (9 + 9) / 2 = 9.
    Q = np.array([[1.0, -1.0], [-2.0, 2.0], [1.0, -1.0]])
    for block_rows in (1, 2, 3):
        idx, d = nearest_neighbours(Q, k=2, block_rows=block_rows)
        np.testing.assert_array_equal(idx, [[2, 1], [0, 2], [0, 1]])
        np.testing.assert_allclose(d, [[0.0, 9.0], [9.0, 9.0], [0.0, 9.0]], atol=1e-12)


def test_k_is_clamped():
    idx, d = nearest_neighbours(Q_3x2, k=10)
    assert idx.shape == d.shape == (3, 2)
    idx, d = nearest_neighbours(Q_3x2[:1], k=5)
    assert idx.shape == d.shape == (1, 0)


@pytest.mark.parametrize("block_rows", [1, 7, 13, 49, 64])
def test_blockwise_neighbours_agree_with_dense(block_rows):
    rng = np.random.default_rng(5)
    Q = double_centre(rng.normal(-300, 40, size=(50, 30))).astype(np.float32)
    D = two_kl_nats(Q)
    k = 6
    idx, d = nearest_neighbours(Q, k=k, block_rows=block_rows)
    masked = D + np.diag(np.full(50, np.inf))
    expected_idx = np.argsort(masked, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(idx, expected_idx)
    np.testing.assert_allclose(d, np.take_along_axis(D, expected_idx, axis=1), atol=1e-9)
    assert not np.any(idx == np.arange(50)[:, None])


@pytest.mark.parametrize("block_rows", [1, 7, 13, 64])
def test_duplicate_models_are_mutual_nearest(block_rows):
    # Exact ties such as the distances from a third model to two identical models can
    # differ by one rounding step between BLAS tilings, so only distances are compared.
    rng = np.random.default_rng(5)
    L = rng.normal(-300, 40, size=(50, 30))
    L[17] = L[3]
    Q = double_centre(L)
    D = two_kl_nats(Q)
    idx, d = nearest_neighbours(Q, k=4, block_rows=block_rows)
    assert idx[3, 0] == 17 and idx[17, 0] == 3
    assert d[3, 0] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(d, np.take_along_axis(D, idx, axis=1), atol=1e-9)
    np.testing.assert_allclose(d, np.sort(D + np.diag(np.full(50, np.inf)), axis=1)[:, :4])


def test_nearest_neighbours_from_memmap(tmp_path):
    rng = np.random.default_rng(6)
    Q = double_centre(rng.normal(size=(20, 30))).astype(np.float32)
    mm = np.memmap(tmp_path / "Q.f32", dtype=np.float32, mode="w+", shape=Q.shape)
    mm[:] = Q
    mm.flush()
    mm = np.memmap(tmp_path / "Q.f32", dtype=np.float32, mode="r", shape=Q.shape)
    idx_mm, d_mm = nearest_neighbours(mm, k=3, block_rows=6)
    idx, d = nearest_neighbours(Q, k=3)
    np.testing.assert_array_equal(idx_mm, idx)
    np.testing.assert_allclose(d_mm, d)


def test_pair_table():
    df = pair_table(TWO_KL_3x2, ["org/a", "org/b", "c"], mean_bytes_per_text=1000.0)
    assert df.columns == ["model_a", "model_b", "two_kl_nats", "two_kl_bits_per_byte"]
    assert df["model_a"].to_list() == ["org/a", "org/a", "org/b"]
    assert df["model_b"].to_list() == ["org/b", "c", "c"]
    assert df["two_kl_nats"].to_list() == [16.0, 25.0, 1.0]
    np.testing.assert_allclose(
        df["two_kl_bits_per_byte"].to_numpy(), np.array([16.0, 25.0, 1.0]) / (1000 * math.log(2))
    )


def test_neighbour_table():
    idx, d = nearest_neighbours(Q_3x2, k=2)
    df = neighbour_table(idx, d, ["a", "b", "c"], mean_bytes_per_text=500.0)
    assert df.columns == ["model", "rank", "neighbour", "two_kl_nats", "two_kl_bits_per_byte"]
    assert df["model"].to_list() == ["a", "a", "b", "b", "c", "c"]
    assert df["rank"].to_list() == [1, 2, 1, 2, 1, 2]
    assert df["neighbour"].to_list() == ["b", "c", "c", "a", "b", "a"]
    assert df["two_kl_nats"].to_list() == [16.0, 25.0, 1.0, 16.0, 1.0, 25.0]
    assert df["two_kl_bits_per_byte"][0] == pytest.approx(16.0 / (500 * math.log(2)))


@pytest.mark.parametrize("block_rows", [1, 7, 64])
def test_many_exact_ties_broken_by_index(block_rows):
    # Small integers: every distance is exact in float64, so ties are real ties, and the
    # answer must be a stable sort by (distance, index) whatever the tiling.
    rng = np.random.default_rng(7)
    Q = rng.integers(-1, 2, size=(30, 3)).astype(np.float64)
    sq_dist = ((Q[:, None, :] - Q[None, :, :]) ** 2).sum(-1) + np.diag(np.full(30, np.inf))
    expected = np.argsort(sq_dist, axis=1, kind="stable")[:, :8]
    idx, d = nearest_neighbours(Q, k=8, block_rows=block_rows)
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_array_equal(d, np.take_along_axis(sq_dist, expected, axis=1) / 3)
