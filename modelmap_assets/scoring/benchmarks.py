"""`benchmark_scores` (a model per partition): published scores, or accuracy measured on the
tasks."""

import time
from collections.abc import Iterator

import dagster as dg
import polars as pl

from modelmap.reports.benchmarks import (
    SCORE_COLUMNS,
    SUITE_TASKS,
    BenchmarkFileError,
    ScoresFile,
    empty_scores,
    match_models,
)
from modelmap.reports.tasks import TaskError, TaskResult, evaluate_tasks, tasks_hash
from modelmap.storage import write_parquet
from modelmap_assets.metadata import md_table
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.assets import MODEL_ERRORS, model_failure, prefetched_models
from modelmap_assets.scoring.batches import BATCH_POLICY, BatchFailures
from resources.benchmarks import BenchmarkResource
from resources.hub import HubResource
from resources.mlflow import MlflowResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource


@dg.multi_asset(
    name="benchmark_scores",
    specs=[
        dg.AssetSpec(
            "benchmark_scores",
            partitions_def=models_partitions,
            # Each model's materialization is reported by the step itself (see batches.py).
            skippable=True,
            kinds={"pytorch", "polars"},
            group_name="modelmap",
            description="A model's benchmark scores (%): published, or measured on the tasks.",
        )
    ],
    pool="gpu",
    backfill_policy=BATCH_POLICY,
)
def benchmark_scores(
    context: dg.AssetExecutionContext,
    benchmarks: BenchmarkResource,
    scorer: ScorerResource,
    storage: StorageResource,
    model_source: ModelSourceResource,
    hub: HubResource,
    mlflow: MlflowResource,
) -> Iterator[dg.AssetMaterialization]:
    """Each model's benchmark scores (%): published ones from the scores file, and for a model
    the file does not list, its accuracy on the multiple-choice tasks, measured here (the next
    model of a batch loads while the current one is measured)."""
    keys = list(context.partition_keys)
    failures = BatchFailures(keys)
    try:
        file = benchmarks.scores_file_read()
    except BenchmarkFileError as exc:
        for key in keys:
            failures.add(key, dg.Failure(description=f"model {key}: {exc}"), context.log)
        failures.raise_if_any()
    every = file.scores if file else empty_scores()
    listed = {key: every.filter(pl.col("model") == key) for key in keys}
    measure = [
        k for k in keys if benchmarks.should_measure(listed_in_file=not listed[k].is_empty())
    ]
    loads = prefetched_models(context, measure, scorer, model_source, hub) if measure else None
    tasks = None
    for key in keys:
        started_at = time.time()
        parts, meta = [listed[key]], {"key": key, "n_published": listed[key].height}
        if file is not None:
            meta.update(_file_match_metadata(context, file, key))
        if key in measure:
            job = next(loads)
            started_at -= job.wait_s
            try:
                tasks = tasks or benchmarks.tasks()
                _, loaded = job.get()
                results = evaluate_tasks(
                    loaded.model,
                    loaded.tokenizer,
                    tasks,
                    context=loaded.context_length,
                    token_budget=scorer.scorer().batch_token_budget(loaded.device),
                    log=lambda s, key=key: context.log.info(f"{key}: {s}"),
                )
            except (*MODEL_ERRORS, TaskError) as exc:
                failures.add(key, model_failure(key, exc), context.log)
                continue
            finally:
                del job
            parts.append(measured_rows(key, results, listed[key].schema))
            tokens, seconds = sum(r.n_tokens for r in results), sum(r.seconds for r in results)
            meta.update(
                tasks_hash=tasks_hash(tasks),
                revision=loaded.revision,
                dtype=str(loaded.dtype).removeprefix("torch."),
                tokens_per_s=tokens / max(seconds, 1e-9),
                wall_s=seconds,
            )
            del loaded
        yield record_scores(context, storage, mlflow, key, pl.concat(parts), meta, started_at)
    failures.raise_if_any()


def measured_rows(key: str, results: list[TaskResult], schema: pl.Schema) -> pl.DataFrame:
    """Model `key`'s accuracy (%) on each task, as rows of the scores table."""
    return pl.DataFrame(
        [(key, r.task, SUITE_TASKS, r.accuracy, "measured", r.n_items) for r in results],
        schema=schema,
        orient="row",
    )


def record_scores(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    mlflow: MlflowResource,
    key: str,
    scores: pl.DataFrame,
    meta: dict,
    started_at: float,
) -> dg.AssetMaterialization:
    """Write model `key`'s scores and log them to MLflow; its materialization event."""
    scores = scores.select(SCORE_COLUMNS)
    path = write_parquet(scores, storage.benchmark_path(key), meta)
    values = {f"score/{b}": s for b, s in zip(scores["benchmark"], scores["score"], strict=True)}
    mlflow.log_run(
        f"benchmark_scores {key}",
        params={k: v for k, v in meta.items() if k not in ("tokens_per_s", "wall_s")},
        metrics={**values, **{k: meta[k] for k in ("tokens_per_s", "wall_s") if k in meta}},
        tags={"modelmap.asset": "benchmark_scores", "modelmap.model": key},
        context=context,
        started_at=started_at,
    )
    return dg.AssetMaterialization(
        asset_key="benchmark_scores",
        partition=key,
        metadata={
            **{k: v for k, v in meta.items() if k != "key"},
            "scores": dg.MetadataValue.md(md_table(scores.drop("model"))),
            "path": dg.MetadataValue.path(str(path)),
        },
    )


def _file_match_metadata(context: dg.AssetExecutionContext, file: ScoresFile, key: str) -> dict:
    """Say which of the file's ids match no registered model, and which of them look like
    this model (case, spaces, a missing organisation), so a typo is never silent."""
    registered = context.instance.get_dynamic_partitions(models_partitions.name)
    match = match_models(file.models, registered)
    mine = sorted(m for m, k in match.near_misses.items() if k == key)
    if mine:
        context.log.warning(
            f"{key}: the scores file has no row for {key!r} but has {mine} (ids are matched "
            "exactly: fix the file to use its scores)"
        )
    if file.ignored_columns:
        context.log.info(
            f"{key}: scores file columns without numbers, ignored: {file.ignored_columns}"
        )
    return {
        "file_models_unregistered": len(match.unmatched),
        "file_near_misses": ", ".join(f"{m!r} -> {k}" for m, k in match.near_misses.items()),
        "file_ignored_columns": ", ".join(file.ignored_columns),
    }
