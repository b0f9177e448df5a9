"""Several models per run, each failing alone: real runs of the per-model assets."""

import shutil

import dagster as dg
import pytest
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from modelmap_assets.automation.retry_sensor import retry_requests
from modelmap_assets.definitions import ASSETS, PER_MODEL, build_resources
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.batches import (
    BatchFailures,
    contiguous_batches,
    range_tags,
    requested_revisions,
    sha_tags,
)
from resources.benchmarks import BenchmarkResource


def test_batches_are_ranges_of_the_partition_order():
    order = ["a/1", "a/2", "a/3", "a/4", "a/5", "a/6"]
    assert contiguous_batches(order, ["a/1", "a/2", "a/4", "a/5", "a/6"], 2) == [
        ["a/1", "a/2"],
        ["a/4", "a/5"],
        ["a/6"],
    ]
    assert contiguous_batches(order, ["a/6", "a/1"], 10) == [["a/1"], ["a/6"]]
    assert contiguous_batches(order, [], 10) == []


def test_each_model_keeps_its_sha_in_the_run_tags():
    pins = {"org/a": "1" * 40, "org/b": "2" * 40}
    tags = sha_tags(pins)
    assert requested_revisions(tags) == pins
    # Compliant tag keys (one namespace, sections of at most 63 characters).
    assert all(k.count("/") == 1 and len(k.split("/")[1]) <= 63 for k in tags)


def test_a_batch_fails_naming_each_failed_model():
    class Log:
        def error(self, message):
            self.last = message

    failures = BatchFailures(["a/1", "a/2", "a/3"])
    failures.raise_if_any()  # nothing failed
    failures.add("a/2", dg.Failure(description="model a/2: no weights"), Log())
    with pytest.raises(dg.Failure) as raised:
        failures.raise_if_any()
    assert "1 of 3 models failed (2 written)" in raised.value.description
    assert "model a/2: no weights" in raised.value.description
    assert raised.value.metadata["failed_models"].data == ["a/2"]
    alone = BatchFailures(["a/2"])
    alone.add("a/2", dg.Failure(description="model a/2: no weights"), Log())
    with pytest.raises(dg.Failure, match=r"^model a/2: no weights$"):
        alone.raise_if_any()


def status(instance, asset: str) -> tuple[set, set]:
    """(materialized, failed) partitions of `asset`, as the UI's partition view computes them."""
    value = get_and_update_asset_status_cache_value(instance, dg.AssetKey(asset), models_partitions)
    return (
        set(
            value.deserialize_materialized_partition_subsets(models_partitions).get_partition_keys()
        ),
        set(value.deserialize_failed_partition_subsets(models_partitions).get_partition_keys()),
    )


@pytest.mark.slow
def test_a_failed_model_fails_alone_in_a_batch_run(tiny_model, tmp_path):
    """A run over a range of four models, one of them broken: the other three are written and
    show materialized, the broken one shows failed with its cause, and its retry alone fails
    with that cause."""
    models = tmp_path / "models"
    for name in ("b/m0", "b/m1", "b/m3"):
        shutil.copytree(tiny_model, models / name)
    shutil.copytree(tiny_model, models / "b/m2")
    (models / "b/m2" / "model.safetensors").write_bytes(b"not a safetensors file")
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_CACHE": str(tmp_path / "cache"),
        "MODELMAP_LOCAL_MODELS": str(models),
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_MLFLOW": "off",
    }
    resources = {**build_resources(env), "benchmarks": BenchmarkResource(measure="never")}
    keys = ["b/m0", "b/m1", "b/m2", "b/m3"]
    with dg.instance_for_test() as instance:
        dg.materialize(
            ASSETS,
            selection=["corpus"],
            instance=instance,
            resources=resources,
            run_config={"ops": {"corpus": {"config": {"n_texts": 12}}}},
        )
        instance.add_dynamic_partitions("models", keys)
        batch = dg.materialize(
            ASSETS,
            selection=PER_MODEL,
            tags=range_tags(keys),
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        assert not batch.success
        assert status(instance, "likelihood") == ({"b/m0", "b/m1", "b/m3"}, {"b/m2"})
        (failure,) = [e for e in batch.all_events if e.is_step_failure]
        message = failure.step_failure_data.user_failure_data.description
        assert "1 of 4 models failed (3 written)" in message
        assert "model b/m2: cannot load it" in message
        assert status(instance, "benchmark_scores")[0] == set(keys)
        for key in ("b/m0", "b/m1", "b/m3"):
            assert (tmp_path / "data" / "likelihood" / f"{key.replace('/', '--')}.parquet").exists()

        # The retry sensor's request: the broken model alone, only the asset it failed.
        run = instance.get_run_by_id(batch.run_id)
        (retry,) = retry_requests(run, [failure])
        assert retry.partition_key == "b/m2"
        assert retry.asset_selection == [dg.AssetKey("likelihood")]
        alone = dg.materialize(
            ASSETS,
            selection=retry.asset_selection,
            partition_key=retry.partition_key,
            tags=retry.tags,
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        (own,) = [e for e in alone.all_events if e.is_step_failure]
        assert own.step_failure_data.user_failure_data.description.startswith(
            "model b/m2: cannot load it"
        )
        assert status(instance, "likelihood") == ({"b/m0", "b/m1", "b/m3"}, {"b/m2"})
        # A single model's run is never split again.
        assert retry_requests(instance.get_run_by_id(alone.run_id), [own]) == []
