"""Every setting modelmap takes from the environment, in one table: variable -> resource field.

The meaning and the default of a setting are those of the resource field it sets (its
`Field(description=...)` and default); the README's settings table is generated from them
(`scripts/settings_table.py`, checked by `tests/test_settings.py`). Nothing here runs at import:
`buildresource_classes()` is called when Dagster loads the definitions (`@dg.definitions` in
`modelmap_assets/definitions.py`), and binds each variable that is set as a `dg.EnvVar`, so
Dagster resolves it when a run starts and a secret never becomes a plain string in the
definitions. A variable that is not set leaves the field at its default.

Instance settings (storage, run queue, `MODELMAP_PG_*`) stay in `dagster_home/dagster.yaml`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg


@functools.cache
def resource_classes() -> dict[str, type[dg.ConfigurableResource]]:
    """The resources of the code location, by the key assets ask for them with. Imported on
    first use: `modelmap-daemon` reads its setting here without importing torch."""
    from resources.benchmarks import BenchmarkResource
    from resources.hub import HubResource
    from resources.mlflow import MlflowResource
    from resources.models import ModelSourceResource
    from resources.scorer import ScorerResource
    from resources.storage import StorageResource

    return {
        "storage": StorageResource,
        "scorer": ScorerResource,
        "model_source": ModelSourceResource,
        "hub": HubResource,
        "benchmarks": BenchmarkResource,
        "mlflow": MlflowResource,
    }


@dataclass(frozen=True)
class Setting:
    """One environment variable and the resource fields it sets.

    `old_names`: earlier names of the variable, still read (with a warning) when the new name
    is not set. `secret`: always bound as a `dg.EnvVar`, never copied into a value.
    """

    variable: str
    targets: tuple[tuple[str, str], ...]  # (resource key, field name)
    secret: bool = False
    old_names: tuple[str, ...] = ()


def _s(variable: str, *targets: str, secret: bool = False, old_names=()) -> Setting:
    return Setting(variable, tuple(tuple(t.split(".")) for t in targets), secret, tuple(old_names))


SETTINGS: tuple[Setting, ...] = (
    _s("MODELMAP_DATA", "storage.base_dir"),
    _s("MODELMAP_CACHE", "model_source.cache_dir", "hub.cache_dir"),
    _s("MODELMAP_LOCAL_MODELS", "model_source.local_dirs"),
    _s("MODELMAP_DEVICE", "scorer.device"),
    _s("MODELMAP_DTYPE", "scorer.dtype"),
    _s("MODELMAP_TOKEN_BUDGET", "scorer.token_budget"),
    _s("MODELMAP_BENCHMARK_FILE", "benchmarks.scores_file"),
    _s("MODELMAP_TASKS_DIR", "benchmarks.tasks_dir"),
    _s("MODELMAP_BENCHMARK_MEASURE", "benchmarks.measure"),
    _s("MLFLOW_TRACKING_URI", "mlflow.tracking_uri", secret=True),
    _s("MODELMAP_MLFLOW", "mlflow.mode"),
    _s("DAGSTER_HOME", "mlflow.dagster_home"),
    _s("HF_ENDPOINT", "hub.endpoint"),
    _s("HF_TOKEN", "hub.token", secret=True),
    _s("MODELMAP_HUB_AUTHORS", "hub.authors"),
    _s("MODELMAP_HUB_SEARCH", "hub.search"),
    _s("MODELMAP_HUB_MAX_PARAMS", "hub.max_parameters"),
    _s("MODELMAP_HUB_MAX_PER_TICK", "hub.max_models_per_tick"),
    _s("MODELMAP_HUB_LOOKBACK_HOURS", "hub.initial_lookback_hours"),
    _s("MODELMAP_HUB_ALLOW", "hub.allow"),
    _s("MODELMAP_HUB_DENY", "hub.deny"),
    _s("MODELMAP_TRUST_REMOTE_CODE", "hub.trust_remote_code_allow"),
)

# Variables no longer read, and what replaces them (a warning names it when one is set).
RETIRED: dict[str, str] = {
    "MODELMAP_HUB_SENSOR": (
        "a sensor's on/off is Dagster's own: turn `hub_models_sensor` on in the UI "
        "(Automation) or run `dagster sensor start hub_models_sensor -w workspace.yaml`"
    ),
}

# Settings of the `modelmap` command, not of the code location: (variable, default, meaning).
COMMAND_LINE: tuple[tuple[str, str, str], ...] = (
    (
        "MODELMAP_WEBSERVER",
        "http://127.0.0.1:3000",
        "the Dagster webserver `modelmap backfill` talks to (`--url`)",
    ),
    (
        "MODELMAP_BACKFILL_SECONDS",
        "5",
        "seconds between two passes of the backfill daemon under `modelmap-daemon` (how soon a "
        "launched backfill gets its runs); Dagster's own `dagster-daemon run` keeps its 30",
    ),
)


# Settings of the code location's automation, read when Dagster loads the definitions (an
# automation condition is part of the definitions, not of a resource): (variable, default,
# meaning).
CODE_LOCATION: tuple[tuple[str, str, str], ...] = (
    (
        "MODELMAP_MAP_REFRESH",
        "0 * * * *",
        "the full refresh (coordinates, kl_table, model_map, reports) runs at most once per "
        "tick of this cron schedule (UTC) after new scores; `eager`: after every scored model "
        "(small maps, tests). A new model's neighbours and map position come at once anyway",
    ),
    (
        "MODELMAP_HUB_POLL_SECONDS",
        "60",
        "seconds between two listings of the Hub by `hub_models_sensor` (its minimum interval)",
    ),
    (
        "MODELMAP_AUTOMATION_SECONDS",
        "30",
        "seconds between two evaluations of the automation conditions (`modelmap_automation`); "
        "each costs a query per asset, so keep it at tens of seconds on a large map",
    ),
)


def _value(
    table: tuple[tuple[str, str, str], ...], variable: str, env: Mapping[str, str] | None
) -> str:
    """The variable's value, else its default in `table`; a `*_SECONDS` one must be a whole
    number of seconds, at least 1."""
    env = os.environ if env is None else env
    default = {v: d for v, d, _ in table}[variable]
    value = (env.get(variable) or default).strip()
    if variable.endswith("_SECONDS") and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"{variable}={value!r}: expected a whole number of seconds, at least 1")
    return value


def code_location_setting(variable: str, env: Mapping[str, str] | None = None) -> str:
    """A setting of the code location's automation: the variable's value, else its default."""
    return _value(CODE_LOCATION, variable, env)


def interval_setting(variable: str, env: Mapping[str, str] | None = None) -> int:
    """A setting that is a number of seconds (`MODELMAP_*_SECONDS`), of the code location or
    of the `modelmap` command."""
    table = CODE_LOCATION if variable in {v for v, _, _ in CODE_LOCATION} else COMMAND_LINE
    return int(_value(table, variable, env))


def _field_type(resource: str, field: str) -> Any:
    return resource_classes()[resource].model_fields[field].annotation


def _is_int(annotation: Any) -> bool:
    return annotation is int or annotation == (int | None)


def _lookup(setting: Setting, env: Mapping[str, str]) -> str | None:
    """The variable's name in `env` (the current or an old one, with a warning), or None."""
    if setting.variable in env:
        return setting.variable
    for old in setting.old_names:
        if old in env:
            warnings.warn(
                f"{old} is renamed {setting.variable}; the old name still works for now",
                FutureWarning,
                stacklevel=3,
            )
            return old
    return None


def resource_config(
    env: Mapping[str, str] | None = None, settings: tuple[Setting, ...] = SETTINGS
) -> dict[str, dict[str, Any]]:
    """{resource key: {field: value}} for every setting present.

    `env=None`: the process environment, each variable bound as a `dg.EnvVar` (resolved by
    Dagster when a run starts). A mapping (tests, a command that changes a few variables):
    its values converted to the field's type; secrets are still bound as `dg.EnvVar`.
    """
    bind = env is None
    env = os.environ if env is None else env
    for name, instead in RETIRED.items():
        if name in env:
            warnings.warn(f"{name} is no longer read: {instead}", FutureWarning, stacklevel=2)
    config: dict[str, dict[str, Any]] = {key: {} for key in resource_classes()}
    for setting in settings:
        name = _lookup(setting, env)
        if name is None:
            continue
        for resource, field in setting.targets:
            is_int = _is_int(_field_type(resource, field))
            if bind or setting.secret:
                value: Any = dg.EnvVar.int(name) if is_int else dg.EnvVar(name)
            else:
                value = int(env[name]) if is_int and env[name] != "" else env[name]
                if is_int and value == "":
                    continue  # an empty number means "not set"
            config[resource][field] = value
    return config


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:
    """The code location's resources, configured from the environment (see `resource_config`)."""
    config = resource_config(env)
    return {key: cls(**config[key]) for key, cls in resource_classes().items()}


def command_line_default(variable: str, env: Mapping[str, str] | None = None) -> str:
    """A `modelmap` command's setting: the variable's value, else its default."""
    return _value(COMMAND_LINE, variable, env)
