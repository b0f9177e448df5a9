"""The pool-wait patch on its own (fast tier); `test_stuck_slots.py` measures a real waiting
run's CPU."""

import time

from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)

from modelmap_assets.instance import pool_wait


def _context(timeouts: dict[str, float]) -> InstanceConcurrencyContext:
    context = object.__new__(InstanceConcurrencyContext)
    context._pending_claims = set(timeouts)
    context._pending_timeouts = dict(timeouts)
    return context


def test_a_waiting_run_sleeps_until_its_earliest_next_claim():
    assert pool_wait.patch()  # this Dagster has the busy wait
    assert pool_wait.patch()  # and patching twice is harmless
    now = time.time()
    sleep = _context({"a": now + 3.0, "b": now + 1.0}).interval_to_next_pending_claim_check()
    assert 0.5 < sleep <= 1.0
    assert _context({"a": now - 2.0}).interval_to_next_pending_claim_check() == 0.0
    assert _context({}).interval_to_next_pending_claim_check() == 0.0


def test_changed_dagster_internals_leave_dagster_alone(monkeypatch):
    def renamed(self):
        return self._claims_waiting  # an attribute this Dagster does not have

    monkeypatch.setattr(pool_wait, "_ORIGINAL", renamed)
    assert pool_wait.has_busy_wait() is False


def test_the_code_location_applies_it(monkeypatch):
    from modelmap_assets.definitions import defs

    original = pool_wait._ORIGINAL
    monkeypatch.setattr(
        InstanceConcurrencyContext, "interval_to_next_pending_claim_check", original
    )
    defs()

    method = InstanceConcurrencyContext.interval_to_next_pending_claim_check
    assert method is pool_wait._interval_to_next_pending_claim_check
