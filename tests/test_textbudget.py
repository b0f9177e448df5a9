"""The text budget (LS sampling), partial rows, and intervals over texts, on small real arrays."""

import numpy as np
import pytest

from modelmap.geometry.centering import clip_global, double_centre
from modelmap.geometry.intervals import (
    bootstrap_two_kl,
    half_split_coverage,
    multinomial_counts,
    neighbour_intervals,
    two_kl_standard_errors,
)
from modelmap.geometry.kl import nearest_neighbours, two_kl_nats
from modelmap.geometry.regime import mark_kl_regime
from modelmap.geometry.textbudget import (
    DrawStream,
    budget_error_curve,
    ls_probabilities,
    n_grid,
    n_needed,
    partial_row_distances,
    select_texts,
    summarise_curve,
    weighted_sq_distances,
)
from workshop.synthetic import synthetic_loglik


def test_ls_probabilities_are_squared_column_norms():
    Q = np.array([[1.0, -2.0, 1.0], [-1.0, 2.0, -1.0]])
    np.testing.assert_allclose(ls_probabilities(Q), [2 / 12, 8 / 12, 2 / 12])


def test_weights_and_distances_by_hand():
    # Draws 0, 1, 1 of p = (0.5, 0.25, 0.25): text 0 once, text 1 twice, m = 3:
    # w0 = 1 / (3 * 0.5) = 2/3, w1 = 2 / (3 * 0.25) = 8/3.
    p = np.array([0.5, 0.25, 0.25])
    from modelmap.geometry.textbudget import selection_from_draws

    sel = selection_from_draws(np.array([0, 1, 1]), p, "ls")
    np.testing.assert_array_equal(sel.index, [0, 1])
    np.testing.assert_allclose(sel.weight, [2 / 3, 8 / 3])
    # d = (3, 0): weighted mean (2/3*3)/(10/3) = 0.6; G = 2/3*2.4^2 + 8/3*0.6^2 = 4.8.
    G = weighted_sq_distances(np.array([[3.0, 0.0]]), np.array([[0.0, 0.0]]), sel.weight)
    assert G[0, 0] == pytest.approx(4.8)


def test_all_texts_with_unit_weights_give_the_full_distances():
    rng = np.random.default_rng(0)
    L = rng.normal(-200, 20, size=(5, 50))
    G = weighted_sq_distances(L, L, np.ones(50))
    np.testing.assert_allclose(G / 50, two_kl_nats(double_centre(L)), atol=1e-9)


def test_draw_stream_counts_distinct_texts():
    stream = DrawStream(np.full(100, 0.01), np.random.default_rng(1))
    m = stream.draws_for(40, max_draws=10_000)
    assert len(np.unique(stream.draws[:m])) == 40
    assert len(np.unique(stream.draws[: m - 1])) == 39
    sel = select_texts(np.random.default_rng(2).normal(size=(4, 100)), 30, "ls", seed=3)
    assert len(sel.index) == 30 and sel.count.sum() == sel.n_draws


def test_grid_steps_are_at_most_the_ratio():
    grid = n_grid(10, 1000, 1.2)
    assert grid[0] == 10 and grid[-1] == 1000
    assert all(b / a <= 1.2 + 1e-9 for a, b in zip(grid, grid[1:], strict=False))


@pytest.fixture(scope="module")
def synthetic_q():
    L, families = synthetic_loglik(K=120, N=2000, n_families=8, seed=5)
    clipped, threshold = clip_global(L, 2.0)
    return L, clipped, threshold, double_centre(clipped), families


def test_ls_needs_fewer_texts_than_uniform_on_heterogeneous_texts(synthetic_q):
    _, _, _, Q, families = synthetic_q
    curve = budget_error_curve(Q, families, n_seeds=10, max_queries=60)
    assert set(curve["seed"]) == set(range(10))
    summary = summarise_curve(curve)
    needed = n_needed(summary, 0.05)
    assert needed["ls"] is not None and needed["uniform"] is not None
    assert needed["ls"] <= 0.6 * needed["uniform"], needed
    # n counts distinct texts: LS repeats texts, so it needs more draws than n.
    ls = summary.filter(summary["sampler"] == "ls")
    assert (ls["n_draws"] >= ls["n_texts"]).all()


def test_a_partial_row_finds_its_full_row_neighbour(synthetic_q):
    L, clipped, threshold, Q, _ = synthetic_q
    sel = select_texts(Q[1:], 400, "ls", seed=0)  # probabilities without model 0
    est = partial_row_distances(L[0, sel.index], clipped[1:], sel.index, sel.weight, threshold)
    full = np.asarray(clipped[1:, sel.index], dtype=np.float64)
    row = np.maximum(L[0, sel.index], threshold)[None, :]
    np.testing.assert_allclose(est, weighted_sq_distances(row, full, sel.weight)[0], rtol=1e-6)
    exact = two_kl_nats(Q)[0, 1:] * Q.shape[1]
    assert np.argmin(est) == np.argmin(exact)
    assert np.median(np.abs(est - exact) / exact) < 0.1


def test_bootstrap_of_all_texts_is_centred_on_the_estimate(synthetic_q):
    _, _, _, Q, _ = synthetic_q
    N = Q.shape[1]
    D = Q[:3] - Q[3:6]
    counts = multinomial_counts(N, N, 400, np.random.default_rng(0))
    samples = bootstrap_two_kl(D, counts, float(N), N, N)
    est = D.var(axis=1)
    np.testing.assert_allclose(samples.mean(axis=0), est, rtol=0.02)
    # The closed-form SE agrees with the bootstrap's spread.
    se = two_kl_standard_errors(Q)[[0, 1, 2], [3, 4, 5]]
    np.testing.assert_allclose(samples.std(axis=0), se, rtol=0.15)


def test_nearest_vs_second_is_a_paired_test(synthetic_q):
    _, _, _, Q, _ = synthetic_q
    idx, nn = nearest_neighbours(Q, 3)
    iv = neighbour_intervals(Q, idx, B=200, level=0.95)
    assert (iv["low"] <= nn + 1e-9).all() and (nn <= iv["high"] + 1e-9).all()
    # Its standard error agrees with the closed form.
    se = two_kl_standard_errors(Q)[np.arange(len(Q))[:, None], idx]
    boot_se = np.log(iv["high"] / nn) * nn / 1.959964
    assert np.median(boot_se / se) == pytest.approx(1.0, abs=0.1)
    # A model and a near copy: the copy is told apart from every other model.
    twin = np.vstack([Q, Q[0] + 0.01 * np.random.default_rng(1).normal(size=Q.shape[1])])
    idx2, _ = nearest_neighbours(twin, 3)
    iv2 = neighbour_intervals(twin, idx2, B=200, level=0.95)
    assert idx2[-1, 0] == 0 and iv2["distinguishable"][-1]


@pytest.mark.parametrize("method", ["normal", "bootstrap"])
def test_intervals_cover_the_other_half_at_their_level(method):
    # The check, at a size for the fast tier: 200 random half splits.
    L, _ = synthetic_loglik(K=12, N=600, n_families=3, seed=2)
    Q = double_centre(clip_global(L, 2.0)[0])
    pairs = np.array(np.triu_indices(12, 1)).T
    result = half_split_coverage(Q, pairs, n_splits=200, method=method, B=200)
    assert abs(result["coverage"] - 0.95) <= 0.02, result


def test_estimates_past_the_regime_lose_their_bits_per_byte():
    import polars as pl

    table = pl.DataFrame(
        {
            "two_kl_nats": [1.0, 900.0],
            "two_kl_bits_per_byte": [0.01, 5.0],
            "two_kl_bits_per_byte_low": [0.005, 4.0],
            "two_kl_bits_per_byte_high": [0.02, 6.0],
        }
    )
    marked = mark_kl_regime(table, 1.0)
    assert marked["in_kl_regime"].to_list() == [True, False]
    assert marked["two_kl_bits_per_byte"].to_list() == [0.01, None]
    assert marked["two_kl_bits_per_byte_high"].to_list() == [0.02, None]
    assert marked["two_kl_nats"].to_list() == [1.0, 900.0]


@pytest.mark.parametrize("K", [1, 2, 3])
def test_neighbour_table_with_intervals_for_tiny_maps(K):
    # One model has no neighbour (and nothing to tell apart); two have no second.
    import polars as pl

    from modelmap.geometry.intervals import with_interval_columns
    from modelmap.geometry.kl import neighbour_table
    from modelmap.geometry.kl_tables import with_gap

    Q = double_centre(np.random.default_rng(0).normal(-100, 5, size=(K, 50)))
    idx, nn = nearest_neighbours(Q, 5)
    iv = neighbour_intervals(Q, idx, B=50, level=0.95)
    table = neighbour_table(idx, nn, [f"a/m{i}" for i in range(K)], 900.0)
    table = with_gap(
        with_interval_columns(table, iv["low"], iv["high"], 900.0), iv["gap_low"], iv["gap_high"]
    )
    table = mark_kl_regime(table, 1e-3)
    assert table.height == K * (K - 1)
    first = table.filter(pl.col("rank") == 1)
    assert first["distinguishable"].is_null().all() == (K < 3)
