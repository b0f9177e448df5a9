"""The local run launcher: Dagster's default launcher plus a health check of the run's process.

Dagster's `DefaultRunLauncher` starts each run as a process on this machine but cannot tell
whether that process is still alive, so a run whose process was killed (SIGKILL, the kernel's
out-of-memory killer) stays "started" for ever, holding its `gpu` pool slot. This launcher
answers the run-monitoring daemon's health check (`run_monitoring` in dagster.yaml): the run
worker records its pid in the run's first engine event ("Started process for run (pid: N)");
the worker is alive while a process with that pid exists and started no later than the event
(a pid the system gave to a new process since then does not count). A dead worker makes the
daemon mark the run failed, free its pool slot, and `run_retries` retry it once.
"""

import os
from pathlib import Path

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher

from modelmap.storage import pid_alive

STARTED_PREFIX = "Started process for run (pid:"


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """The pid of the run's worker process and when it was recorded, or None if not yet."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if not (event and (event.message or "").startswith(STARTED_PREFIX)):
            continue
        pid = event.engine_event_data.metadata.get("pid")
        if pid is not None:
            return int(pid.value), entry.timestamp
    return None


def process_started_at(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: only whether the pid exists
        return 0.0 if pid_alive(pid) else None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited; only its parent has not reaped it yet
        return None
    ticks = int(fields[19])  # field 22 of /proc/PID/stat: start time in clock ticks after boot
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def worker_alive(pid: int, recorded_at: float) -> bool:
    """Whether process `pid` exists and is the one that existed at `recorded_at` (a process
    started after that time got a reused pid)."""
    started_at = process_started_at(pid)
    # /proc's start time has a resolution of one clock tick (and btime of one second).
    return started_at is not None and started_at <= recorded_at + 2.0


def worker_health(instance: dg.DagsterInstance, run: dg.DagsterRun) -> CheckRunHealthResult:
    found = run_worker_pid(instance, run.run_id)
    if found is None:
        from modelmap.storage import host_id
        from modelmap_assets.instance.inprocess import tagged_process

        tagged = tagged_process(run)  # a run executed in process (`modelmap materialize`)
        record = instance.get_run_record_by_id(run.run_id)
        if tagged is not None and tagged[0] == host_id() and record is not None:
            found = tagged[1], record.create_timestamp.timestamp()
    if found is None:
        # The worker can mark the run started before the code server records its pid; the
        # daemon fails any status but RUNNING, so not knowing yet counts as running.
        return CheckRunHealthResult(WorkerStatus.RUNNING, "the run worker's pid is not known yet")
    pid, recorded_at = found
    if not worker_alive(pid, recorded_at):
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone (killed or crashed) without ending the run",
        )
    return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` whose run workers the monitoring daemon can check."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return worker_health(self._instance, run)
