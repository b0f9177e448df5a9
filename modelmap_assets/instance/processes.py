"""Which process ran a run, and whether that process is still alive.

A run executed in the caller's process (`materialize_here`) carries its host and pid as tags;
a launched run's worker records its pid in the run's first engine event (`launcher.py`). Either
way the process is alive while a process with that pid exists and started no later than the
pid was recorded (a pid the system gave to a new process since then does not count).
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from modelmap.storage import host_id, pid_alive

PROCESS_HOST_TAG = "modelmap/process_host"
PROCESS_PID_TAG = "modelmap/process_pid"


def process_tags() -> dict[str, str]:
    """The tags that name this process (host id and pid) on a run it executes."""
    return {PROCESS_HOST_TAG: host_id(), PROCESS_PID_TAG: str(os.getpid())}


def tagged_process(run: dg.DagsterRun) -> tuple[str, int] | None:
    """(host id, pid) of the process a run was executed in, when `materialize_here` ran it."""
    host, pid = run.tags.get(PROCESS_HOST_TAG), run.tags.get(PROCESS_PID_TAG)
    if host is None or pid is None or not pid.isdigit():
        return None
    return host, int(pid)


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
