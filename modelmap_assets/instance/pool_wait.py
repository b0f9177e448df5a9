"""A run waiting for a pool slot sleeps instead of spinning (a Dagster bug, worked around).

While a step waits for a slot of its pool (`gpu` here), Dagster's executor asks
`InstanceConcurrencyContext.interval_to_next_pending_claim_check` how long to sleep before it
tries the claim again. Dagster 1.13 returns ``min(0, time to each next claim)``, never more
than 0, so the run loops without sleeping until its next try: the waiting run burns a core.
Measured in a 50-model backfill on 2 cores (two runs of 25 models, the second waiting for the
first's slot): the waiting run took 60-80% of a core for the whole of the first run's scoring,
which scored at 70-170k tokens/s instead of about 500k. (Upstream: the same fix was proposed in
dagster-io/dagster pull request 20367, closed unmerged.)

:func:`patch` replaces the method by one that returns the time to the earliest next try (at
least 0), the sleep Dagster means to take; the claims, their back-off (1 s growing to 15 s)
and their priorities are Dagster's own. It changes nothing when the installed Dagster no
longer has the bug. The code location applies it when Dagster loads it
(`modelmap_assets.definitions.defs`: the code server and every launched run) and so does
`materialize_here` (runs in the caller's process); importing this module changes nothing.
"""

from __future__ import annotations

import time

from dagster._core.execution.plan.instance_concurrency_context import (
    InstanceConcurrencyContext,
)


def _interval_to_next_pending_claim_check(self: InstanceConcurrencyContext) -> float:
    if not self._pending_claims or not self._pending_timeouts:
        return 0.0
    return max(0.0, min(self._pending_timeouts.values()) - time.time())


def has_busy_wait() -> bool:
    """Whether Dagster's own method returns no sleep while a claim's next try is 5 s away.
    False when its internals are no longer the ones this was written for (nothing is patched:
    a changed Dagster must never stop the code location from loading)."""
    try:
        context = object.__new__(InstanceConcurrencyContext)
        context._pending_claims = {"step"}
        context._pending_timeouts = {"step": time.time() + 5.0}
        return _ORIGINAL(context) <= 0.0
    except Exception:
        return False


_ORIGINAL = InstanceConcurrencyContext.interval_to_next_pending_claim_check


def patch() -> bool:
    """Make waiting runs sleep; True when the installed Dagster needed it."""
    if InstanceConcurrencyContext.interval_to_next_pending_claim_check is not _ORIGINAL:
        return True  # already patched
    if not has_busy_wait():
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = (
        _interval_to_next_pending_claim_check
    )
    return True
