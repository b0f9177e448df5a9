"""A run killed inside an in-process `materialize` never keeps its `gpu` slot, a run that waits
for one sleeps (no core spinning) and Ctrl-C stops it (real processes, a real SQLite instance
with a one-slot pool)."""

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from platformtools import wait_for

from modelmap_assets.instance.inprocess import fail_dead_runs
from modelmap_assets.instance.launcher import worker_health

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path):
    (tmp_path / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
    )
    return tmp_path


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _start(home: Path, seconds: float, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(HERE.parent)}
    return subprocess.Popen(
        [sys.executable, str(HERE / "slot_holder.py"), str(seconds), str(marker)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _claimed(instance, pool: str = "gpu") -> int:
    info = instance.event_log_storage.get_concurrency_info(pool)
    return len(info.active_run_ids | info.pending_run_ids)  # runs holding or waiting for it


def test_a_killed_in_process_run_is_failed_and_its_slot_freed(home, tmp_path):
    holder = _start(home, 600, tmp_path / "held")
    wait_for(lambda: (tmp_path / "held").exists(), timeout_s=120, what="the step to start")
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    with _instance(home) as instance:
        assert _claimed(instance) == 1  # the dead run still holds the slot
        # The monitoring daemon's health check sees it too (for a `dagster-daemon` instance).
        (dead,) = instance.get_runs()
        alive, why = worker_health(instance, dead)
        assert not alive and "is gone" in why
        (failed,) = fail_dead_runs(instance)
        run = instance.get_run_by_id(failed)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert _claimed(instance) == 0
    # The next run gets the slot at once.
    nxt = _start(home, 0, tmp_path / "next")
    assert nxt.wait(timeout=120) == 0 and "success" in nxt.stdout.read()


@contextmanager
def _holder_and_waiter(home: Path, tmp_path: Path):
    """A run holding the slot (for 600 s) and a second one waiting for it; both killed after."""
    holder, waiter = _start(home, 600, tmp_path / "held"), None
    try:
        wait_for(lambda: (tmp_path / "held").exists(), timeout_s=120, what="the step to start")
        waiter = _start(home, 0, tmp_path / "waiter")
        with _instance(home) as instance:
            wait_for(lambda: _claimed(instance) == 2, timeout_s=120, what="the waiter to queue")
            yield holder, waiter, instance
    finally:
        for process in (holder, waiter):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_ctrl_c_stops_a_run_waiting_for_the_slot(home, tmp_path):
    with _holder_and_waiter(home, tmp_path) as (_, waiter, instance):
        started = time.monotonic()
        os.kill(waiter.pid, signal.SIGINT)
        assert waiter.wait(timeout=30) != 0
        assert time.monotonic() - started < 30
        assert not (tmp_path / "waiter").exists()
        waiting = [r for r in instance.get_runs() if r.status != dg.DagsterRunStatus.STARTED]
        assert [r.status for r in waiting] == [dg.DagsterRunStatus.FAILURE]
        assert _claimed(instance) == 1  # only the holder's


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_run_waiting_for_the_slot_sleeps_and_then_takes_it(home, tmp_path):
    """Dagster's executor spins while a step waits for a pool slot (the `pool_wait`
    workaround): a waiting scoring run took most of a core from the run that held the slot."""
    with _holder_and_waiter(home, tmp_path) as (holder, waiter, instance):
        time.sleep(0.5)
        before, t0 = _cpu_seconds(waiter.pid), time.monotonic()
        time.sleep(3.0)
        used, seconds = _cpu_seconds(waiter.pid) - before, time.monotonic() - t0
        assert used < 0.1 * seconds, f"the waiting run used {used:.2f} s of CPU in {seconds:.1f} s"
        # It takes the slot once the holder is gone.
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
        fail_dead_runs(instance)
        assert waiter.wait(timeout=120) == 0 and "success" in waiter.stdout.read()
