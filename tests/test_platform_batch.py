"""A backfill of a batch of models on PostgreSQL through the real daemon and webserver, with
the daemon killed (its whole process group: code server and the scoring run in flight) and
restarted half-way; every partition ends scored once, the map refreshes at the end (not per run).

The subject is the platform (backfill, queue, pool, storage, recovery), so the benchmark scores
come from a scores file and MLflow is off: each run still loads and scores its model, and
MLflow and measured scores are covered by test_pipeline.py and test_benchmark_assets.py.
"""

import signal
import time

import dagster as dg
import polars as pl
import pytest
from platformtools import (
    describe,
    reports_read_the_final_map,
    runs_of,
    wait_for,
    wait_until_idle,
)

from modelmap_assets.cli.backfill import wait_for_backfill
from modelmap_assets.cli.main import backfill, wait_for_refresh
from modelmap_assets.scoring.batches import RANGE_END_TAG, RANGE_START_TAG
from workshop.platform import local_platform, prepare

# Twelve models: enough for a batch that is still scoring when the daemon dies (after the
# fourth), with runs queued behind it, and retried runs beside runs never started. Every
# assertion holds per model, so more models only cost time (50 took 8.5 minutes).
N_MODELS = 12
KILL_AFTER = 4
ACTIVE = {dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED}


@pytest.fixture
def platform(tmp_path, postgres):
    scores = tmp_path / "scores.csv"
    rows = [f"batch/m{i:02d},{30 + i % 7},{40 + i % 5}" for i in range(N_MODELS)]
    scores.write_text("\n".join(["model,arc_challenge,hellaswag", *rows]) + "\n")
    env = {**postgres, "MODELMAP_MLFLOW": "off", "MODELMAP_BENCHMARK_FILE": str(scores)}
    platform = prepare(tmp_path, postgres=True, extra_env=env)
    yield platform
    platform.instance.dispose()


def scored(instance) -> int:
    return len(instance.get_materialized_partitions(dg.AssetKey("likelihood")))


def models_of(run: dg.DagsterRun, order: list[str]) -> list[str]:
    """The models a scoring run covers: its partition, or its range of `order`."""
    if "dagster/partition" in run.tags:
        return [run.tags["dagster/partition"]]
    start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
    return order[order.index(start) : order.index(end) + 1] if start else []


def partition_of(event: dg.DagsterEvent) -> str | None:
    """The partition of a materialization or of an asset check evaluation."""
    if event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
        return event.event_specific_data.partition
    return event.partition


def mid_scoring(instance, order) -> bool:
    """KILL_AFTER models done and a scoring run started (none merely starting) with models to
    go."""
    active = [r for r in runs_of(instance) if r.status in ACTIVE]
    done = instance.get_materialized_partitions(dg.AssetKey("likelihood"))
    return (
        len(done) >= KILL_AFTER
        and bool(active)
        and all(r.status == dg.DagsterRunStatus.STARTED for r in active)
        and any(set(models_of(r, order)) - done for r in active)
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_backfill_on_postgres_survives_a_daemon_crash(platform):
    instance = platform.instance
    keys = platform.copy_batch(N_MODELS)
    with local_platform(platform.env, platform.logs) as servers:
        t0 = time.time()
        assert backfill(instance, keys, servers.url, wait=False) == 0
        (request,) = instance.get_backfills()
        wait_for(
            lambda: mid_scoring(instance, keys), 600, f"{KILL_AFTER} models scored", every_s=0.2
        )
        # `modelmap-daemon` picks the backfill up within its 5 s interval (Dagster's 30 s
        # would put the first run some 20 s after the launch here).
        ours = dg.RunsFilter(tags={"dagster/backfill": request.backfill_id})
        first_run = min(r.create_timestamp.timestamp() for r in instance.get_run_records(ours))
        assert first_run - request.backfill_timestamp < 12
        servers.stop_daemon(signal.SIGKILL, whole_group=True)
        # Read after the kill: the daemon may have launched another run since the check.
        in_flight = [r.run_id for r in runs_of(instance) if r.status in ACTIVE]
        servers.start_daemon()
        status = wait_for_backfill(servers.url, request.backfill_id, timeout_s=1200, log=print)
        assert status == "COMPLETED_SUCCESS"
        # Automation refreshes the map and the reports once the batch is scored.
        assert wait_for_refresh(instance, t0, timeout_s=300, poll_s=1) == []
        print(f"backfill of {N_MODELS} models on PostgreSQL: {time.time() - t0:.0f} s")
        wait_until_idle(instance)

    # Every model scored and benchmarked; the map holds them all and was built once.
    for asset in ("likelihood", "benchmark_scores"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys), asset
    assert sorted(pl.read_parquet(platform.data / "model_map" / "map.parquet")["key"]) == keys
    # Not one map per batch run: automation waits while models are being scored. (A second
    # refresh may follow when the last scores land during the tick that requests the first:
    # automation keeps updates it has not yet seen rather than risk leaving a model off.)
    maps = instance.fetch_materializations(dg.AssetKey("model_map"), limit=10).records
    assert len(maps) <= 2, "\n\n".join(
        describe(instance, instance.get_run_by_id(m.run_id)) for m in maps
    )
    # The reports were built from the final Q, not before it.
    assert reports_read_the_final_map(instance) == []

    # The only failed runs are those killed with the daemon; each one's retry succeeded.
    runs = runs_of(instance)
    failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    assert [r.run_id for r in failed] == in_flight, "\n\n".join(
        describe(instance, r) for r in failed
    )
    retries = [r for r in runs if r.tags.get("dagster/parent_run_id") in in_flight]
    assert [r.status for r in retries] == [dg.DagsterRunStatus.SUCCESS] * len(in_flight), (
        "\n\n".join(describe(instance, r) for r in failed + retries)
    )
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs if r not in failed)
    events = " ".join(e.message for e in instance.all_logs(in_flight[0]))
    assert "is gone (killed or crashed)" in events

    # Several models per run (the backfill policy: the batch and its retry), no event lost:
    # each model is in one successful run, with both its materializations and three checks.
    assert len([r for r in runs if len(models_of(r, keys)) > 1]) >= 2
    for key in keys:
        ok = [
            r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS and key in models_of(r, keys)
        ]
        assert len(ok) == 1, key
        kinds = [
            e.dagster_event_type
            for e in instance.all_logs(ok[0].run_id)
            if e.is_dagster_event and partition_of(e.dagster_event) == key
        ]
        assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 2, key
        assert kinds.count(dg.DagsterEventType.ASSET_CHECK_EVALUATION) == 3, key
    for log in platform.logs.iterdir():
        assert "database is locked" not in log.read_text(errors="replace"), log
