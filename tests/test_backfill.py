"""A backfill of model partitions through the real webserver and daemon (`make ui`'s pair)."""

import os
import shutil
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.instance.ref import InstanceRef

from modelmap.zoo import ZooSpec, build_zoo
from modelmap_assets.cli import backfill, materialize_corpus
from modelmap_assets.definitions import build_resources
from modelmap_assets.local_platform import running_platform

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def platform(tmp_path):
    """A DAGSTER_HOME with the committed dagster.yaml, the small zoo, a corpus, and the
    webserver and daemon running against it as `make ui` starts them."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    zoo_dir = tmp_path / "cache" / "zoo"
    models = build_zoo(zoo_dir, spec=ZooSpec.small(), log=lambda s: None)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_CACHE": str(tmp_path / "cache"),
        "MODELMAP_LOCAL_MODELS": str(zoo_dir),
        "MODELMAP_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    materialize_corpus(instance, build_resources(env), {"n_texts": 40})
    with running_platform(env, tmp_path / "logs") as url:
        yield {"url": url, "instance": instance, "models": models, "root": tmp_path / "data"}
    instance.dispose()


def test_backfill_scores_the_batch_and_refreshes_the_map_once(platform):
    instance, url = platform["instance"], platform["url"]
    keys = [m.key for m in platform["models"][:3]]
    t0 = time.time()
    # Well under pytest's timeout, so a stuck daemon fails here with the backfill's status.
    assert backfill(instance, keys, url, wait=True, timeout_s=420) == 0
    print(f"backfill of {len(keys)} models: {time.time() - t0:.0f} s")
    assert set(instance.get_dynamic_partitions("models")) == set(keys)
    mapped = pl.read_parquet(platform["root"] / "model_map" / "map.parquet")
    assert sorted(mapped["key"]) == sorted(keys)
    # Once at the end, not once per model, and the automation sensor (30 s interval) does not
    # refresh it again afterwards; every run succeeded.
    time.sleep(40)
    records = instance.fetch_materializations(dg.AssetKey("model_map"), limit=100).records
    assert len(records) == 1
    runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert not runs
