"""`regression_report`: benchmark scores predicted from Q by ridge regression."""

import dagster as dg
import numpy as np
import polars as pl

from modelmap.geometry.placement import Centring
from modelmap.reports import regression
from modelmap.reports.benchmarks import (
    targets,
)
from modelmap.reports.predictor import ScorePredictor
from modelmap.storage import write_parquet
from modelmap_assets.geometry.coordinates import CENTRING_FILE, read_coordinates
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import SCORES_AND_MAP, all_scores, refresh_after_map
from modelmap_assets.runs import others_in_progress
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


@dg.asset(
    deps=SCORES_AND_MAP,
    automation_condition=refresh_after_map,
    kinds={"sklearn"},
    group_name="modelmap",
)
def regression_report(
    context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Ridge regression from Q to each benchmark and to each suite's mean (the paper's
    RidgeCV, 5-fold CV and CV grouped by family), against the mean-log-likelihood baseline;
    predicted scores for models without one; the fitted predictor in the MLflow registry."""
    index, Q, info = read_coordinates(storage)
    keys, families = index["key"].to_list(), index["family"].to_list()
    target_map = targets(all_scores(storage, keys), keys)
    target_map = {k: y for k, y in target_map.items() if np.isfinite(y).sum() >= 4}
    if not target_map:
        context.log.warning("no benchmark has scores for 4 models or more yet: nothing to fit")
        return dg.MaterializeResult(metadata={"K": len(keys), "targets": 0})
    # Q in its singular basis once, for every RidgeCV fit (exact up to 512 models or texts,
    # the top 512 components above: see `modelmap.reports.regression`).
    reduction = regression.reduce_rows(Q)
    report = regression.evaluate(
        Q, index["mean_loglik_nats"].to_numpy(), target_map, families, keys, reduction=reduction
    )
    fitted = regression.fit(Q, target_map, reduction=reduction)
    predicted = regression.predict_missing(Q, target_map, fitted, keys)

    out = storage.new_version_dir("regression_report", others_in_progress(context))
    meta = {"corpus_hash": info["corpus_hash"], "K": len(keys)}
    write_parquet(report.table, out / "table.parquet", meta)
    write_parquet(report.predictions, out / "predictions.parquet", meta)
    write_parquet(predicted, out / "predicted_missing.parquet", meta)
    regression.scatter_png(report.predictions, report.table, out / "scatter.png")
    folder = storage.current_version_dir("coordinates")
    # The map's own fitted centring (clip value, column means): the predictor centres a new
    # model's row exactly as the map and the placement do.
    centring = Centring.load(folder / CENTRING_FILE)
    predictor = ScorePredictor(
        text_ids=pl.read_parquet(storage.corpus_path, columns=["text_id"])["text_id"].to_list(),
        clip_value=centring.clip_value,
        col_means=centring.col_means,
        targets=fitted.targets,
        coef=fitted.coef,
        intercept=fitted.intercept,
        corpus_hash=info["corpus_hash"],
    )
    predictor.save(out / "predictor.npz")
    final = storage.publish_version("regression_report", out)
    scatter = final / "scatter.png"

    table = report.table
    q_kfold = table.filter((pl.col("features") == "Q") & (pl.col("cv") == "kfold"))
    metrics = {
        f"{m}/{r['target']}/{r['features']}/{r['cv']}": r[m]
        for r in table.iter_rows(named=True)
        for m in ("pearson_r", "spearman_rho", "rmse")
    }
    run_id, version = mlflow.register_predictor(
        predictor,
        run_name="regression_report",
        params={"K": len(keys), "N": Q.shape[1], "corpus_hash": info["corpus_hash"]},
        metrics=metrics,
        tags={"modelmap.asset": "regression_report"},
        artifacts={
            "report": [
                final / "scatter.png",
                final / "table.parquet",
                final / "predictions.parquet",
                final / "predicted_missing.parquet",
            ]
        },
        context=context,
    ) or (None, None)
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "targets": len(target_map),
            "table": dg.MetadataValue.md(md_table(table)),
            "pearson_r_kfold": dg.MetadataValue.json(
                dict(zip(q_kfold["target"], q_kfold["pearson_r"], strict=True))
            ),
            "skipped": dg.MetadataValue.json(report.skipped),
            "predicted_missing": predicted.height,
            "scatter": dg.MetadataValue.md(png_md(scatter, "predicted against measured")),
            "mlflow_run_id": run_id or "",
            "registered_model_version": version or "",
            "path": dg.MetadataValue.path(str(final)),
        }
    )
