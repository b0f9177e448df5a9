"""`benchmark_scores` through Dagster: published scores from a user's scores file, and a
model the file does not list measured on the tasks."""

import shutil

import dagster as dg
import polars as pl
import pytest

from modelmap_assets.definitions import ASSETS, build_resources
from resources.benchmarks import BenchmarkResource


@pytest.fixture
def resources(tmp_path):
    scores = tmp_path / "leaderboard.csv"
    scores.write_text(
        "model_id,ARC (25-shot),HellaSwag (10-shot),MMLU,TruthfulQA,Winogrande,GSM8K\n"
        "org/listed,50.5,70.25,40,45,60,10\n"
    )
    env = {"MODELMAP_DATA": str(tmp_path / "data"), "MODELMAP_CACHE": str(tmp_path / "cache")}
    res = build_resources(env)
    res["benchmarks"] = BenchmarkResource(scores_file=str(scores), measure="never")
    return res


def _materialize(instance, resources, key):
    return dg.materialize(
        ASSETS,
        selection=["benchmark_scores"],
        partition_key=key,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_published_scores_come_from_the_file_and_nothing_is_measured(resources):
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/listed", "org/unlisted"])
        assert _materialize(instance, resources, "org/listed").success
        # Not in the file and measuring is off: an empty score table, so the regression
        # predicts its scores instead.
        assert _materialize(instance, resources, "org/unlisted").success
    root = resources["storage"].root / "benchmark_scores"
    listed = pl.read_parquet(root / "org--listed.parquet")
    assert dict(zip(listed["benchmark"], listed["score"], strict=True)) == {
        "ARC": 50.5,
        "HellaSwag": 70.25,
        "MMLU": 40.0,
        "TruthfulQA": 45.0,
        "Winogrande": 60.0,
        "GSM8K": 10.0,
    }
    assert set(listed["suite"]) == {"open_llm_v1"} and set(listed["source"]) == {"file"}
    assert pl.read_parquet(root / "org--unlisted.parquet").is_empty()


def test_a_bad_scores_file_fails_the_partition_naming_model_and_file(resources, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("model,ARC\norg/listed,250\n")
    resources["benchmarks"] = BenchmarkResource(scores_file=str(bad))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/listed"])
        result = _materialize(instance, resources, "org/listed")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("model org/listed:") and "bad.csv" in message and "0..100" in message


def test_a_model_the_file_does_not_list_is_measured_on_the_tasks(resources, tiny_model, tmp_path):
    shutil.copytree(tiny_model, tmp_path / "models" / "org" / "unlisted")
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_LOCAL_MODELS": str(tmp_path / "models"),
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_DTYPE": "float32",
        "MODELMAP_MLFLOW": "off",
    }
    resources = {
        **build_resources(env),
        "benchmarks": BenchmarkResource(
            scores_file=resources["benchmarks"].scores_file, measure="missing", n_items=4
        ),
    }
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/unlisted"])
        result = _materialize(instance, resources, "org/unlisted")
        assert result.success
        (event,) = instance.fetch_materializations(dg.AssetKey("benchmark_scores"), limit=1).records
    meta = event.asset_materialization.metadata
    assert meta["dtype"].value == "float32" and meta["n_published"].value == 0
    measured = pl.read_parquet(resources["storage"].benchmark_path("org/unlisted"))
    assert set(measured["source"]) == {"measured"} and measured.height > 0
    assert measured["score"].is_between(0, 100).all()
