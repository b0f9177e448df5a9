"""`modelmap-daemon`: Dagster's daemon, with new backfills picked up within seconds.

Dagster 1.13's backfill daemon looks for new and running backfills every 30 s, a module
constant rather than an instance setting, so a backfill launched from the UI or `modelmap
backfill` waits 15 s on average and up to 30 s before its first run exists: for a 50-model
batch of small models that scores in 15-60 s, most of the platform's overhead.

`modelmap-daemon` is `dagster-daemon` (same commands and options: `modelmap-daemon run -w
workspace.yaml`) with that interval set to `MODELMAP_BACKFILL_SECONDS` (default 5;
resources/settings.py) before the daemon's threads start (the `backfill_interval` workaround
in `workarounds.py`: on a Dagster without the constant, one warning and Dagster's 30 s). It
imports what `dagster-daemon` does and no more (no torch: about 100 MB, as Dagster's own).
The loop sleeps only what is left of the interval after an iteration, so a slow iteration on
a large backfill is never run twice at once. The same constant is the automation daemon's
interval when automation runs without sensors; modelmap's automation is a sensor
(`modelmap_automation`, `MODELMAP_AUTOMATION_SECONDS`), which has its own interval.

A plain `dagster-daemon run` (or a Helm chart's daemon) works as before, with Dagster's 30 s.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

from modelmap_assets.instance import workarounds
from resources.settings import interval_setting


def main() -> None:
    """`dagster-daemon` with the backfill interval of the settings (the `modelmap-daemon`
    command)."""
    (command,) = entry_points(group="console_scripts", name="dagster-daemon")
    dagster_daemon = command.load()
    workarounds.set_backfill_interval(interval_setting("MODELMAP_BACKFILL_SECONDS"))
    sys.argv[0] = "dagster-daemon"
    dagster_daemon()


if __name__ == "__main__":
    main()
