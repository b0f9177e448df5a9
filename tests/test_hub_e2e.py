"""End to end through the Hub: publish, the sensor ticks, runs execute, the map refreshes."""

import dagster as dg
import polars as pl
import pytest
from hubtools import edit_config, variant

from modelmap_assets.cli.main import materialize_all
from modelmap_assets.cli.ticks import LocalDaemon
from modelmap_assets.definitions import ASSETS, build_resources, defs
from workshop.hub_server import HubServer, publish, publish_zoo
from workshop.zoo import ZooSpec, build_zoo


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, build_zoo(folder, spec=ZooSpec.small(), log=lambda s: None)


@pytest.mark.slow
def test_sensor_finds_models_and_the_map_refreshes_by_itself(small_zoo, tiny_model, tmp_path):
    zoo_dir, zoo = small_zoo
    with HubServer(tmp_path / "hub") as server, dg.instance_for_test() as instance:
        published = publish_zoo(server.store.root, zoo_dir)
        # A model with no tokenizer on the Hub: it must fail alone.
        broken = variant(tiny_model, tmp_path / "broken", lambda f: (f / "tokenizer.json").unlink())
        publish(server.store.root, "bad/no-tokenizer", broken)
        env = {
            "HF_ENDPOINT": server.url,
            "MODELMAP_LOCAL_MODELS": "",
            "MODELMAP_DEVICE": "cpu",
            "MODELMAP_DATA": str(tmp_path / "data"),
            "MODELMAP_CACHE": str(tmp_path / "cache"),
            # Three per tick: three rounds of sensor runs and refreshes, so a refresh whose own
            # update lands with the next round's scores must not swallow those scores.
            "MODELMAP_HUB_MAX_PER_TICK": "3",
        }
        resources = build_resources(env)
        dg.materialize(
            ASSETS,
            selection=["corpus"],
            instance=instance,
            resources=resources,
            run_config={"ops": {"corpus": {"config": {"n_texts": 60}}}},
        )
        daemon = LocalDaemon(defs(), instance, resources, log=lambda s: None)

        first = daemon.run_until_idle()
        assert sorted(first.added) == sorted([*published, "bad/no-tokenizer"])
        assert sorted(first.scored) == sorted(published)
        assert list(first.failed) == ["bad/no-tokenizer"]
        assert "no tokenizer" in first.failed["bad/no-tokenizer"]
        assert first.refreshed and first.refreshed[-1] == [
            "coordinates",
            "kl_table",
            "leakage_report",
            "model_map",
            "regression_report",
        ]
        mapped = pl.read_parquet(tmp_path / "data" / "model_map" / "map.parquet")
        assert sorted(mapped["key"]) == sorted(published)
        # Families come from the Hub's tags, not from a local registry.
        assert set(mapped["family"]) == {m.family for m in zoo}

        # Two new models appear on the Hub: only they are scored, and the map follows.
        publish(server.store.root, "new/one", tiny_model)
        publish(
            server.store.root,
            "new/two",
            variant(tiny_model, tmp_path / "two", lambda f: edit_config(f, n_layer=1)),
        )
        second = daemon.run_until_idle()
        assert sorted(second.added) == ["new/one", "new/two"]
        assert sorted(second.scored) == ["new/one", "new/two"]
        assert len(second.refreshed) == 1
        mapped = pl.read_parquet(tmp_path / "data" / "model_map" / "map.parquet")
        assert {"new/one", "new/two"} <= set(mapped["key"])

        # Nothing new: the sensor skips and automation asks for nothing.
        idle = daemon.run_until_idle()
        assert not idle.added and not idle.scored and not idle.refreshed


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
