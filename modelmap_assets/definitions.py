"""The modelmap code location: assets, jobs, automation and resources, assembled.

Importing this module reads no setting: `defs` is loaded by Dagster (or called by a test)
and binds the environment's settings then (`resources/settings.py`).
"""

import dagster as dg

from modelmap_assets.automation.conditions import with_schedule
from modelmap_assets.automation.hub_sensor import build_hub_models_sensor
from modelmap_assets.automation.jobs import score_models_job
from modelmap_assets.automation.retry_sensor import batch_retry_sensor
from modelmap_assets.corpus.assets import corpus
from modelmap_assets.geometry.coordinates import coordinates
from modelmap_assets.geometry.kl_table import kl_table
from modelmap_assets.geometry.model_map import model_map
from modelmap_assets.geometry.text_selection import text_selection
from modelmap_assets.instance import workarounds
from modelmap_assets.reports.leakage import leakage_report
from modelmap_assets.reports.lineage import lineage_report
from modelmap_assets.reports.regression import regression_report
from modelmap_assets.scoring.assets import likelihood
from modelmap_assets.scoring.benchmarks import benchmark_scores
from resources.settings import build_resources, code_location_setting, interval_setting

# Per model (a run scores one model or a batch) and over all models (refreshed by automation).
PER_MODEL = [likelihood, benchmark_scores]
DOWNSTREAM = [
    coordinates,
    kl_table,
    model_map,
    regression_report,
    leakage_report,
    lineage_report,
    text_selection,
]
ASSETS = [corpus, *PER_MODEL, *DOWNSTREAM]


map_job = dg.define_asset_job(
    "build_map",
    selection=DOWNSTREAM,
    description="Rebuild coordinates, the KL table, the map and the reports from every model.",
)


def automation_sensor(minimum_interval_seconds: int = 30) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        "modelmap_automation",
        target=dg.AssetSelection.assets(*DOWNSTREAM),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
    )


@dg.definitions
def defs() -> dg.Definitions:
    # Every process that loads the code location (code server, each run) gets this: a run
    # waiting for the `gpu` slot sleeps instead of spinning on a core (a Dagster bug).
    workarounds.patch_pool_wait()
    return dg.Definitions(
        assets=with_schedule(ASSETS, code_location_setting("MODELMAP_MAP_REFRESH")),
        jobs=[score_models_job, map_job],
        # The Hub sensor starts off: turn it on in the UI (Automation) or with
        # `dagster sensor start hub_models_sensor`; the automation sensor starts on.
        sensors=[
            automation_sensor(interval_setting("MODELMAP_AUTOMATION_SECONDS")),
            build_hub_models_sensor(
                minimum_interval_seconds=interval_setting("MODELMAP_HUB_POLL_SECONDS")
            ),
            # Runs each model that failed in a batch alone, so it fails with its own cause.
            batch_retry_sensor,
        ],
        resources=build_resources(),
        # Steps run inside their run's process: a scoring run is two steps that load the
        # same libraries, and a subprocess per step costs more than the step on a small model
        # (the run itself is already a process of its own; the `gpu` pool still holds each
        # step).
        executor=dg.in_process_executor,
    )
