"""`regression_report`: benchmark scores predicted from Q by ridge regression.

Its automation condition is the default schedule's (`reports_condition()`): it refreshes with
the map. With `MODELMAP_MAP_REFRESH=eager` the code location gives it
`reports_condition("eager")` instead (`modelmap_assets.automation.conditions`).
"""

from pathlib import Path

import dagster as dg
import polars as pl

from modelmap.geometry.placement import Centring
from modelmap.reports import regression
from modelmap.reports.predictor import ScorePredictor
from modelmap.storage import write_parquet
from modelmap_assets.automation.conditions import reports_condition
from modelmap_assets.geometry.coordinates import CENTRING_FILE, read_coordinates
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import SCORES_AND_MAP, all_scores
from modelmap_assets.runs import others_in_progress
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

#: The report's files, written in one versioned folder (the predictor besides).
TABLES = ("table.parquet", "predictions.parquet", "predicted_missing.parquet")


@dg.asset(
    deps=SCORES_AND_MAP,
    automation_condition=reports_condition(),
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
    keys = index["key"].to_list()
    target_map = regression.fittable_targets(all_scores(storage, keys), keys)
    if not target_map:
        context.log.warning("no benchmark has scores for 4 models or more yet: nothing to fit")
        return dg.MaterializeResult(metadata={"K": len(keys), "targets": 0})
    result = regression.regress_benchmarks(
        Q, index["mean_loglik_nats"].to_numpy(), target_map, index["family"].to_list(), keys
    )

    out = storage.new_version_dir("regression_report", others_in_progress(context))
    meta = {"corpus_hash": info["corpus_hash"], "K": len(keys)}
    report = result.report
    for frame, name in zip(
        (report.table, report.predictions, result.predicted_missing), TABLES, strict=True
    ):
        write_parquet(frame, out / name, meta)
    regression.scatter_png(report.predictions, report.table, out / "scatter.png")
    predictor = ScorePredictor.from_fit(
        result.fitted,
        Centring.load(storage.current_version_dir("coordinates") / CENTRING_FILE),
        pl.read_parquet(storage.corpus_path, columns=["text_id"])["text_id"].to_list(),
        info["corpus_hash"],
    )
    predictor.save(out / "predictor.npz")
    final = storage.publish_version("regression_report", out)

    run_id, version = mlflow.register_predictor(
        predictor,
        run_name="regression_report",
        params={"K": len(keys), "N": Q.shape[1], "corpus_hash": info["corpus_hash"]},
        metrics=result.metrics(),
        tags={"modelmap.asset": "regression_report"},
        artifacts={"report": [final / "scatter.png", *(final / name for name in TABLES)]},
        context=context,
    ) or (None, None)
    return dg.MaterializeResult(
        metadata=_metadata(result, len(keys), len(target_map), final, run_id, version)
    )


def _metadata(
    result: regression.BenchmarkRegression,
    n_models: int,
    n_targets: int,
    folder: Path,
    run_id: str | None,
    version: str | None,
) -> dict:
    """What the UI shows of a regression report in ``folder``."""
    return {
        "K": n_models,
        "targets": n_targets,
        "table": dg.MetadataValue.md(md_table(result.report.table)),
        "pearson_r_kfold": dg.MetadataValue.json(result.pearson_r_kfold()),
        "skipped": dg.MetadataValue.json(result.report.skipped),
        "predicted_missing": result.predicted_missing.height,
        "scatter": dg.MetadataValue.md(
            png_md(folder / "scatter.png", "predicted against measured")
        ),
        "mlflow_run_id": run_id or "",
        "registered_model_version": version or "",
        "path": dg.MetadataValue.path(str(folder)),
    }
