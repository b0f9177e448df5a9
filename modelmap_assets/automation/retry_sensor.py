"""`batch_retry_sensor`: each model that failed in a batch run is run again alone, so that it
fails with its own cause."""

from __future__ import annotations

import dagster as dg

from modelmap_assets.automation.jobs import score_models_job
from modelmap_assets.scoring.batches import (
    RANGE_START_TAG,
    RETRY_OF_TAG,
    requested_revisions,
    sha_tags,
)
from modelmap_assets.tags import REVISION_TAG


def failed_in_batch(step_failures: list[dg.DagsterEvent]) -> dict[str, list[str]]:
    """{model key: the per-model assets it failed} from a batch run's step failures (the
    models a step names in its `failed_models` metadata, see `BatchFailures`)."""
    failed: dict[str, list[str]] = {}
    for event in step_failures:
        data = event.step_failure_data.user_failure_data
        named = data.metadata.get("failed_models") if data else None
        for key in named.data if named is not None else []:
            failed.setdefault(key, []).append(event.step_key)
    return failed


def retry_requests(run: dg.DagsterRun, step_failures: list[dg.DagsterEvent]) -> list:
    """One run per model that failed in batch `run`, alone and at the sha the batch had."""
    if RANGE_START_TAG not in run.tags or run.tags.get(RETRY_OF_TAG):
        return []  # a single model already failed alone
    revisions = requested_revisions(run.tags)
    requests = []
    for key, steps in sorted(failed_in_batch(step_failures).items()):
        sha = revisions.get(key)
        pinned = {REVISION_TAG: sha, **sha_tags({key: sha})} if sha else {}
        requests.append(
            dg.RunRequest(
                run_key=f"{run.run_id}:{key}",
                partition_key=key,
                asset_selection=[dg.AssetKey(step) for step in steps],
                tags={RETRY_OF_TAG: run.run_id, **pinned},
            )
        )
    return requests


@dg.run_failure_sensor(
    name="batch_retry_sensor",
    request_job=score_models_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=5,
    description="Runs each model that failed in a batch run alone, so it fails with its cause.",
)
def batch_retry_sensor(context: dg.RunFailureSensorContext):
    """A batch run fails as a whole when one of its models fails (its other models are
    materialized); each failed model is then scored in a run of its own, whose failure (or,
    for a passing fault, success) is that model's alone."""
    requests = retry_requests(context.dagster_run, context.get_step_failure_events())
    if requests:
        keys = ", ".join(r.partition_key for r in requests)
        context.log.info(f"batch {context.dagster_run.run_id}: retrying {keys} alone")
    return requests
