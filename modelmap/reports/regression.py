"""Predicting benchmark scores from the log-likelihood matrix Q with ridge regression.

Oyama et al. (ACL 2025, arXiv 2502.16173), section 6: a model's row of the double-centred
matrix Q says which texts it finds relatively easy, and that pattern predicts its benchmark
scores. The paper fits scikit-learn's ``RidgeCV`` (alphas 1e1..1e9) on the rows of Q and
compares it with a one-feature baseline, the model's mean log-likelihood (the overall strength
that double centring removed from Q). Scores are on a 0..100 scale, so predictions are clipped
to that range.

Two cross-validations are reported:

* ``kfold``: shuffled K-fold over models;
* ``grouped``: GroupKFold over model families, so that no family is in the training and the
  test folds at once. Fine-tunes of one base model have nearly identical rows of Q and
  similar scores; plain K-fold can then "predict" a model from its siblings, and the grouped
  score says how well the regression carries over to a family it has never seen.

Scale. Ridge regression on the rows of Q equals ridge regression on ``Z = U S``, the rows in
the basis of Q's singular vectors (``Q = U S V^T``; the coefficients map back as
``coef = V gamma``): the penalty ``||coef||^2 = ||gamma||^2`` and every prediction are the
same. :func:`reduce_rows` computes Z once per report, so each of the many RidgeCV fits (per
target, cross-validation kind and fold) works on K x r instead of K x N. While
``min(K, N) <= max_components`` Z holds every component and the results are exact; above
(K = 10,000, N = 10,000), the top ``max_components`` components are kept (randomized SVD):
principal-component ridge, which drops the directions a ridge penalty shrinks the most.
Its effect on the figures is measured in ``benchmarks/bench_geometry.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.reports.benchmarks import targets as benchmark_targets
from modelmap.storage import write_atomic

#: The paper's ridge penalties: RidgeCV over 1e1..1e9 (17 values, two per decade).
ALPHAS = np.logspace(1, 9, 17)
#: Scores (and therefore predictions) live on this scale.
SCORE_MIN, SCORE_MAX = 0.0, 100.0
#: A target needs this many models with a score to be evaluated or fitted.
MIN_MODELS = 4
#: Components of Q kept by :func:`reduce_rows` (all of them while min(K, N) is at most this).
MAX_COMPONENTS = 512
CV_KINDS = ("kfold", "grouped")
FEATURE_SETS = ("Q", "mean_loglik")

TABLE_SCHEMA = {
    "target": pl.String,
    "cv": pl.String,
    "features": pl.String,
    "n_models": pl.Int64,
    "pearson_r": pl.Float64,
    "spearman_rho": pl.Float64,
    "rmse": pl.Float64,
    "alpha": pl.Float64,
}
PREDICTIONS_SCHEMA = {
    "model": pl.String,
    "family": pl.String,
    "target": pl.String,
    "cv": pl.String,
    "features": pl.String,
    "measured": pl.Float64,
    "predicted": pl.Float64,
}


@dataclass
class Reduction:
    """Rows of Q in the basis of its top right singular vectors: ``Z = Q V`` (K x r).

    ``exact``: r is the rank of Q (every component kept), so ridge on Z is ridge on Q.
    """

    Z: np.ndarray  # K x r float64
    V: np.ndarray  # N x r float64, orthonormal columns
    exact: bool

    def coef_in_texts(self, gamma: np.ndarray) -> np.ndarray:
        """Coefficients on Z (T x r) -> coefficients on the N texts (T x N)."""
        return np.atleast_2d(gamma) @ self.V.T


def reduce_rows(Q: np.ndarray, max_components: int = MAX_COMPONENTS, seed: int = 0) -> Reduction:
    """Q (K x N, nats) in the basis of its right singular vectors, for fast ridge fits.

    Exact (thin SVD, every component) while ``min(K, N) <= max_components``; otherwise
    the top ``max_components`` components from a randomized SVD (Halko et al. 2011, 4 power
    iterations, fixed seed), computed in float32 to halve the time and the memory (the
    coordinates are stored in float32 anyway).
    """
    K, N = Q.shape
    if min(K, N) <= max_components:
        Q64 = np.asarray(Q, dtype=np.float64)
        if K <= N:  # Q = U S V^T from the K x K Gram: cheaper than an SVD of K x N
            lam, U = np.linalg.eigh(Q64 @ Q64.T)
            keep = lam > lam.max(initial=0.0) * 1e-12
            V = (Q64.T @ U[:, keep]) / np.sqrt(lam[keep])
        else:
            lam, V = np.linalg.eigh(Q64.T @ Q64)
            V = V[:, lam > lam.max(initial=0.0) * 1e-12]
        return Reduction(Z=Q64 @ V, V=V, exact=True)
    from sklearn.utils.extmath import randomized_svd

    Q32 = np.asarray(Q, dtype=np.float32)
    _, _, Vt = randomized_svd(Q32, max_components, n_iter=4, random_state=seed)
    V = np.asarray(Vt.T, dtype=np.float64)
    Z = np.asarray(Q32 @ Vt.T.astype(np.float32), dtype=np.float64)
    return Reduction(Z=Z, V=V, exact=False)


def _as_2d(X: np.ndarray) -> np.ndarray:
    """A 1-D feature (the mean log-likelihood) becomes one column."""
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X


class RidgeLOO:
    """scikit-learn's ``RidgeCV(alphas)`` (efficient leave-one-out, unpenalised intercept),
    through one eigendecomposition of the d x d covariance of the centred features.

    With ``Xc = X - mean``, ``Xc^T Xc = V diag(mu) V^T`` and ``P = Xc V``, for each alpha the
    fitted values are ``mean(y) + P diag(1 / (mu + alpha)) P^T yc`` and the leverages
    ``h_i = 1/n + sum_j P_ij^2 / (mu_j + alpha)`` (the intercept's ``1/n``: the centred
    columns are orthogonal to the constant), so the leave-one-out residuals are
    ``(y_i - yhat_i) / (1 - h_i)`` and ``alpha_`` minimises their mean square, as RidgeCV's
    default scoring does. Cost O(n d^2 + d^3) for all alphas together: d is at most
    :data:`MAX_COMPONENTS` on the reduced rows, so one fit of 8,000 models takes a fraction of
    a second instead of an SVD per fit.
    """

    def __init__(self, alphas: np.ndarray = ALPHAS):
        self.alphas = np.asarray(alphas, dtype=np.float64)

    def fit(self, X: np.ndarray, y: np.ndarray) -> RidgeLOO:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        n = len(y)
        x_mean, y_mean = X.mean(axis=0), y.mean()
        Xc = X - x_mean
        yc = y - y_mean
        mu, V = np.linalg.eigh(Xc.T @ Xc)
        mu = np.maximum(mu, 0.0)
        P = Xc @ V
        Py = P.T @ yc
        P2 = P**2
        best_score, best = np.inf, 0
        for j, alpha in enumerate(self.alphas):
            f = 1.0 / (mu + alpha)
            resid = yc - P @ (f * Py)
            loo = resid / (1.0 - (P2 @ f + 1.0 / n))
            score = float(np.mean(loo**2))
            if score < best_score:  # ties keep the smaller alpha, as RidgeCV's argmin does
                best_score, best = score, j
        self.alpha_ = float(self.alphas[best])
        self.coef_ = V @ (Py / (mu + self.alpha_))
        self.intercept_ = float(y_mean - x_mean @ self.coef_)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


def _new_model(baseline: bool):
    """RidgeCV on Q (:class:`RidgeLOO`); ordinary least squares for the one-feature baseline
    (as in the paper)."""
    from sklearn.linear_model import LinearRegression

    return LinearRegression() if baseline else RidgeLOO(ALPHAS)


def _splitter(n: int, groups: np.ndarray | None, n_splits: int, seed: int):
    """KFold over models, or GroupKFold over families when ``groups`` is given."""
    from sklearn.model_selection import GroupKFold, KFold

    if n < 3:
        raise ValueError(f"cross-validation needs at least 3 samples, got {n}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if groups is None:
        return KFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(
            f"grouped cross-validation needs at least 2 distinct groups (families), "
            f"got {n_groups}: a held-out family would leave nothing to train on"
        )
    return GroupKFold(n_splits=min(n_splits, n_groups))


def cross_val_predict(
    X: np.ndarray,
    y: np.ndarray,
    *,
    groups: Sequence[str] | np.ndarray | None = None,
    n_splits: int = 5,
    seed: int = 0,
    baseline: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions of ``y`` from ``X``, clipped to [0, 100].

    Args:
        X: n x d features (rows of Q), or the length-n mean log-likelihood when
            ``baseline`` is set.
        y: n finite scores.
        groups: n group labels (families); when given, GroupKFold keeps every group inside
            one test fold. ``seed`` then has no effect (GroupKFold is deterministic).
        n_splits: folds, lowered to the number of samples (or groups) when there are fewer.
        seed: shuffling seed of the plain K-fold.
        baseline: ordinary least squares instead of RidgeCV (the 1-feature baseline).

    Returns:
        ``(pred, folds)``: the prediction for each sample from the model fitted without its
        fold, and the fold index (0-based) each sample was tested in.

    A training set of a single sample (possible when one family holds all models but one)
    cannot fit a slope; its fold is predicted by that sample's score.
    """
    X = _as_2d(X)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if X.shape[0] != n:
        raise ValueError(f"X has {X.shape[0]} rows but y has {n} values")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite: drop the models without a score first")
    group_arr = None
    if groups is not None:
        group_arr = np.asarray(groups)
        if len(group_arr) != n:
            raise ValueError(f"groups has {len(group_arr)} labels but y has {n} values")
    splitter = _splitter(n, group_arr, n_splits, seed)

    pred = np.full(n, np.nan)
    folds = np.full(n, -1, dtype=np.int64)
    for k, (train, test) in enumerate(splitter.split(X, y, group_arr)):
        if len(train) < 2:
            pred[test] = y[train].mean()
        else:
            model = _new_model(baseline).fit(X[train], y[train])
            pred[test] = model.predict(X[test])
        folds[test] = k
    return np.clip(pred, SCORE_MIN, SCORE_MAX), folds


def _correlations(measured: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Pearson r and Spearman rho; NaN when either side is constant (r is undefined)."""
    from scipy.stats import pearsonr, spearmanr

    if len(measured) < 2 or np.ptp(measured) == 0 or np.ptp(predicted) == 0:
        return math.nan, math.nan
    return float(pearsonr(measured, predicted)[0]), float(spearmanr(measured, predicted)[0])


@dataclass
class RegressionReport:
    """Cross-validated benchmark prediction.

    ``table``: one row per (target, cv, features) with columns target, cv, features,
    n_models, pearson_r, spearman_rho, rmse, alpha (the alpha RidgeCV picks on all scored
    models; NaN for the OLS baseline). ``predictions``: out-of-fold predictions, columns
    model, family, target, cv, features, measured, predicted. ``skipped``: why a target
    (key ``target``) or its grouped CV (key ``"target:grouped"``) was left out.
    """

    table: pl.DataFrame
    predictions: pl.DataFrame
    skipped: dict[str, str]


def _finite(Z: np.ndarray) -> np.ndarray:
    """Z = Q V is finite exactly when Q is (checked on the small matrix)."""
    if not np.all(np.isfinite(Z)):
        raise ValueError("Q must be finite")
    return Z


def _check_inputs_shape(
    Q: np.ndarray, targets: Mapping[str, np.ndarray], models: Sequence[str] | None = None
) -> None:
    """Every target and the model list must have one entry per row of Q (no copy of Q)."""
    if Q.ndim != 2:
        raise ValueError(f"Q must be a K x N matrix, got shape {Q.shape}")
    K = Q.shape[0]
    for name, y in targets.items():
        if np.shape(y) != (K,):
            raise ValueError(f"target {name!r} has shape {np.shape(y)}, expected ({K},)")
    if models is not None and len(models) != K:
        raise ValueError(f"{len(models)} model keys for {K} rows of Q")


def _checked_q(
    Q: np.ndarray, targets: Mapping[str, np.ndarray], models: Sequence[str] | None = None
) -> np.ndarray:
    """Q as float64 K x N; every target and the model list must have K entries."""
    Q = np.asarray(Q, dtype=np.float64)
    if Q.ndim != 2:
        raise ValueError(f"Q must be a K x N matrix, got shape {Q.shape}")
    if not np.all(np.isfinite(Q)):
        raise ValueError("Q must be finite")
    K = Q.shape[0]
    for name, y in targets.items():
        if np.shape(y) != (K,):
            raise ValueError(f"target {name!r} has shape {np.shape(y)}, expected ({K},)")
    if models is not None and len(models) != K:
        raise ValueError(f"{len(models)} model keys for {K} rows of Q")
    return Q


def evaluate(
    Q: np.ndarray,
    mean_loglik: np.ndarray,
    targets: Mapping[str, np.ndarray],
    families: Sequence[str],
    models: Sequence[str],
    *,
    n_splits: int = 5,
    seed: int = 0,
    reduction: Reduction | None = None,
) -> RegressionReport:
    """Cross-validate ridge-on-Q against the mean-log-likelihood baseline for every target.

    Each target uses only the models with a finite score. A target with fewer than
    :data:`MIN_MODELS` such models is skipped, and so is its grouped CV when those models
    come from fewer than 2 families; ``report.skipped`` says why.

    ``reduction``: :func:`reduce_rows` of Q, when the caller has it already (computed here
    otherwise); ridge runs on its rows (see the module docstring).
    """
    _check_inputs_shape(Q, targets, models)
    Q = _finite((reduction or reduce_rows(Q)).Z)
    K = Q.shape[0]
    mean_loglik = np.asarray(mean_loglik, dtype=np.float64)
    if mean_loglik.shape != (K,) or not np.all(np.isfinite(mean_loglik)):
        raise ValueError(f"mean_loglik must be {K} finite values")
    if len(families) != K:
        raise ValueError(f"{len(families)} families for {K} models")
    fam_arr = np.asarray(families, dtype=object)
    model_arr = np.asarray(models, dtype=object)

    rows: list[dict] = []
    pred_frames: list[pl.DataFrame] = []
    skipped: dict[str, str] = {}
    for name, y_all in targets.items():
        y_all = np.asarray(y_all, dtype=np.float64)
        keep = np.isfinite(y_all)
        n = int(keep.sum())
        if n < MIN_MODELS:
            skipped[name] = f"only {n} models have a score; at least {MIN_MODELS} are needed"
            continue
        y, fam = y_all[keep], fam_arr[keep]
        features = {"Q": Q[keep], "mean_loglik": mean_loglik[keep]}
        alpha_q = float(_new_model(baseline=False).fit(features["Q"], y).alpha_)
        for cv in CV_KINDS:
            groups = None
            if cv == "grouped":
                n_fam = len(set(fam))
                if n_fam < 2:
                    skipped[f"{name}:grouped"] = (
                        f"the {n} scored models all belong to one family ({fam[0]})"
                    )
                    continue
                groups = fam
            for feat in FEATURE_SETS:
                pred, _ = cross_val_predict(
                    features[feat],
                    y,
                    groups=groups,
                    n_splits=n_splits,
                    seed=seed,
                    baseline=feat == "mean_loglik",
                )
                r, rho = _correlations(y, pred)
                rows.append(
                    {
                        "target": name,
                        "cv": cv,
                        "features": feat,
                        "n_models": n,
                        "pearson_r": r,
                        "spearman_rho": rho,
                        "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
                        "alpha": alpha_q if feat == "Q" else math.nan,
                    }
                )
                pred_frames.append(
                    pl.DataFrame(
                        {
                            "model": model_arr[keep].tolist(),
                            "family": fam.tolist(),
                            "target": [name] * n,
                            "cv": [cv] * n,
                            "features": [feat] * n,
                            "measured": y,
                            "predicted": pred,
                        },
                        schema=PREDICTIONS_SCHEMA,
                    )
                )
    table = pl.DataFrame(rows, schema=TABLE_SCHEMA)
    predictions = pl.concat(pred_frames) if pred_frames else pl.DataFrame(schema=PREDICTIONS_SCHEMA)
    return RegressionReport(table=table, predictions=predictions, skipped=skipped)


@dataclass
class FittedRidge:
    """RidgeCV fitted on every scored model, one per target (rows of ``coef``).

    Targets with fewer than :data:`MIN_MODELS` scored models are not fitted and are absent
    from ``targets``.
    """

    targets: list[str]
    coef: np.ndarray  # T x N float64
    intercept: np.ndarray  # T
    alpha: np.ndarray  # T

    def predict(self, Qnew: np.ndarray) -> np.ndarray:
        """m x T predicted scores for m rows of Q (same N texts), clipped to [0, 100]."""
        Qnew = np.asarray(Qnew, dtype=np.float64)
        if Qnew.ndim == 1:  # a single model's row
            Qnew = Qnew[None, :]
        if Qnew.shape[1] != self.coef.shape[1]:
            raise ValueError(
                f"Qnew has {Qnew.shape[1]} columns, the fit used {self.coef.shape[1]} texts"
            )
        return np.clip(Qnew @ self.coef.T + self.intercept, SCORE_MIN, SCORE_MAX)


def fit(
    Q: np.ndarray, targets: Mapping[str, np.ndarray], reduction: Reduction | None = None
) -> FittedRidge:
    """RidgeCV per target on all models with a finite score, to predict unscored models.

    Fitted on :func:`reduce_rows` of Q (``reduction`` when given); the coefficients are
    returned on the N texts.
    """
    _check_inputs_shape(Q, targets)
    N_texts = Q.shape[1]
    red = reduction or reduce_rows(Q)
    Q = _finite(red.Z)
    names, coefs, intercepts, alphas = [], [], [], []
    for name, y_all in targets.items():
        y_all = np.asarray(y_all, dtype=np.float64)
        keep = np.isfinite(y_all)
        if keep.sum() < MIN_MODELS:
            continue
        model = _new_model(baseline=False).fit(Q[keep], y_all[keep])
        names.append(name)
        coefs.append(model.coef_)
        intercepts.append(model.intercept_)
        alphas.append(model.alpha_)
    gamma = np.asarray(coefs, dtype=np.float64).reshape(len(names), Q.shape[1])
    return FittedRidge(
        targets=names,
        coef=red.coef_in_texts(gamma).reshape(len(names), N_texts),
        intercept=np.asarray(intercepts, dtype=np.float64),
        alpha=np.asarray(alphas, dtype=np.float64),
    )


def predict_missing(
    Q: np.ndarray,
    targets: Mapping[str, np.ndarray],
    fitted: FittedRidge,
    models: Sequence[str],
) -> pl.DataFrame:
    """Predicted scores (columns model, target, predicted) for every model without a score.

    Only targets that ``fitted`` knows are predicted.
    """
    Q = _checked_q(Q, targets, models)
    model_arr = np.asarray(models, dtype=object)
    all_pred = fitted.predict(Q) if fitted.targets else np.empty((Q.shape[0], 0))
    frames = []
    for j, name in enumerate(fitted.targets):
        if name not in targets:
            continue
        missing = ~np.isfinite(np.asarray(targets[name], dtype=np.float64))
        frames.append(
            pl.DataFrame(
                {
                    "model": model_arr[missing].tolist(),
                    "target": [name] * int(missing.sum()),
                    "predicted": all_pred[missing, j],
                },
                schema={"model": pl.String, "target": pl.String, "predicted": pl.Float64},
            )
        )
    if not frames:
        return pl.DataFrame(
            schema={"model": pl.String, "target": pl.String, "predicted": pl.Float64}
        )
    return pl.concat(frames)


def fittable_targets(scores: pl.DataFrame, models: Sequence[str]) -> dict[str, np.ndarray]:
    """Benchmark -> K scores in ``models`` order (NaN where a model has none; see
    `modelmap.reports.benchmarks.targets`), for the benchmarks that at least
    :data:`MIN_MODELS` models have a score on."""
    by_target = benchmark_targets(scores, list(models))
    return {name: y for name, y in by_target.items() if np.isfinite(y).sum() >= MIN_MODELS}


@dataclass
class BenchmarkRegression:
    """Result of :func:`regress_benchmarks`: the cross-validated ``report``, the ridge
    ``fitted`` on every scored model, and its ``predicted_missing`` scores (columns model,
    target, predicted) for the models without one."""

    report: RegressionReport
    fitted: FittedRidge
    predicted_missing: pl.DataFrame

    def metrics(self) -> dict[str, float]:
        """``"{metric}/{target}/{features}/{cv}"`` -> value for every row of the table and
        each of pearson_r, spearman_rho and rmse."""
        return {
            f"{m}/{r['target']}/{r['features']}/{r['cv']}": r[m]
            for r in self.report.table.iter_rows(named=True)
            for m in ("pearson_r", "spearman_rho", "rmse")
        }

    def pearson_r_kfold(self) -> dict[str, float]:
        """Target -> Pearson r of ridge on Q under K-fold cross-validation."""
        table = self.report.table
        rows = table.filter((pl.col("features") == "Q") & (pl.col("cv") == "kfold"))
        return dict(zip(rows["target"], rows["pearson_r"], strict=True))


def regress_benchmarks(
    Q: np.ndarray,
    mean_loglik: np.ndarray,
    targets: Mapping[str, np.ndarray],
    families: Sequence[str],
    models: Sequence[str],
) -> BenchmarkRegression:
    """Every benchmark predicted from Q (K x N, nats): :func:`evaluate` (cross-validated,
    against the ``mean_loglik`` baseline, K nats per text), :func:`fit` on every scored model
    and :func:`predict_missing`. Q is reduced once (:func:`reduce_rows`, exact up to
    :data:`MAX_COMPONENTS` models or texts) for every RidgeCV fit."""
    reduction = reduce_rows(Q)
    report = evaluate(Q, mean_loglik, targets, families, models, reduction=reduction)
    fitted = fit(Q, targets, reduction=reduction)
    return BenchmarkRegression(report, fitted, predict_missing(Q, targets, fitted, models))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def scatter_png(
    predictions: pl.DataFrame,
    table: pl.DataFrame,
    path: str | Path,
    *,
    cv: str = "kfold",
) -> Path:
    """Measured (x) against out-of-fold predicted (y) scores, one panel per target.

    Ridge-on-Q and the mean-log-likelihood baseline share each panel in two colours; the
    legend gives r and rho of both. Written atomically (temporary file, then rename).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    preds = predictions.filter(pl.col("cv") == cv)
    names = preds["target"].unique(maintain_order=True).to_list()
    n_panels = max(1, len(names))
    ncols = min(3, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.2 * ncols, 4.0 * nrows + 0.4), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(f"Benchmark scores: measured vs out-of-fold predicted ({cv} CV)")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    if not names:
        axes[0].text(0.5, 0.5, f"no {cv} predictions", ha="center", va="center")
        axes[0].set_axis_off()

    styles = {
        "Q": ("ridge on Q", "tab:blue", "o"),
        "mean_loglik": ("mean log-lik", "tab:orange", "^"),
    }
    for ax, name in zip(axes, names, strict=False):
        sub = preds.filter(pl.col("target") == name)
        n_models = sub.filter(pl.col("features") == "Q").height or sub.height
        size = 24 if n_models <= 100 else 10 if n_models <= 400 else 4
        for feat, (label, colour, marker) in styles.items():
            pts = sub.filter(pl.col("features") == feat)
            if pts.is_empty():
                continue
            stats = table.filter(
                (pl.col("target") == name) & (pl.col("cv") == cv) & (pl.col("features") == feat)
            )
            r = stats["pearson_r"][0] if stats.height else None
            rho = stats["spearman_rho"][0] if stats.height else None
            ax.scatter(
                pts["measured"].to_numpy(),
                pts["predicted"].to_numpy(),
                s=size,
                c=colour,
                marker=marker,
                alpha=0.6,
                edgecolors="none",
                label=f"{label}: r={_fmt(r)}, ρ={_fmt(rho)}",
            )
        ax.plot([SCORE_MIN, SCORE_MAX], [SCORE_MIN, SCORE_MAX], color="0.5", lw=0.8, ls="--")
        ax.set_xlim(SCORE_MIN - 2, SCORE_MAX + 2)
        ax.set_ylim(SCORE_MIN - 2, SCORE_MAX + 2)
        ax.set_aspect("equal")
        ax.set_title(f"{name} (n={n_models})", fontsize=10)
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    for ax in axes[len(names) :]:
        if names:
            ax.set_axis_off()
    return write_atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png"))
