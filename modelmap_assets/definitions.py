"""The modelmap code location: assets, jobs, automation and resources, assembled."""

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from modelmap_assets.corpus import corpus
from modelmap_assets.geometry import coordinates, kl_table, model_map
from modelmap_assets.reports import (
    benchmark_scores,
    leakage_report,
    lineage_report,
    regression_report,
)
from modelmap_assets.scoring import likelihood
from modelmap_assets.sensors import build_hub_models_sensor
from resources.benchmarks import BenchmarkResource
from resources.hub import HubResource
from resources.mlflow import MlflowResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource

# Per model (one run per `models` partition) and over all models (refreshed by automation).
PER_MODEL = [likelihood, benchmark_scores]
DOWNSTREAM = [coordinates, kl_table, model_map, regression_report, leakage_report, lineage_report]
ASSETS = [corpus, *PER_MODEL, *DOWNSTREAM]


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Model weights and other rebuildable files (never in git)."""
    return Path(env.get("MODELMAP_CACHE", ".cache/modelmap")).resolve()


def build_resources(env: Mapping[str, str] = os.environ) -> dict:
    """Resources from the environment: the one place that reads modelmap's settings."""
    cache = cache_dir(env)
    return {
        "storage": StorageResource(base_dir=str(Path(env.get("MODELMAP_DATA", "data")).resolve())),
        "scorer": ScorerResource(
            device=env.get("MODELMAP_DEVICE", "auto"),
            dtype=env.get("MODELMAP_DTYPE", "float32"),
            token_budget=int(env["MODELMAP_TOKEN_BUDGET"])
            if env.get("MODELMAP_TOKEN_BUDGET")
            else None,
        ),
        # Folders of local models (the zoo); empty: every key is a Hub repo.
        "model_source": ModelSourceResource(
            local_dirs=[
                d
                for d in env.get(
                    "MODELMAP_LOCAL_MODELS",
                    os.pathsep.join([str(cache / "zoo"), str(cache / "smollm2")]),
                ).split(os.pathsep)
                if d
            ]
        ),
        "hub": build_hub_resource(env),
        "benchmarks": BenchmarkResource(
            scores_file=env.get("MODELMAP_BENCHMARK_FILE") or None,
            tasks_dir=env.get("MODELMAP_TASKS_DIR") or None,
            measure=env.get("MODELMAP_BENCHMARK_MEASURE", "missing"),
        ),
        # MLFLOW_TRACKING_URI overrides the default SQLite store under $DAGSTER_HOME/mlflow.
        "mlflow": MlflowResource(
            tracking_uri=env.get("MLFLOW_TRACKING_URI") or None,
            # on (errors are warnings), off, or required (errors fail the step).
            enabled=env.get("MODELMAP_MLFLOW", "on") != "off",
            required=env.get("MODELMAP_MLFLOW") == "required",
        ),
    }


def build_hub_resource(env: Mapping[str, str] = os.environ) -> HubResource:
    """The Hub to watch: HF_ENDPOINT, HF_TOKEN (bound as an EnvVar, never stored) and limits."""

    def listed(name: str) -> list[str]:
        return [v.strip() for v in env.get(name, "").split(",") if v.strip()]

    max_params = env.get("MODELMAP_HUB_MAX_PARAMS")
    return HubResource(
        endpoint=env.get("HF_ENDPOINT", "https://huggingface.co"),
        token=dg.EnvVar("HF_TOKEN") if env.get("HF_TOKEN") else None,
        authors=listed("MODELMAP_HUB_AUTHORS"),
        search=env.get("MODELMAP_HUB_SEARCH") or None,
        max_parameters=int(max_params) if max_params else None,
        max_models_per_tick=int(env.get("MODELMAP_HUB_MAX_PER_TICK", "5")),
        initial_lookback_hours=float(env.get("MODELMAP_HUB_LOOKBACK_HOURS", "24")),
        allow=listed("MODELMAP_HUB_ALLOW"),
        deny=listed("MODELMAP_HUB_DENY"),
        trust_remote_code_allow=listed("MODELMAP_TRUST_REMOTE_CODE"),
        cache_dir=str(cache_dir(env) / "hub"),
    )


score_models_job = dg.define_asset_job(
    "score_models",
    selection=PER_MODEL,
    description="Score one model (a `models` partition) on the corpus and on the benchmarks.",
)
map_job = dg.define_asset_job(
    "build_map",
    selection=DOWNSTREAM,
    description="Rebuild coordinates, the KL table, the map and the reports from every model.",
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "modelmap_automation",
    target=dg.AssetSelection.assets(*DOWNSTREAM),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[score_models_job, map_job],
    sensors=[
        automation_sensor,
        # Watches the Hub once turned on in the UI (or on by default with MODELMAP_HUB_SENSOR=on).
        build_hub_models_sensor(
            dg.DefaultSensorStatus.RUNNING
            if os.environ.get("MODELMAP_HUB_SENSOR") == "on"
            else dg.DefaultSensorStatus.STOPPED
        ),
    ],
    resources=build_resources(),
    # Steps run inside their run's process: a per-model run is two steps that load the same
    # libraries, and a subprocess per step costs more than the step on a small model (the
    # run itself is already a process of its own; the `gpu` pool still holds each step).
    executor=dg.in_process_executor,
)
