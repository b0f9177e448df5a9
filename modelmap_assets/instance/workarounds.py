"""Every use of Dagster's private modules (`dagster._...`) in modelmap, each behind a guard.

Each workaround reaches into Dagster's internals for a behaviour Dagster does not offer
publicly, and finds what it needs through `private()`. When the installed Dagster no longer has
that module or attribute, or they no longer have the shape a workaround relies on (checked
when it is applied: what the patched class records, the health answer built once, Dagster's
interrupt test called once), the workaround is off: one warning a process says so (printed
under `-W error`), and the code location, the daemon and the instance load and run with
Dagster's own behaviour. Applying a workaround logs one line saying whether it is on.

- `pool_wait`: a run waiting for a `gpu` slot sleeps until its next claim (patches
  `InstanceConcurrencyContext.interval_to_next_pending_claim_check`). Off: the waiting run
  spins a core.
- `backfill_interval`: `modelmap-daemon` picks up backfills every `MODELMAP_BACKFILL_SECONDS`
  (sets `dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`). Off: Dagster's 30 s.
- `run_worker_health`: `LocalRunLauncher` answers the run-monitoring daemon's health check
  (builds `dagster._core.launcher.CheckRunHealthResult` and `WorkerStatus`). Off: a run whose
  worker was killed stays "started" and keeps its `gpu` slot.
- `interrupt_watch`: Ctrl-C stops an in-process run waiting for a slot (reads
  `dagster._utils.interrupts.check_captured_interrupt`). Off: Ctrl-C waits for the slot.

`ALL` lists them; `active()` says which are on for the installed Dagster.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from importlib import import_module
from typing import Any

import dagster as dg

POOL_WAIT = "pool_wait"
BACKFILL_INTERVAL = "backfill_interval"
RUN_WORKER_HEALTH = "run_worker_health"
INTERRUPT_WATCH = "interrupt_watch"
ALL = (POOL_WAIT, BACKFILL_INTERVAL, RUN_WORKER_HEALTH, INTERRUPT_WATCH)

_CONCURRENCY = "dagster._core.execution.plan.instance_concurrency_context"
_CONTROLLER = "dagster._daemon.controller"
_BACKFILL = "dagster._daemon.backfill"
_LAUNCHER = "dagster._core.launcher"
_INTERRUPTS = "dagster._utils.interrupts"
_CLAIM_CHECK = "interval_to_next_pending_claim_check"
DAEMON_INTERVAL = "DEFAULT_DAEMON_INTERVAL_SECONDS"

log = dg.get_dagster_logger("modelmap.workarounds")


class Unavailable(Exception):
    """A private part of Dagster this workaround needs is not in the installed Dagster."""


def private(module: str, attribute: str = "") -> Any:
    """`module.attribute` (a dotted path inside the module; the module itself when empty) from
    Dagster's private modules: the one guarded way in.

    Raises `Unavailable` when the module or the attribute is gone (any import error of the
    module counts: a changed Dagster must never stop a caller from loading)."""
    try:
        found = import_module(module)
        for part in attribute.split(".") if attribute else ():
            found = getattr(found, part)
    except Exception as error:  # whatever a changed private module raises on import
        raise Unavailable(f"{module}.{attribute} is not in this Dagster ({error})") from error
    return found


def _say(line: str) -> None:
    """Log `line` to Dagster's log, or to stderr in a process that has no log set up yet (the
    daemon before Dagster's own start, the `modelmap` command)."""
    if log.hasHandlers():
        log.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


def _on(name: str, why: str) -> bool:
    _say(f"Dagster workaround {name} on: {why}")
    return True


def _not_needed(name: str, why: str) -> bool:
    _say(f"Dagster workaround {name} off: {why}")
    return False


#: The workarounds found off in this process (each warned about once).
_WARNED: set[str] = set()


def _unavailable(name: str, why: object) -> bool:
    """Warn, once per process, that workaround `name` is off. Under `-W error` the warning is
    printed instead of raised: a changed Dagster never stops a caller from loading."""
    if name in _WARNED:
        return False
    _WARNED.add(name)
    line = f"Dagster workaround {name} off: {why}; Dagster's own behaviour applies"
    try:
        warnings.warn(line, stacklevel=3)
    except Warning:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return False


# pool_wait ---------------------------------------------------------------------------------
#
# While a step waits for a slot of its pool, Dagster's executor asks the concurrency context
# how long to sleep before it tries the claim again. Dagster 1.13 returns
# min(0, time to each next claim), never more than 0, so the run loops without sleeping: a
# waiting scoring run took 60-80% of a core from the run that held the slot (measured in a
# 50-model backfill on 2 cores). The patch returns the time to the earliest next try (at
# least 0), the sleep Dagster means to take; the claims, their back-off and priorities stay
# Dagster's. (Upstream: dagster-io/dagster pull request 20367, closed unmerged.)


def interval_to_next_pending_claim_check(self) -> float:
    """Seconds until the earliest pending claim's next try (0 when none is pending). On a
    context whose internals are not the ones read here, Dagster's own method answers."""
    try:
        claims, timeouts = self._pending_claims, self._pending_timeouts
        if not claims or not timeouts:
            return 0.0
        return max(0.0, min(timeouts.values()) - time.time())
    except Exception as error:
        _unavailable(POOL_WAIT, f"the concurrency context's internals changed ({error!r})")
        return DAGSTER_ORIGINALS[POOL_WAIT](self)


def has_busy_wait(method: Callable[[Any], float], context_class: type) -> bool:
    """Whether Dagster's `method` returns no sleep while a claim's next try is 5 s away.

    Raises `Unavailable` when the context's internals are not the ones the patch reads."""
    try:
        context = object.__new__(context_class)
        context._pending_claims = {"step"}
        context._pending_timeouts = {"step": time.time() + 5.0}
        return method(context) <= 0.0
    except Exception as error:
        raise Unavailable(f"{context_class.__name__}'s internals changed ({error!r})") from error


#: Dagster's own methods that a workaround replaced, by workaround.
DAGSTER_ORIGINALS: dict[str, Callable] = {}


def _pool_wait_parts() -> tuple[type, Callable] | None:
    """Dagster's concurrency context class and its current method; None when this Dagster
    sleeps already (the workaround is not needed)."""
    context_class = private(_CONCURRENCY, "InstanceConcurrencyContext")
    current = private(_CONCURRENCY, f"InstanceConcurrencyContext.{_CLAIM_CHECK}")
    written = getattr(getattr(context_class.__init__, "__code__", None), "co_names", ())
    if not {"_pending_claims", "_pending_timeouts"} <= set(written):
        raise Unavailable("the concurrency context no longer keeps the pending claims read here")
    if current is interval_to_next_pending_claim_check or has_busy_wait(current, context_class):
        return context_class, current
    return None


def patch_pool_wait() -> bool:
    """Make a run waiting for a pool slot sleep until its next claim; True when on. Every
    process that loads the code location applies it (`defs`), and so does `materialize_here`."""
    try:
        parts = _pool_wait_parts()
    except Unavailable as error:
        return _unavailable(POOL_WAIT, error)
    if parts is None:
        return _not_needed(POOL_WAIT, "this Dagster sleeps while a run waits for a pool slot")
    context_class, current = parts
    if current is not interval_to_next_pending_claim_check:
        DAGSTER_ORIGINALS[POOL_WAIT] = current
        setattr(context_class, _CLAIM_CHECK, interval_to_next_pending_claim_check)
    return _on(POOL_WAIT, "a run waiting for a pool slot sleeps until its next claim")


# backfill_interval -------------------------------------------------------------------------
#
# Dagster 1.13's backfill daemon looks for new and running backfills every 30 s, a module
# constant read once when the backfill loop starts, not an instance setting: a launched
# backfill waited 15 s on average before its first run existed, most of the platform's
# overhead for a batch of small models.


def _backfill_interval_parts() -> Any:
    """The modules whose constant the backfill loop reads: Dagster's daemon controller (the
    loop imports the constant from it when it starts), and the backfill module as well when
    that module binds the constant itself."""
    controller = private(_CONTROLLER)
    private(_CONTROLLER, DAEMON_INTERVAL)
    backfill = private(_BACKFILL)
    loop = private(_BACKFILL, "execute_backfill_iteration_loop")
    if DAEMON_INTERVAL not in getattr(getattr(loop, "__code__", None), "co_names", ()):
        raise Unavailable(f"this Dagster's backfill loop does not read {DAEMON_INTERVAL}")
    return (controller, backfill) if hasattr(backfill, DAEMON_INTERVAL) else (controller,)


def set_backfill_interval(seconds: int) -> bool:
    """Make the backfill daemon's loop (started after this call) run every `seconds`; True when
    on. `modelmap-daemon` applies it before the daemon's threads start."""
    try:
        modules = _backfill_interval_parts()
    except Unavailable as error:
        return _unavailable(BACKFILL_INTERVAL, f"{error}: MODELMAP_BACKFILL_SECONDS is ignored")
    for module in modules:
        setattr(module, DAEMON_INTERVAL, seconds)
    return _on(BACKFILL_INTERVAL, f"the backfill daemon runs every {seconds} s")


# run_worker_health -------------------------------------------------------------------------
#
# A launcher answers the run-monitoring daemon's health check with Dagster's
# `CheckRunHealthResult` and `WorkerStatus`, which Dagster does not export.


def _run_worker_health_parts() -> tuple[type, Any]:
    """Dagster's result class and status enum, checked by building both answers a health
    check gives (a changed shape turns the workaround off before the daemon asks)."""
    result, status = private(_LAUNCHER, "CheckRunHealthResult"), private(_LAUNCHER, "WorkerStatus")
    try:
        result(status.RUNNING, "probe"), result(status.FAILED, "probe")
    except Exception as error:
        raise Unavailable(f"CheckRunHealthResult or WorkerStatus changed ({error!r})") from error
    return result, status


def run_worker_health() -> bool:
    """Whether a launcher can answer the run-monitoring daemon's health check; True when on.
    `LocalRunLauncher` asks once, when the instance creates it."""
    try:
        _run_worker_health_parts()
    except Unavailable as error:
        return _unavailable(RUN_WORKER_HEALTH, error)
    return _on(RUN_WORKER_HEALTH, "the run-monitoring daemon sees a run whose worker is gone")


def health_check_result(alive: bool, message: str) -> Any:
    """Dagster's answer to a health check: the worker is running (`alive`) or failed."""
    result, status = _run_worker_health_parts()
    return result(status.RUNNING if alive else status.FAILED, message)


# interrupt_watch ---------------------------------------------------------------------------
#
# While a step waits for a pool slot, Dagster only notes a Ctrl-C (or SIGTERM) for its next
# checkpoint, which a waiting run never reaches; Dagster's note is private.


def _interrupt_watch_parts() -> Callable[[], bool]:
    """Dagster's test, checked by calling it (it only reads a flag)."""
    check = private(_INTERRUPTS, "check_captured_interrupt")
    try:
        answer = check()
    except Exception as error:
        raise Unavailable(f"check_captured_interrupt changed ({error!r})") from error
    if not isinstance(answer, bool):
        raise Unavailable(f"check_captured_interrupt answers {type(answer).__name__}, not bool")
    return check


def interrupt_check() -> Callable[[], bool] | None:
    """Dagster's "an interrupt was captured" test (no checkpoint has taken it yet while it
    returns True); None when off."""
    try:
        check = _interrupt_watch_parts()
    except Unavailable as error:
        _unavailable(INTERRUPT_WATCH, error)
        return None
    _on(INTERRUPT_WATCH, "Ctrl-C stops an in-process run waiting for a pool slot")
    return check


def active() -> list[str]:
    """The workarounds that are on for the installed Dagster, in `ALL`'s order; nothing is
    applied, logged or warned."""
    parts = {
        POOL_WAIT: _pool_wait_parts,
        BACKFILL_INTERVAL: _backfill_interval_parts,
        RUN_WORKER_HEALTH: _run_worker_health_parts,
        INTERRUPT_WATCH: _interrupt_watch_parts,
    }
    on = []
    for name in ALL:
        try:
            if parts[name]() is not None:
                on.append(name)
        except Unavailable:
            continue
    return on
