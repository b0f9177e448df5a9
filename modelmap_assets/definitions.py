"""The modelmap code location: assets, jobs, automation and resources, assembled."""

import os
from collections.abc import Mapping
from pathlib import Path

import dagster as dg

from modelmap_assets.corpus import corpus
from modelmap_assets.likelihood import likelihood
from modelmap_assets.maps import coordinates, kl_table, model_map
from modelmap_assets.partitions import models_partitions
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource

ASSETS = [corpus, likelihood, coordinates, kl_table, model_map]


def cache_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Model weights and other rebuildable files (never in git)."""
    return Path(env.get("MODELMAP_CACHE", ".cache/modelmap")).resolve()


def build_resources(env: Mapping[str, str] = os.environ) -> dict:
    """Resources from the environment: the one place that reads modelmap's settings."""
    cache = cache_dir(env)
    allow = env.get("MODELMAP_TRUST_REMOTE_CODE", "")
    return {
        "storage": StorageResource(base_dir=str(Path(env.get("MODELMAP_DATA", "data")).resolve())),
        "scorer": ScorerResource(
            device=env.get("MODELMAP_DEVICE", "auto"),
            dtype=env.get("MODELMAP_DTYPE", "float32"),
            token_budget=int(env.get("MODELMAP_TOKEN_BUDGET", "16384")),
        ),
        "model_source": ModelSourceResource(
            local_dirs=[str(cache / "zoo")],
            hub_cache_dir=str(cache / "hub"),
            trust_remote_code_allow=[k for k in allow.split(",") if k],
        ),
    }


score_models_job = dg.define_asset_job(
    "score_models",
    selection=[likelihood],
    partitions_def=models_partitions,
    description="Score one model (a `models` partition) on the corpus.",
)
map_job = dg.define_asset_job(
    "build_map",
    selection=[coordinates, kl_table, model_map],
    description="Rebuild coordinates, the KL table and the map from every scored model.",
)

automation_sensor = dg.AutomationConditionSensorDefinition(
    "modelmap_automation",
    target=dg.AssetSelection.assets(coordinates, kl_table, model_map),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[score_models_job, map_job],
    sensors=[automation_sensor],
    resources=build_resources(),
)
