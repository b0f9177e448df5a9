"""When the assets over all models refresh: after every model, or at most once per interval.

At K = 10,000 a full refresh (coordinates, kl_table, model_map, the reports) takes minutes and
models land every few seconds, so refreshing after each one would never catch up. A new model
is placed alone in its own run instead (`modelmap.geometry.neighbours`), and the full refresh
runs at most once per tick of a cron schedule (`MODELMAP_MAP_REFRESH`, default hourly):

* `coordinates` is requested when a model's scores landed since it was last requested and a
  tick of the schedule has passed since then; it does not wait for models still being scored
  (on a busy platform something always is) or for failed or missing ones: the map is built
  from what has been scored. Only the very first map waits until no score is in progress, so
  that a first batch gives one map, not one per model.
* `kl_table`, `model_map`, `lineage_report` and `text_selection` follow their inputs
  (`eager_refresh`): after `coordinates`, in the same run.
* the reports over Q and the benchmark scores (`regression_report`, `leakage_report`) follow
  `coordinates` too, in the same run; a benchmark score alone does not refresh them (its
  model's log-likelihoods come with it, and the next refresh picks both up).

The decorators carry the conditions of the default schedule. `with_schedule` applies the
setting, changing only what depends on it: another cron changes the condition of
`coordinates`; `eager` makes `coordinates` eager and the score reports refresh after every
score once the map's inputs are settled (the behaviour for small maps, tests and the demo).
This module names assets by key only: it imports no asset module.
"""

import dagster as dg

A = dg.AutomationCondition

#: Default interval of the full refresh: hourly, on the hour (UTC).
DEFAULT_SCHEDULE = "0 * * * *"
EAGER = "eager"
COORDINATES = dg.AssetKey("coordinates")

# Refresh after upstream updates, but never wait for a model that failed or is missing: the
# map is built from whatever has been scored. Unlike `AutomationCondition.eager()`, an update
# is forgotten only when a refresh is requested, not when one lands: scores that land while a
# refresh runs (that run may have read the scores before them) bring another refresh, where
# `eager()` would let the refresh's own materialization swallow them until the next model.
# Updates seen on the tick after a request came after that request was made (each tick sees
# only the updates since the one before), so that tick does not forget them.
updated = A.newly_missing() | A.any_deps_updated()
requested = ((A.newly_requested() & ~updated) | A.initial_evaluation()).with_label("requested")
eager_refresh = (
    updated.since(requested) & ~A.any_deps_in_progress() & ~A.in_progress()
).with_label("eager (updates kept until the next request)")


def coordinates_condition(schedule: str = DEFAULT_SCHEDULE) -> dg.AutomationCondition:
    """`coordinates`: eager (``"eager"``), or at most once per tick of a cron ``schedule``."""
    if schedule == EAGER:
        return eager_refresh
    due = A.cron_tick_passed(schedule).since_last_handled()
    first_map = A.missing() & ~A.any_deps_in_progress()
    return (eager_refresh.without(~A.any_deps_in_progress()) & (first_map | due)).with_label(
        f"new scores, at most once per '{schedule}'"
    )


def reports_condition(schedule: str = DEFAULT_SCHEDULE) -> dg.AutomationCondition:
    """A report over Q and the benchmark scores (deps `coordinates` and `benchmark_scores`).

    On a schedule: refreshed with the map (same run), never from a benchmark score alone,
    never while Q is missing and not requested. ``"eager"``: after any update of its inputs,
    but not while the map's own inputs are in progress (a run or a backfill) or while no map
    exists and none is requested in this tick: a report never reads a missing Q or one about
    to be replaced, and it refreshes in the same run as the map.
    """
    only_map = dg.AssetSelection.assets(COORDINATES)
    if schedule == EAGER:
        # New scores usually come with new log-likelihoods: wait for the map's inputs.
        coordinates_pending = A.any_deps_match(
            (A.missing() & ~A.will_be_requested()) | A.any_deps_in_progress()
        ).allow(only_map)
        return (eager_refresh & ~coordinates_pending).with_label("refresh after the map")
    q_missing = A.any_deps_match(A.missing() & ~A.will_be_requested()).allow(only_map)
    return (eager_refresh.allow(only_map) & ~q_missing).with_label("refresh with the map")


def with_schedule(assets: list, schedule: str) -> list:
    """``assets`` with the conditions for ``schedule``: an asset whose decorator carries the
    default schedule's condition of `coordinates` or of a score report gets ``schedule``'s
    (see the module docstring); every other condition is kept as written."""
    scheduled = {
        coordinates_condition(): coordinates_condition(schedule),
        reports_condition(): reports_condition(schedule),
    }

    def swap(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.automation_condition not in scheduled:
            return spec
        return spec.replace_attributes(automation_condition=scheduled[spec.automation_condition])

    return list(dg.map_asset_specs(swap, assets))
