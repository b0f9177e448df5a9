"""Dagster's internals in one guarded place (`modelmap_assets/instance/workarounds.py`): which
workarounds the installed Dagster needs, each one's effect, and a changed Dagster turning a
workaround off with one warning instead of an error (fast tier)."""

import time
import types
import warnings
from pathlib import Path

import dagster as dg
import dagster._daemon.backfill as backfill
import dagster._daemon.controller as controller
import pytest
from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from modelmap_assets.instance import workarounds
from modelmap_assets.instance.inprocess import materialize_here
from modelmap_assets.runs import IN_PROGRESS_STATUSES

DAGSTER_HOME = Path(__file__).resolve().parents[1] / "dagster_home"
#: The workarounds each Dagster release needs (a new release: add its line after checking).
EXPECTED = {
    "1.13.27": ["pool_wait", "backfill_interval", "run_worker_health", "interrupt_watch"],
}


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test warns as a new process would (a workaround found off warns once a process)."""
    monkeypatch.setattr(workarounds, "_WARNED", set())


def test_the_workarounds_the_installed_dagster_needs():
    assert workarounds.active() == EXPECTED[dg.__version__]


def test_in_progress_runs_are_listed_with_public_statuses():
    """Deleted rather than guarded: the statuses are Dagster's own in-progress set."""
    assert set(IN_PROGRESS_STATUSES) == set(IN_PROGRESS_RUN_STATUSES)


def _workaround_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "Dagster workaround" in str(w.message)]


def _module_gone(name: str, *args, **kwargs):
    raise ModuleNotFoundError(f"No module named {name!r}")


def _attribute_gone(name: str, *args, **kwargs):
    return types.ModuleType(name)  # the module is there, without what the workaround reads


@pytest.fixture(params=[_module_gone, _attribute_gone], ids=["module gone", "attribute gone"])
def changed_dagster(request, monkeypatch):
    """Dagster's private modules as a later Dagster might have them, seen through the guard."""
    monkeypatch.setattr(workarounds, "import_module", request.param)
    monkeypatch.setattr(controller, workarounds.DAEMON_INTERVAL, 30)


def test_a_changed_dagster_turns_each_workaround_off_with_one_warning(changed_dagster, tmp_path):
    method = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    applications = {
        "pool_wait": workarounds.patch_pool_wait,
        "backfill_interval": lambda: workarounds.set_backfill_interval(4),
        "run_worker_health": workarounds.run_worker_health,
        "interrupt_watch": lambda: workarounds.interrupt_check() is not None,
    }
    assert list(applications) == list(workarounds.ALL)
    for name, apply in applications.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert apply() is False
        (warning,) = _workaround_warnings(caught)
        assert warning.startswith(f"Dagster workaround {name} off:")
    assert workarounds.active() == []
    # Dagster itself is left as it is.
    assert InstanceConcurrencyContext.interval_to_next_pending_claim_check is method
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30

    # Once a process: applying them again says nothing more.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not any(apply() for apply in applications.values())
    assert _workaround_warnings(caught) == []

    # The instance of the committed dagster.yaml loads; its launcher is Dagster's default.
    workarounds._WARNED.clear()  # as in a new process
    (tmp_path / "dagster.yaml").write_text((DAGSTER_HOME / "dagster.yaml").read_text())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert instance.run_launcher.supports_check_run_worker_health is False
    assert len(_workaround_warnings(caught)) == 1

    # An in-process run still runs (unwatched for Ctrl-C, its waits unpatched).
    @dg.asset
    def one() -> int:
        return 1

    workarounds._WARNED.clear()  # as in a new process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dg.DagsterInstance.ephemeral() as instance:
            assert materialize_here([one], instance=instance).success
    assert [w.split(":")[0] for w in _workaround_warnings(caught)] == [
        "Dagster workaround pool_wait off",
        "Dagster workaround interrupt_watch off",
    ]


def test_applying_a_workaround_logs_whether_it_is_on(caplog):
    with caplog.at_level("INFO", logger="dagster.builtin"):
        assert workarounds.interrupt_check() is not None
    assert "Dagster workaround interrupt_watch on:" in caplog.text


# pool_wait ---------------------------------------------------------------------------------


def _context(timeouts: dict[str, float]) -> InstanceConcurrencyContext:
    context = object.__new__(InstanceConcurrencyContext)
    context._pending_claims = set(timeouts)
    context._pending_timeouts = dict(timeouts)
    return context


def test_a_waiting_run_sleeps_until_its_earliest_next_claim():
    assert workarounds.patch_pool_wait()  # this Dagster has the busy wait
    assert workarounds.patch_pool_wait()  # and patching twice is harmless
    now = time.time()
    sleep = _context({"a": now + 3.0, "b": now + 1.0}).interval_to_next_pending_claim_check()
    assert 0.5 < sleep <= 1.0
    assert _context({"a": now - 2.0}).interval_to_next_pending_claim_check() == 0.0
    assert _context({}).interval_to_next_pending_claim_check() == 0.0


def test_dagsters_own_method_busy_waits_and_a_renamed_internal_is_left_alone():
    workarounds.patch_pool_wait()
    original = workarounds.DAGSTER_ORIGINALS["pool_wait"]
    assert workarounds.has_busy_wait(original, InstanceConcurrencyContext)

    def renamed(self):
        return self._claims_waiting  # an attribute this Dagster does not have

    with pytest.raises(workarounds.Unavailable, match="internals changed"):
        workarounds.has_busy_wait(renamed, InstanceConcurrencyContext)


def test_a_dagster_that_sleeps_needs_no_patch(monkeypatch):
    def sleeps(self):
        return 5.0

    monkeypatch.setattr(InstanceConcurrencyContext, "interval_to_next_pending_claim_check", sleeps)
    assert workarounds.patch_pool_wait() is False
    assert InstanceConcurrencyContext.interval_to_next_pending_claim_check is sleeps


def test_the_code_location_applies_it(monkeypatch):
    from modelmap_assets.definitions import defs

    workarounds.patch_pool_wait()
    original = workarounds.DAGSTER_ORIGINALS["pool_wait"]
    monkeypatch.setattr(
        InstanceConcurrencyContext, "interval_to_next_pending_claim_check", original
    )
    defs()

    method = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    assert method is workarounds.interval_to_next_pending_claim_check


# backfill_interval -------------------------------------------------------------------------


def test_the_backfill_loop_reads_the_interval_that_is_set(monkeypatch):
    monkeypatch.setattr(controller, workarounds.DAEMON_INTERVAL, 30)  # restored after the test
    assert workarounds.set_backfill_interval(4) is True
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 4


def test_a_backfill_loop_without_the_constant_is_left_alone(monkeypatch):
    def loop(*args, **kwargs):  # a backfill loop that reads no such constant
        yield None

    monkeypatch.setattr(controller, workarounds.DAEMON_INTERVAL, 30)
    monkeypatch.setattr(backfill, "execute_backfill_iteration_loop", loop)
    with pytest.warns(UserWarning, match="MODELMAP_BACKFILL_SECONDS is ignored"):
        assert workarounds.set_backfill_interval(4) is False
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30


# run_worker_health -------------------------------------------------------------------------


def test_a_health_check_answer_is_dagsters():
    running = workarounds.health_check_result(True, "alive")
    failed = workarounds.health_check_result(False, "gone")
    assert isinstance(running, CheckRunHealthResult)
    assert (running.status, running.msg) == (WorkerStatus.RUNNING, "alive")
    assert (failed.status, failed.msg) == (WorkerStatus.FAILED, "gone")


# what a changed Dagster may do besides removing a name (found by an adversarial review) ----


def _raising_import(name: str, *args, **kwargs):
    raise RuntimeError(f"{name} cannot be imported here")  # not an ImportError


def test_a_private_module_that_raises_anything_on_import_turns_workarounds_off(monkeypatch):
    monkeypatch.setattr(workarounds, "import_module", _raising_import)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert workarounds.run_worker_health() is False
        assert workarounds.interrupt_check() is None
        assert workarounds.active() == []
    assert len(_workaround_warnings(caught)) == 2


def test_warnings_as_errors_never_stop_a_caller(monkeypatch, capsys):
    monkeypatch.setattr(workarounds, "import_module", _module_gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert workarounds.run_worker_health() is False
    assert "Dagster workaround run_worker_health off" in capsys.readouterr().err


def test_pool_wait_is_off_when_the_context_keeps_its_claims_elsewhere(monkeypatch):
    class Renamed:  # a later Dagster's context, keeping its claims under other names
        def __init__(self):
            self._claims = set()
            self._deadlines = {}

        def interval_to_next_pending_claim_check(self) -> float:
            return 0.0  # busy-waits, but the patch could not read its claims

    module = types.ModuleType("ctx")
    module.InstanceConcurrencyContext = Renamed
    monkeypatch.setattr(workarounds, "import_module", lambda name: module)
    with pytest.warns(UserWarning, match="pool_wait off: the concurrency context no longer"):
        assert workarounds.patch_pool_wait() is False
    assert Renamed().interval_to_next_pending_claim_check() == 0.0  # left as Dagster has it


def test_the_patch_defers_to_dagster_on_a_context_without_the_internals_it_reads():
    workarounds.patch_pool_wait()
    context = object.__new__(InstanceConcurrencyContext)  # no pending claims recorded at all
    original = workarounds.DAGSTER_ORIGINALS["pool_wait"]
    with pytest.raises(AttributeError):
        original(context)  # Dagster's own method fails the same way: its error, not ours
    with pytest.warns(UserWarning, match="pool_wait off: the concurrency context's internals"):
        with pytest.raises(AttributeError):
            context.interval_to_next_pending_claim_check()


def test_run_worker_health_is_off_when_the_answer_changed_shape(monkeypatch):
    class Result:
        def __init__(self, *, status, msg):  # keyword-only: the positional call fails
            self.status, self.msg = status, msg

    module = types.ModuleType("launcher")
    module.CheckRunHealthResult, module.WorkerStatus = Result, WorkerStatus
    monkeypatch.setattr(workarounds, "import_module", lambda name: module)
    with pytest.warns(UserWarning, match="run_worker_health off: CheckRunHealthResult"):
        assert workarounds.run_worker_health() is False


def test_interrupt_watch_is_off_when_dagsters_test_changed(monkeypatch):
    module = types.ModuleType("interrupts")
    module.check_captured_interrupt = lambda signal: False  # now needs an argument
    monkeypatch.setattr(workarounds, "import_module", lambda name: module)
    with pytest.warns(UserWarning, match="interrupt_watch off: check_captured_interrupt"):
        assert workarounds.interrupt_check() is None


def test_a_backfill_module_that_binds_the_constant_gets_it_too(monkeypatch):
    monkeypatch.setattr(controller, workarounds.DAEMON_INTERVAL, 30)
    monkeypatch.setattr(backfill, workarounds.DAEMON_INTERVAL, 30, raising=False)
    assert workarounds.set_backfill_interval(4) is True
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 4
    assert getattr(backfill, workarounds.DAEMON_INTERVAL) == 4
