"""Runs executed inside this process (`modelmap materialize`, the demo): never a stuck slot.

`dg.materialize` runs a job in the calling process, outside any run launcher, so nothing
records which process a run lives in: a run whose process is killed stays "started" for ever
and keeps its `gpu` pool slot, and every later scoring step waits on it. And while a step
waits for a slot, Dagster only notes a Ctrl-C (or SIGTERM) for its next checkpoint, which a
waiting run never reaches. `materialize_here` closes both holes:

- each run carries the host and pid of its process as tags (`processes.process_tags`), so
  `fail_dead_runs` (called before every in-process run) marks a run of this host whose process
  is gone failed and frees its slots, whatever started it; the launcher's health check reads
  the same tags for the monitoring daemon;
- a watchdog thread sees an interrupt that no checkpoint took within a second (a run waiting
  for a slot): it marks this process's runs failed, frees their slots and exits (status 130).
  It reads Dagster's private note of a captured interrupt (the `interrupt_watch` workaround).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager

import dagster as dg

from modelmap.storage import host_id
from modelmap_assets.instance import workarounds
from modelmap_assets.instance.processes import (
    PROCESS_PID_TAG,
    process_tags,
    tagged_process,
    worker_alive,
)
from modelmap_assets.runs import in_progress_runs

UNTAKEN_INTERRUPT_S = 1.0  # an interrupt a checkpoint has not taken by then: a waiting run


def end_run(instance: dg.DagsterInstance, run: dg.DagsterRun, why: str) -> None:
    """Mark `run` failed with `why` and free every pool slot it holds or waits for."""
    instance.report_run_failed(run, why)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the in-progress runs executed in a process of this host that no longer exists (or
    is another process with a reused pid); free their slots. Returns their run ids."""
    ended = []
    for run in in_progress_runs(instance):
        tagged = tagged_process(run)
        if tagged is None or tagged[0] != host_id():
            continue  # another host's process, or one a launcher watches
        record = instance.get_run_record_by_id(run.run_id)
        created = record.create_timestamp.timestamp() if record else time.time()
        if not worker_alive(tagged[1], created):
            end_run(
                instance,
                run,
                f"the process that ran it ({tagged[1]}) is gone (killed or crashed) without "
                "ending the run; marked failed and its pool slots freed",
            )
            ended.append(run.run_id)
    return ended


@contextmanager
def _stop_on_untaken_interrupt(instance: dg.DagsterInstance):
    """While the block runs, turn an interrupt that Dagster captured but no checkpoint took
    into: this process's runs failed, their slots freed, exit 130. Without Dagster's note of a
    captured interrupt (the `interrupt_watch` workaround off) the block runs unwatched."""
    captured = workarounds.interrupt_check()
    if captured is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        since = None
        while not done.wait(0.2):
            if not captured():
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since < UNTAKEN_INTERRUPT_S:
                continue
            mine = str(os.getpid())
            for run in in_progress_runs(instance):
                if run.tags.get(PROCESS_PID_TAG) == mine:
                    end_run(instance, run, "interrupted (Ctrl-C or SIGTERM) while waiting")
            print("interrupted: the run is marked failed and its slots freed", file=sys.stderr)
            sys.stderr.flush()
            os._exit(130)  # the main thread is inside Dagster's wait loop: nothing to unwind

    thread = threading.Thread(target=watch, name="modelmap-interrupt-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def materialize_here(assets, *, instance: dg.DagsterInstance, tags=None, **kwargs):
    """`dg.materialize` in this process, with dead runs of this host failed first, this
    process recorded on the run, and Ctrl-C honoured while the run waits for a slot."""
    workarounds.patch_pool_wait()  # a run waiting for its slot sleeps (runs in this process)
    ended = fail_dead_runs(instance)
    if ended:
        print(f"marked {len(ended)} dead run(s) failed and freed their slots: {ended}")
    with _stop_on_untaken_interrupt(instance):
        return dg.materialize(
            assets, instance=instance, tags={**(tags or {}), **process_tags()}, **kwargs
        )
