"""Waiting on a running platform (see workshop/platform.py for starting one)."""

from __future__ import annotations

import time

import dagster as dg


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    """Poll `predicate()` until it returns something truthy; fail naming `what`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def runs_of(instance: dg.DagsterInstance, key: str | None = None) -> list[dg.DagsterRun]:
    """Every run (of one `models` partition when `key` is given), oldest first."""
    tags = {"dagster/partition": key} if key else None
    return list(reversed(instance.get_runs(dg.RunsFilter(tags=tags))))


def describe(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """A run's status, tags and last events, for an assertion message."""
    tail = [f"{e.dagster_event_type}: {e.message[:300]}" for e in instance.all_logs(run.run_id)]
    return f"run {run.run_id} {run.status} tags {dict(run.tags)}\n" + "\n".join(tail[-8:])


def reports_read_the_final_map(instance: dg.DagsterInstance) -> list[str]:
    """The reports not built after the latest `coordinates` (they read its Q): [] when both were."""
    coordinates = instance.get_latest_materialization_event(dg.AssetKey("coordinates"))
    stale = []
    for report in ("regression_report", "leakage_report"):
        latest = instance.get_latest_materialization_event(dg.AssetKey(report))
        if not (latest and coordinates and latest.timestamp >= coordinates.timestamp):
            stale.append(report)
    return stale


ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def wait_until_idle(instance: dg.DagsterInstance, timeout_s: float = 120, quiet_s: float = 8):
    """Wait until no run is queued or running for `quiet_s` (longer than an automation tick in
    tests), so that stopping the platform kills nothing in flight: a run that automation
    launched just before the test's last check would otherwise end killed, as a failure."""
    deadline = time.time() + timeout_s
    idle_since = None
    while time.time() < deadline:
        active = instance.get_runs(dg.RunsFilter(statuses=ACTIVE_STATUSES), limit=1)
        if active:
            idle_since = None
        elif idle_since is None:
            idle_since = time.time()
        elif time.time() - idle_since >= quiet_s:
            return
        time.sleep(0.5)
    raise AssertionError(f"runs still active after {timeout_s:.0f} s")
