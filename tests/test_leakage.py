"""Leakage screening: a planted model far above the likelihood-vs-benchmark line."""

import numpy as np
import pytest

from modelmap.reports.leakage import MIN_SCALE, leakage_png, screen


def line_data(seed: int = 0, n: int = 30):
    """n models whose likelihood per byte rises linearly with the benchmark, plus noise."""
    rng = np.random.default_rng(seed)
    bench = rng.uniform(20, 80, size=n)
    loglik = -1.5 + 0.01 * bench + rng.normal(scale=0.02, size=n)
    models = [f"org/m{i:02d}" for i in range(n)]
    return models, loglik, bench


def test_planted_high_outlier_is_the_only_flag():
    for seed in range(3):
        models, loglik, bench = line_data(seed)
        models = models + ["leaky/model"]
        loglik = np.append(loglik, -1.5 + 0.01 * 30 + 0.4)  # 20 noise sd above the line
        bench = np.append(bench, 30.0)
        rep = screen(models, loglik, bench)
        assert rep.flagged == ["leaky/model"]
        assert rep.table["flagged"].to_list() == [False] * 30 + [True]
        assert rep.table["robust_z"][-1] > 10
        assert abs(rep.slope - 0.01) < 0.003  # the outlier does not pull the robust line
        assert 0.01 < rep.scale < 0.04  # about the noise sd (0.02)


def test_low_outlier_is_not_flagged():
    models, loglik, bench = line_data()
    models = models + ["broken/tokenizer"]
    loglik = np.append(loglik, -1.5 + 0.01 * 50 - 0.5)
    bench = np.append(bench, 50.0)
    rep = screen(models, loglik, bench)
    assert rep.flagged == []
    assert rep.table["robust_z"][-1] < -10  # far away, but on the harmless side


def test_nan_benchmark_rows_are_not_fitted_nor_flagged():
    models, loglik, bench = line_data()
    models = models + ["unscored/leaky"]
    loglik = np.append(loglik, 0.0)  # would be an extreme outlier if it had a score
    bench = np.append(bench, np.nan)
    rep = screen(models, loglik, bench)
    last = rep.table.row(-1, named=True)
    assert np.isnan(last["robust_z"]) and np.isnan(last["fitted"])
    assert last["flagged"] is False
    assert rep.flagged == []


def test_too_few_models_raise():
    models, loglik, bench = line_data(n=6)
    bench[:2] = np.nan
    with pytest.raises(ValueError, match="at least 5 models.*got 4"):
        screen(models, loglik, bench)


def test_zero_mad_uses_a_floor():
    # 20 models exactly on the line: MAD is 0; the outlier is still flagged, the rest not.
    bench = np.linspace(10, 90, 21)
    loglik = -1.0 + 0.005 * bench
    loglik[-1] += 0.3
    rep = screen([f"m{i}" for i in range(21)], loglik, bench)
    assert rep.flagged == ["m20"]
    assert rep.scale >= MIN_SCALE
    assert np.nanmax(np.abs(rep.table["robust_z"].to_numpy()[:-1])) < 1e-3


def test_leakage_png(tmp_path):
    models, loglik, bench = line_data()
    models = models + ["leaky/model", "unscored"]
    loglik = np.append(loglik, [0.0, -1.0])
    bench = np.append(bench, [30.0, np.nan])
    rep = screen(models, loglik, bench)
    families = ["org"] * 30 + ["leaky", "other"]
    out = leakage_png(rep, tmp_path / "leak" / "leakage.png", families=families)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["leakage.png"]
    plain = leakage_png(rep, tmp_path / "plain.png")
    assert plain.stat().st_size > 1000


def test_sampled_theil_sen_matches_the_exact_one(monkeypatch):
    from scipy.stats import theilslopes

    from modelmap.reports import leakage

    rng = np.random.default_rng(0)
    x = rng.uniform(20, 80, 3000)
    y = -1.5 + 0.01 * x + rng.normal(0, 0.05, 3000)
    y[:600] += 2.0  # 20% leaked models: below the breakdown point, the line holds
    exact = theilslopes(y, x)
    monkeypatch.setattr(leakage, "MAX_EXACT_MODELS", 100)
    monkeypatch.setattr(leakage, "SAMPLED_PAIRS", 200_000)
    slope, intercept = leakage.theil_sen(y, x)
    assert slope == pytest.approx(exact.slope, abs=2e-3)
    assert intercept == pytest.approx(np.median(y) - slope * np.median(x))
    assert slope == pytest.approx(0.01, abs=3e-3)
