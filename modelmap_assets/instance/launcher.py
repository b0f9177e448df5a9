"""The local run launcher: Dagster's default launcher plus a health check of the run's process.

Dagster's `DefaultRunLauncher` starts each run as a process on this machine but cannot tell
whether that process is still alive, so a run whose process was killed (SIGKILL, the kernel's
out-of-memory killer) stays "started" for ever, holding its `gpu` pool slot. This launcher
answers the run-monitoring daemon's health check (`run_monitoring` in dagster.yaml): the run
worker's pid is in the metadata of the run's first engine event that has a `pid` (the worker
reports it as it starts, before any step); the worker is alive while that process exists
(`processes.worker_alive`). A dead worker makes the daemon mark the run failed, free its pool
slot, and `run_retries` retry it once.

Answering the check takes Dagster's private result types (the `run_worker_health` workaround in
`workarounds.py`): without them this launcher is Dagster's default one and the instance loads.
"""

from __future__ import annotations

import dagster as dg

from modelmap.storage import host_id
from modelmap_assets.instance import workarounds
from modelmap_assets.instance.processes import tagged_process, worker_alive


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's worker process and when it was recorded, or None if not yet."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event else None
        pid = data.metadata.get("pid") if data else None
        if pid is not None:
            return int(pid.value), record.event_log_entry.timestamp
    return None


def worker_health(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[bool, str]:
    """Whether the run's worker process is alive (or not known yet), and why."""
    found = run_worker_pid(instance, run.run_id)
    if found is None:
        tagged = tagged_process(run)  # a run executed in process (`modelmap materialize`)
        record = instance.get_run_record_by_id(run.run_id)
        if tagged is not None and tagged[0] == host_id() and record is not None:
            found = tagged[1], record.create_timestamp.timestamp()
    if found is None:
        # The worker can mark the run started before it records its pid; the daemon fails
        # any status but running, so not knowing yet counts as running.
        return True, "the run worker's pid is not known yet"
    pid, recorded_at = found
    if not worker_alive(pid, recorded_at):
        return False, f"run worker process {pid} is gone (killed or crashed) without ending the run"
    return True, f"run worker process {pid} is alive"


class LocalRunLauncher(dg.DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers the monitoring daemon can check."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.answers_health_checks = workarounds.run_worker_health()

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self.answers_health_checks

    def check_run_worker_health(self, run: dg.DagsterRun):
        alive, why = worker_health(self._instance, run)
        return workarounds.health_check_result(alive, why)
