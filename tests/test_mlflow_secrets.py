"""No credential of the tracking store reaches a log, a record or the code location's snapshot,
and a store that is down costs one short attempt, said once."""

import logging
import os
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from resources.mlflow import MlflowResource, mask_uri

PASSWORD = "s3cr3t-pw"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


@pytest.fixture
def down_uri():
    return f"postgresql+psycopg2://alice:{PASSWORD}@127.0.0.1:{_closed_port()}/mlflow"


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("postgresql+psycopg2://u:pw@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("https://h/x?token=abc&run=1", "https://h/x?token=***&run=1"),
        ("sqlite:////tmp/m.db", "sqlite:////tmp/m.db"),
        ("mysql://u:p%40ss@h/db", "mysql://u:***@h/db"),
    ],
)
def test_mask_uri(uri, masked):
    assert mask_uri(uri) == masked


def test_a_store_that_is_down_costs_seconds_and_is_said_once(down_uri, caplog):
    store = MlflowResource(tracking_uri=down_uri, experiment="down")
    caplog.set_level(logging.WARNING)
    started = time.monotonic()
    assert store.log_run("first", params={"a": 1}) is None
    assert store.log_run("second", params={"a": 2}) is None
    assert time.monotonic() - started < 20  # was ~100 s per call (MLflow's retries)
    said = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(said) == 1, said
    assert "alice:***@127.0.0.1" in said[0] and "going on without MLflow" in said[0]
    assert PASSWORD not in caplog.text


def test_required_store_down_fails_fast_without_the_password(down_uri):
    store = MlflowResource(tracking_uri=f"{down_uri}x", experiment="down", mode="required")
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        store.log_run("first", params={"a": 1})
    assert time.monotonic() - started < 10
    assert PASSWORD not in str(raised.value) and "alice:***@" in str(raised.value)


@pytest.mark.slow
def test_a_run_with_the_store_down_leaks_nothing(down_uri, tmp_path):
    from modelmap_assets.definitions import ASSETS, build_resources
    from resources.benchmarks import BenchmarkResource

    scores = tmp_path / "s.csv"
    scores.write_text("model,ARC\norg/tiny,40\n")
    resources = build_resources({"MODELMAP_DATA": str(tmp_path / "data")})
    resources["mlflow"] = MlflowResource(tracking_uri=down_uri, experiment="down-run")
    resources["benchmarks"] = BenchmarkResource(scores_file=str(scores), measure="never")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/tiny"])
        started = time.monotonic()
        result = dg.materialize(
            ASSETS,
            selection=["benchmark_scores"],
            partition_key="org/tiny",
            instance=instance,
            resources=resources,
            tags={"t": "x"},
        )
        assert time.monotonic() - started < 60  # MLflow alone retried for ~100 s
        events = "\n".join(str(e) for e in instance.all_logs(result.run_id))
        run = instance.get_run_by_id(result.run_id)
    assert result.success
    assert PASSWORD not in events + str(run.tags) + str(run.run_config)
    assert "alice:***@" in events


@pytest.mark.slow
def test_the_code_location_snapshot_holds_no_password(down_uri):
    code = (
        "from dagster._core.remote_representation.external_data import RepositorySnap\n"
        "from dagster._serdes import serialize_value\n"
        "from modelmap_assets.definitions import defs\n"
        "d = defs() if callable(defs) else defs\n"
        "print(serialize_value(RepositorySnap.from_def(d.get_repository_def())))\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": down_uri}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "MLFLOW_TRACKING_URI" in out  # the binding is in the snapshot, not its value
    assert PASSWORD not in out
