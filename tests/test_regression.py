"""Benchmark prediction from Q on synthetic data with a planted linear structure."""

import numpy as np
import polars as pl
import pytest
from scipy.stats import pearsonr

from modelmap.geometry.placement import Centring
from modelmap.reports.predictor import ScorePredictor
from modelmap.reports.regression import (
    ALPHAS,
    MIN_MODELS,
    FittedRidge,
    cross_val_predict,
    evaluate,
    fit,
    fittable_targets,
    predict_missing,
    regress_benchmarks,
    scatter_png,
)

K, N, N_FAMILIES = 60, 200, 6


def _double_centre(L: np.ndarray) -> np.ndarray:
    L = L - L.mean(axis=1, keepdims=True)
    return L - L.mean(axis=0, keepdims=True)


def synthetic(seed: int = 0):
    """Q, mean log-likelihood, families, model keys and two targets (planted, pure noise).

    Q has a low-rank structure (5 latent abilities, shared within a family, plus noise), as
    real log-likelihood matrices do: with K = 60 models in N = 200 isotropic dimensions no
    regression could recover a random direction from 48 training rows.
    """
    rng = np.random.default_rng(seed)
    fam_idx = np.repeat(np.arange(N_FAMILIES), K // N_FAMILIES)
    latent = rng.normal(size=(N_FAMILIES, 5))[fam_idx] + 0.7 * rng.normal(size=(K, 5))
    Q = _double_centre(latent @ rng.normal(size=(5, N)) + 0.3 * rng.normal(size=(K, N)))
    w = rng.normal(size=N)
    signal = Q @ (w / np.linalg.norm(w))
    planted = 50 + 15 * (signal - signal.mean()) / signal.std() + rng.normal(size=K)
    noise = np.clip(50 + 15 * rng.normal(size=K), 0, 100)
    mean_loglik = -2.0 + 0.1 * rng.normal(size=K)
    families = [f"fam{i}" for i in fam_idx]
    models = [f"org/model-{i:02d}" for i in range(K)]
    return Q, mean_loglik, families, models, {"planted": planted, "noise": noise}


def test_planted_target_is_predicted_kfold_and_grouped():
    Q, _, families, _, targets = synthetic()
    y = targets["planted"]
    pred, folds = cross_val_predict(Q, y, seed=0)
    assert pearsonr(y, pred)[0] > 0.95
    assert set(folds) == set(range(5))
    pred_g, _ = cross_val_predict(Q, y, groups=families)
    assert pearsonr(y, pred_g)[0] > 0.95
    assert np.all((pred >= 0) & (pred <= 100))


def test_pure_noise_target_is_not_predicted():
    # Out-of-fold ridge predictions of noise are slightly anti-correlated with it (a held-out
    # high score lowers its training mean), so the check is: no positive skill on average,
    # and no large correlation of either sign.
    rs = []
    for seed in range(6):
        Q, _, _, _, targets = synthetic(seed)
        pred, _ = cross_val_predict(Q, targets["noise"], seed=seed)
        rs.append(pearsonr(targets["noise"], pred)[0])
    assert abs(np.mean(rs)) < 0.3
    assert np.mean(rs) < 0.15
    assert max(rs) < 0.4


def test_grouped_folds_never_split_a_family():
    Q, _, families, _, targets = synthetic()
    _, folds = cross_val_predict(Q, targets["planted"], groups=families)
    fam = np.asarray(families)
    for f in set(families):
        assert len(set(folds[fam == f])) == 1, f"family {f} is in more than one fold"
    assert len(set(folds)) == 5  # min(5, 6 families)
    # Two groups: each fold holds out exactly one family.
    two = np.where(np.arange(K) < 30, "a", "b")
    _, folds2 = cross_val_predict(Q, targets["planted"], groups=two)
    assert sorted(set(zip(two, folds2, strict=True))) in (
        [("a", 0), ("b", 1)],
        [("a", 1), ("b", 0)],
    )


def test_fewer_than_two_groups_raises():
    Q, _, _, _, targets = synthetic()
    with pytest.raises(ValueError, match="at least 2 distinct groups"):
        cross_val_predict(Q, targets["planted"], groups=["one"] * K)
    with pytest.raises(ValueError, match="at least 3 samples"):
        cross_val_predict(Q[:2], targets["planted"][:2])


def test_baseline_uses_mean_loglik():
    # A score that is an exact linear function of the mean log-likelihood: OLS recovers it.
    _, mean_loglik, _, _, _ = synthetic()
    y = 50 + 100 * (mean_loglik - mean_loglik.mean())
    pred, _ = cross_val_predict(mean_loglik, y, baseline=True)
    np.testing.assert_allclose(pred, np.clip(y, 0, 100), atol=1e-8)


@pytest.fixture(scope="module")
def report():
    """evaluate() on the planted and noise targets, with 5 unscored models and a rare target."""
    Q, mean_loglik, families, models, targets = synthetic()
    targets = dict(targets)
    targets["planted"] = targets["planted"].copy()
    targets["planted"][:5] = np.nan
    targets["rare"] = np.full(K, np.nan)
    targets["rare"][:3] = 40.0
    return evaluate(Q, mean_loglik, targets, families, models)


def test_evaluate_table_and_predictions(report):
    rep = report
    models = synthetic()[3]

    assert rep.table.columns == [
        "target",
        "cv",
        "features",
        "n_models",
        "pearson_r",
        "spearman_rho",
        "rmse",
        "alpha",
    ]
    assert rep.table.height == 2 * 2 * 2  # planted, noise x kfold, grouped x Q, mean_loglik
    assert "rare" in rep.skipped and "3 models" in rep.skipped["rare"]
    row = rep.table.filter(
        (pl.col("target") == "planted") & (pl.col("cv") == "grouped") & (pl.col("features") == "Q")
    ).row(0, named=True)
    assert row["n_models"] == K - 5
    assert row["pearson_r"] > 0.95 and row["spearman_rho"] > 0.9
    assert row["alpha"] in ALPHAS
    base = rep.table.filter((pl.col("target") == "planted") & (pl.col("features") == "mean_loglik"))
    assert base["alpha"].is_nan().all()
    assert (base["pearson_r"] < 0.5).all()  # mean log-likelihood is unrelated here

    assert rep.predictions.columns == [
        "model",
        "family",
        "target",
        "cv",
        "features",
        "measured",
        "predicted",
    ]
    planted = rep.predictions.filter(pl.col("target") == "planted")
    assert planted.height == (K - 5) * 4
    assert not set(models[:5]) & set(planted["model"].to_list())


def test_grouped_cv_skipped_for_a_single_family():
    Q, mean_loglik, _, models, targets = synthetic()
    rep = evaluate(Q, mean_loglik, {"planted": targets["planted"]}, ["solo"] * K, models)
    assert set(rep.table["cv"].to_list()) == {"kfold"}
    assert "planted:grouped" in rep.skipped


def test_fit_reproduces_and_predict_missing():
    Q, _, _, models, targets = synthetic()
    y = targets["planted"].copy()
    held_in = y.copy()
    y[:4] = np.nan
    fitted = fit(Q, {"planted": y, "noise": targets["noise"]})
    assert isinstance(fitted, FittedRidge)
    assert fitted.targets == ["planted", "noise"]
    assert fitted.coef.shape == (2, N) and fitted.coef.dtype == np.float64
    assert fitted.intercept.shape == (2,) and fitted.alpha.shape == (2,)

    pred = fitted.predict(Q)
    assert pred.shape == (K, 2)
    assert np.all((pred >= 0) & (pred <= 100))
    assert pearsonr(held_in[4:], pred[4:, 0])[0] > 0.99  # held-in models
    assert np.sqrt(np.mean((pred[4:, 0] - held_in[4:]) ** 2)) < 3.0
    np.testing.assert_allclose(fitted.predict(Q[7]), pred[7:8])

    missing = predict_missing(Q, {"planted": y, "noise": targets["noise"]}, fitted, models)
    assert missing.columns == ["model", "target", "predicted"]
    assert missing["model"].to_list() == models[:4]  # the noise target has no gaps
    assert set(missing["target"]) == {"planted"}
    # The four unseen models are predicted from the regression, not the mean score.
    np.testing.assert_allclose(missing["predicted"].to_numpy(), held_in[:4], atol=6.0)


def test_scatter_png(tmp_path, report):
    rep = report
    out = scatter_png(rep.predictions, rep.table, tmp_path / "plots" / "scatter.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["scatter.png"]  # no temporary left
    grouped = scatter_png(rep.predictions, rep.table, tmp_path / "g.png", cv="grouped")
    assert grouped.stat().st_size > 1000


def test_reduction_is_exact_below_max_components():
    # Ridge on Z = Q V (every component) predicts exactly as ridge on Q itself.
    from modelmap.reports.regression import reduce_rows

    Q, _, families, _, targets = synthetic()
    red = reduce_rows(Q)
    assert red.exact and red.Z.shape[0] == K
    for groups in (None, families):
        on_q, _ = cross_val_predict(Q, targets["planted"], groups=groups, seed=3)
        on_z, _ = cross_val_predict(red.Z, targets["planted"], groups=groups, seed=3)
        np.testing.assert_allclose(on_z, on_q, atol=1e-6)
    fitted = fit(Q, {"planted": targets["planted"]})
    from sklearn.linear_model import RidgeCV

    ref = RidgeCV(alphas=ALPHAS).fit(np.asarray(Q, np.float64), targets["planted"])
    assert fitted.alpha[0] == ref.alpha_
    np.testing.assert_allclose(fitted.coef[0], ref.coef_, rtol=1e-6, atol=1e-9)


def test_truncated_reduction_keeps_the_top_components():
    from modelmap.reports.regression import reduce_rows

    Q = synthetic()[0]
    red = reduce_rows(Q, max_components=5)
    assert not red.exact and red.Z.shape == (K, 5)
    top = np.linalg.svd(np.asarray(Q, np.float64), compute_uv=False)[:5]
    np.testing.assert_allclose(np.linalg.norm(red.Z, axis=0), top, rtol=1e-3)


@pytest.mark.parametrize("shape", [(40, 10), (30, 60)])
def test_ridge_loo_equals_sklearn_ridgecv(shape):
    from sklearn.linear_model import RidgeCV

    from modelmap.reports.regression import RidgeLOO

    rng = np.random.default_rng(5)
    n, d = shape
    X = rng.normal(size=(n, d)) * rng.uniform(1, 300, size=d)
    y = X[:, :3] @ [0.01, -0.02, 0.005] + 40 + rng.normal(0, 1, n)
    alphas = np.logspace(-2, 9, 23)
    ref = RidgeCV(alphas=alphas).fit(X, y)
    got = RidgeLOO(alphas).fit(X, y)
    assert got.alpha_ == ref.alpha_
    np.testing.assert_allclose(got.coef_, ref.coef_, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got.predict(X), ref.predict(X), rtol=1e-9)


def test_fittable_targets_keep_benchmarks_with_enough_scores():
    models = [f"m{i}" for i in range(6)]
    rows = [("ARC", m, 40.0 + i) for i, m in enumerate(models)]
    rows += [("rare", m, 50.0) for m in models[: MIN_MODELS - 1]]
    rows += [("ARC", "not/on/the/map", 10.0)]
    scores = pl.DataFrame(
        {
            "model": [m for _, m, _ in rows],
            "benchmark": [b for b, _, _ in rows],
            "suite": ["file"] * len(rows),
            "score": [v for _, _, v in rows],
        }
    )
    got = fittable_targets(scores, models)
    assert list(got) == ["ARC"]
    np.testing.assert_array_equal(got["ARC"], 40.0 + np.arange(6))


def test_regress_benchmarks_is_evaluate_fit_and_predict_missing():
    Q, mean_loglik, families, models, targets = synthetic()
    targets = {"planted": targets["planted"].copy(), "noise": targets["noise"]}
    targets["planted"][:3] = np.nan
    got = regress_benchmarks(Q, mean_loglik, targets, families, models)
    report = evaluate(Q, mean_loglik, targets, families, models)
    fitted = fit(Q, targets)
    assert got.report.table.equals(report.table)
    assert got.report.predictions.equals(report.predictions)
    np.testing.assert_allclose(got.fitted.coef, fitted.coef)
    assert got.predicted_missing.equals(predict_missing(Q, targets, fitted, models))
    assert got.predicted_missing["model"].to_list() == models[:3]

    metrics = got.metrics()
    assert len(metrics) == 3 * report.table.height
    row = report.table.row(0, named=True)
    key = f"rmse/{row['target']}/{row['features']}/{row['cv']}"
    assert metrics[key] == row["rmse"]
    assert got.pearson_r_kfold()["planted"] > 0.95
    assert set(got.pearson_r_kfold()) == {"planted", "noise"}


def test_the_predictor_centres_a_raw_row_as_the_map_does():
    rng = np.random.default_rng(3)
    Q, mean_loglik, families, models, targets = synthetic()
    L = -250.0 + Q + rng.normal(0, 5, (K, 1))  # raw rows: each model's own strength
    centring = Centring().fit(L)
    Qc = centring.transform(L)
    fitted = regress_benchmarks(Qc, mean_loglik, targets, families, models).fitted
    text_ids = [f"t{i}" for i in range(N)]
    predictor = ScorePredictor.from_fit(fitted, centring, text_ids, "hash")
    assert predictor.targets == fitted.targets and predictor.corpus_hash == "hash"
    np.testing.assert_allclose(predictor.predict(L), fitted.predict(Qc), atol=1e-8)
