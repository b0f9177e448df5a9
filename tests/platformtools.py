"""A fresh modelmap platform for tests: DAGSTER_HOME, data, models, corpus, and the servers.

`prepare()` lays out a temporary DAGSTER_HOME with one of the committed instance files
(SQLite `dagster.yaml` or `dagster.postgres.yaml`), builds the small zoo as the local models,
and materializes a corpus; the caller then runs `running_platform(env, logs)` (the daemon and
webserver as `make ui` starts them).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from modelmap.zoo import ZooModel, ZooSpec, build_zoo
from modelmap_assets.cli import materialize_corpus
from modelmap_assets.definitions import build_resources

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Platform:
    root: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    zoo: list[ZooModel]

    @property
    def data(self) -> Path:
        return Path(self.env["MODELMAP_DATA"])

    @property
    def models_dir(self) -> Path:
        return Path(self.env["MODELMAP_LOCAL_MODELS"])

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def prepare(
    root: Path,
    *,
    instance_yaml: str = "dagster.yaml",
    n_texts: int = 40,
    extra_env: dict[str, str] | None = None,
) -> Platform:
    home = root / "dagster_home"
    home.mkdir(parents=True)
    shutil.copy(REPO / "dagster_home" / instance_yaml, home / "dagster.yaml")
    zoo_dir = root / "models"
    zoo = build_zoo(zoo_dir, spec=ZooSpec.small(), log=lambda s: None)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MODELMAP_DATA": str(root / "data"),
        "MODELMAP_CACHE": str(root / "cache"),
        "MODELMAP_LOCAL_MODELS": str(zoo_dir),
        "MODELMAP_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        **(extra_env or {}),
    }
    # The instance file reads MODELMAP_PG_* from this process's environment too.
    os.environ.update({k: v for k, v in env.items() if k.startswith("MODELMAP_PG_")})
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    materialize_corpus(instance, build_resources(env), {"n_texts": n_texts})
    return Platform(root=root, env=env, instance=instance, zoo=zoo)


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 0.5):
    """Poll `predicate()` until it returns something truthy; fail naming `what`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def runs_of(instance: dg.DagsterInstance, key: str | None = None) -> list[dg.DagsterRun]:
    """Every run (of one `models` partition when `key` is given), oldest first."""
    tags = {"dagster/partition": key} if key else None
    return list(reversed(instance.get_runs(dg.RunsFilter(tags=tags))))
