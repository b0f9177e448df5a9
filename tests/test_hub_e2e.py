"""End to end through the Hub and the real daemon: publish, the sensor ticks, the daemon runs
each model, automation refreshes the map."""

import dagster as dg
import polars as pl
import pytest
from hubtools import edit_config, variant
from platformtools import describe, runs_of, wait_until_idle

from modelmap_assets.cli.backfill import set_sensor
from modelmap_assets.cli.main import materialize_all
from modelmap_assets.definitions import build_resources
from workshop.demo import wait_for_map, wait_for_models
from workshop.hub_server import HubServer, publish, publish_zoo
from workshop.platform import local_platform, prepare
from workshop.zoo import ZooSpec, build_zoo


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, build_zoo(folder, spec=ZooSpec.small(), log=lambda s: None)


def failure_of(instance, key: str) -> str:
    """The step failure's message of the model's one run (what the UI shows)."""
    (run,) = runs_of(instance, key)
    assert run.status == dg.DagsterRunStatus.FAILURE, describe(instance, run)
    for entry in instance.all_logs(run.run_id):
        event = entry.dagster_event
        if event is not None and event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            return data.error.message if data.error else ""
    raise AssertionError(describe(instance, run))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sensor_finds_models_and_the_map_refreshes_by_itself(tiny_model, tmp_path):
    with HubServer(tmp_path / "hub") as server:
        # Every model comes from the Hub: no local model folders.
        platform = prepare(
            tmp_path,
            extra_env={
                "HF_ENDPOINT": server.url,
                "MODELMAP_LOCAL_MODELS": "",
                "MODELMAP_MLFLOW": "off",
                "MODELMAP_MAP_REFRESH": "eager",
            },
        )
        instance = platform.instance
        published = publish_zoo(server.store.root, tmp_path / "models")
        # A model with no tokenizer on the Hub: it must fail alone.
        broken = variant(tiny_model, tmp_path / "broken", lambda f: (f / "tokenizer.json").unlink())
        publish(server.store.root, "bad/no-tokenizer", broken)
        with local_platform(platform.env, platform.logs) as servers:
            assert set_sensor(servers.url, "hub_models_sensor", running=True) == "RUNNING"
            first = [*published, "bad/no-tokenizer"]
            outcomes = wait_for_models(instance, first, log=print, timeout_s=400, poll_s=1)
            assert outcomes == {**dict.fromkeys(published, "scored"), "bad/no-tokenizer": "failed"}
            assert "no tokenizer" in failure_of(instance, "bad/no-tokenizer")
            assert wait_for_map(instance, published, platform.data, timeout_s=300) == len(published)
            mapped = pl.read_parquet(platform.data / "model_map" / "map.parquet")
            # Families come from the Hub's tags, not from a local registry.
            assert set(mapped["family"]) == {m.family for m in platform.zoo}
            # Every run was launched by the daemon: for a sensor, or by automation.
            for run in runs_of(instance):
                if run.job_name != "__ephemeral_asset_job__":  # the corpus, built by hand
                    assert run.tags.get("dagster/sensor_name") or run.tags.get(
                        "dagster/from_automation_condition"
                    ), describe(instance, run)

            # Two new models appear on the Hub: the sensor's next tick takes only them.
            publish(server.store.root, "new/one", tiny_model)
            publish(
                server.store.root,
                "new/two",
                variant(tiny_model, tmp_path / "two", lambda f: edit_config(f, n_layer=1)),
            )
            second = ["new/one", "new/two"]
            outcomes = wait_for_models(instance, second, log=print, timeout_s=300, poll_s=1)
            assert outcomes == dict.fromkeys(second, "scored")
            wait_for_map(instance, second, platform.data, timeout_s=300)
            mapped = pl.read_parquet(platform.data / "model_map" / "map.parquet")
            assert {"new/one", "new/two"} <= set(mapped["key"])
            # Nothing was scored twice: the ticks in between found nothing new.
            for key in published + second:
                records = instance.fetch_materializations(
                    dg.AssetRecordsFilter(
                        asset_key=dg.AssetKey("likelihood"), asset_partitions=[key]
                    ),
                    limit=5,
                ).records
                assert len(records) == 1, key
            wait_until_idle(instance)
        instance.dispose()


@pytest.mark.slow
def test_path_traversal_key_is_refused_and_the_map_still_builds(small_zoo, tmp_path):
    zoo_dir, zoo = small_zoo
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_CACHE": str(tmp_path / "cache"),
        "MODELMAP_LOCAL_MODELS": str(zoo_dir),
        "MODELMAP_DEVICE": "cpu",
    }
    with dg.instance_for_test() as instance:
        keys = [zoo[0].key, zoo[1].key, zoo[2].key, "../../etc", "org/a b"]
        instance.add_dynamic_partitions("models", keys)
        outcome = materialize_all(instance, {"n_texts": 40}, resources=build_resources(env))
    assert set(outcome["failed"]) == {"../../etc", "org/a b"}
    for key in ("../../etc", "org/a b"):
        assert "invalid model key" in outcome["failed"][key]
    assert not (tmp_path / "etc").exists()
    assert pl.read_parquet(tmp_path / "data" / "model_map" / "map.parquet").height == 3
