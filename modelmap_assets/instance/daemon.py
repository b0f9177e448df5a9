"""`modelmap-daemon`: Dagster's daemon, with new backfills picked up within seconds.

Dagster 1.13's backfill daemon looks for new and running backfills every 30 s. That interval
is a module constant (`dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS`, read once
when the backfill loop starts), not an instance setting, so a backfill launched from the UI
or `modelmap backfill` waited 15 s on average and up to 30 s before its first run existed:
for a 50-model batch of small models that scores in 15-60 s, most of the platform's overhead.

`modelmap-daemon` is `dagster-daemon` (same commands and options: `modelmap-daemon run -w
workspace.yaml`) with that constant set to `MODELMAP_BACKFILL_SECONDS` (default 5;
resources/settings.py) before the daemon's threads start. It imports what `dagster-daemon`
does and no more (no torch: about 100 MB, as Dagster's own).
The loop sleeps only what is left of the interval after an iteration, so a slow iteration on
a large backfill is never run twice at once. The same constant is the automation daemon's
interval when automation runs without sensors; modelmap's automation is a sensor
(`modelmap_automation`, `MODELMAP_AUTOMATION_SECONDS`), which has its own interval.

A plain `dagster-daemon run` (or a Helm chart's daemon) works as before, with Dagster's 30 s.
If a later Dagster no longer has the constant, nothing is changed and a warning says so.
"""

from __future__ import annotations

import sys
import warnings

from resources.settings import interval_setting

CONSTANT = "DEFAULT_DAEMON_INTERVAL_SECONDS"


def set_backfill_interval(seconds: int) -> bool:
    """Make the backfill daemon's loop (started after this call) run every `seconds`; False
    when the installed Dagster has no such constant (nothing is changed)."""
    import dagster._daemon.backfill as backfill
    import dagster._daemon.controller as controller

    loop = getattr(backfill, "execute_backfill_iteration_loop", None)
    if not hasattr(controller, CONSTANT) or CONSTANT not in getattr(
        getattr(loop, "__code__", None), "co_names", ()
    ):
        warnings.warn(
            f"this Dagster's backfill loop does not read {CONSTANT}: "
            "MODELMAP_BACKFILL_SECONDS is ignored, backfills start at Dagster's own interval",
            stacklevel=2,
        )
        return False
    setattr(controller, CONSTANT, seconds)
    return True


def main() -> None:
    """`dagster-daemon` with the backfill interval of the settings (the `modelmap-daemon`
    command)."""
    from dagster._daemon.cli import main as dagster_daemon

    set_backfill_interval(interval_setting("MODELMAP_BACKFILL_SECONDS"))
    sys.argv[0] = "dagster-daemon"
    dagster_daemon()


if __name__ == "__main__":
    main()
