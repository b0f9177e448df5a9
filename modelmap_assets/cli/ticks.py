"""The daemon's loop, in one process: tick the Hub sensor, run what it asks, then automation.

`make ui` runs the real `dagster-daemon`. The demo and the end-to-end tests use this loop
instead, so they follow the same decisions (the sensor's cursor and run requests, the
declarative automation conditions) without a run subprocess per model.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from modelmap_assets import definitions
from modelmap_assets.definitions import ASSETS, PER_MODEL
from modelmap_assets.instance.inprocess import materialize_here
from modelmap_assets.partitions import models_partitions

DOWNSTREAM = dg.AssetSelection.assets(*definitions.DOWNSTREAM)


@dataclass
class TickLog:
    added: list[str] = field(default_factory=list)  # partitions the sensor added
    scored: list[str] = field(default_factory=list)  # per-model runs that succeeded
    failed: dict[str, str] = field(default_factory=dict)  # key -> failure message
    refreshed: list[list[str]] = field(default_factory=list)  # assets of each automation run


class LocalDaemon:
    """Ticks `hub_models_sensor` and the automation of `DOWNSTREAM`, keeping their cursors."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        resources: dict,
        log: Callable[[str], None] = print,
    ):
        self.defs, self.instance, self.resources, self.log = defs, instance, resources, log
        self.sensor = defs.resolve_sensor_def("hub_models_sensor")
        self.sensor_cursor: str | None = None
        self.automation_cursor = None

    def run_until_idle(self, max_rounds: int = 100) -> TickLog:
        """Alternate sensor ticks and automation ticks until neither asks for anything."""
        out = TickLog()
        for _ in range(max_rounds):
            requests = self._sensor_tick(out)
            for request in requests:
                self._run(request, out)
            refreshed = self._automation_tick(out)
            if not requests and not refreshed:
                return out
        raise RuntimeError(f"still busy after {max_rounds} rounds of ticks")

    def _sensor_tick(self, out: TickLog) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(
            instance=self.instance, cursor=self.sensor_cursor, resources=self.resources
        )
        result = self.sensor(context)
        if isinstance(result, dg.SkipReason):
            self.log(f"hub_models_sensor: {result.skip_message}")
            return []
        self.sensor_cursor = result.cursor or self.sensor_cursor
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
            out.added += list(request.partition_keys)
        if result.skip_reason:
            self.log(f"hub_models_sensor: {result.skip_reason.skip_message}")
        return list(result.run_requests or [])

    def _run(self, request: dg.RunRequest, out: TickLog) -> None:
        """One requested run: a model alone, or a batch (a range of partitions)."""
        from modelmap_assets.cli.main import model_failure_message
        from modelmap_assets.sensors import requested_models

        order = list(self.instance.get_dynamic_partitions(models_partitions.name))
        keys = requested_models(request, order)
        self.log(f"hub_models_sensor requested {', '.join(keys)}")
        run = materialize_here(
            ASSETS,
            selection=PER_MODEL,
            partition_key=request.partition_key,
            tags=request.tags,
            instance=self.instance,
            resources=self.resources,
            raise_on_error=False,
        )
        written = {
            e.partition
            for e in run.get_asset_materialization_events()
            if e.asset_key == dg.AssetKey("likelihood")
        }
        for key in keys:
            if run.success or key in written:
                out.scored.append(key)
            else:
                out.failed[key] = model_failure_message(run, key)
                self.log(f"{key} failed: {out.failed[key]}")

    def _automation_tick(self, out: TickLog) -> list[str]:
        names = self._evaluate_and_run(out)
        if names:
            # Let automation see its own refresh before new scores land. Otherwise the next
            # evaluation sees the refresh (which resets `eager`'s since-condition) and the new
            # dependency updates at once, the reset wins, and those models wait for yet another
            # update. The settling tick normally requests nothing.
            while self._evaluate_and_run(out):
                pass
        return names

    def _evaluate_and_run(self, out: TickLog) -> list[str]:
        evaluation = dg.evaluate_automation_conditions(
            self.defs, self.instance, asset_selection=DOWNSTREAM, cursor=self.automation_cursor
        )
        self.automation_cursor = evaluation.cursor
        keys = [
            k
            for k in DOWNSTREAM.resolve(self.defs.resolve_asset_graph())
            if evaluation.get_num_requested(k)
        ]
        if not keys:
            return []
        names = sorted(k.to_user_string() for k in keys)
        self.log(f"automation requested {', '.join(names)}")
        materialize_here(ASSETS, selection=keys, instance=self.instance, resources=self.resources)
        out.refreshed.append(names)
        return names
