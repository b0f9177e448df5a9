"""`hub_models_sensor` against the local Hub through the real huggingface_hub client."""

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from huggingface_hub import HfApi

from modelmap_assets.automation.hub_sensor import build_hub_models_sensor, requested_models
from modelmap_assets.scoring.batches import requested_revisions
from modelmap_assets.tags import REVISION_TAG
from resources.hub import HubResource
from workshop.hub_server import HubServer, publish

NOW = datetime.now(UTC).replace(microsecond=0)
sensor = build_hub_models_sensor()


@pytest.fixture
def paged_hub(tmp_path):
    """A local Hub that pages /api/models two models at a time."""
    with HubServer(tmp_path / "hub", page_size=2) as server:
        yield server


def tick(instance, hub, cursor=None, **settings):
    resource = HubResource(endpoint=hub.url, initial_lookback_hours=24, **settings)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"hub": resource}
    ) as context:
        result = sensor(context)
    # Apply the partition requests and create the runs, as the daemon would.
    for req in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    for req in result.run_requests or []:
        tags = {**req.tags, "dagster/run_key": req.run_key}
        if req.partition_key:
            tags["dagster/partition"] = req.partition_key
        create_run_for_test(instance, job_name="__ASSET_JOB", tags=tags)
    return result


def scored(instance, result) -> list[str]:
    """The model keys a tick's run requests score, in order (several per run)."""
    order = list(instance.get_dynamic_partitions("models"))
    return [k for r in result.run_requests or [] for k in requested_models(r, order)]


def sha(hub, repo_id):
    return HfApi(endpoint=hub.url, token=False).model_info(repo_id).sha


def publish_at(hub, model, repo_id, hours_ago, **settings):
    publish(hub.store.root, repo_id, model, created_at=NOW - timedelta(hours=hours_ago), **settings)


def test_first_tick_takes_the_lookback_only_then_new_models(paged_hub, tiny_model):
    hub = paged_hub
    publish_at(hub, tiny_model, "old/model", hours_ago=48)  # before the look-back window
    for i, hours in enumerate([3, 2, 1]):
        publish_at(hub, tiny_model, f"org/m{i}", hours_ago=hours)
    with dg.instance_for_test() as instance:
        first = tick(instance, hub)
        keys = ["org/m0", "org/m1", "org/m2"]  # oldest first
        # One run scores the three (a range of partitions), each pinned to its sha.
        (run,) = first.run_requests
        assert scored(instance, first) == keys
        assert run.run_key == " ".join(f"{k}@{sha(hub, k)}" for k in keys)
        assert requested_revisions(run.tags) == {k: sha(hub, k) for k in keys}
        (add,) = first.dynamic_partitions_requests
        assert add.partitions_def_name == "models" and list(add.partition_keys) == keys
        cursor = json.loads(first.cursor)
        assert datetime.fromisoformat(cursor["created"]["time"]) == NOW - timedelta(hours=1)
        assert cursor["created"]["ids"] == ["org/m2"]

        # Nothing new: a skip, and the cursor stays put.
        again = tick(instance, hub, first.cursor)
        assert not again.run_requests and again.skip_reason is not None
        assert json.loads(again.cursor)["created"] == cursor["created"]

        # Two new models published: exactly those two.
        publish_at(hub, tiny_model, "org/new-a", hours_ago=0.5)
        publish_at(hub, tiny_model, "other/new-b", hours_ago=0.2)
        later = tick(instance, hub, again.cursor)
        assert scored(instance, later) == ["org/new-a", "other/new-b"]
        assert list(later.dynamic_partitions_requests[0].partition_keys) == [
            "org/new-a",
            "other/new-b",
        ]
        assert set(instance.get_dynamic_partitions("models")) == {*keys, "org/new-a", "other/new-b"}


def test_paging_over_several_pages(paged_hub, tiny_model):
    for i in range(7):  # four pages of two
        publish_at(paged_hub, tiny_model, f"org/p{i}", hours_ago=10 - i)
    with dg.instance_for_test() as instance:
        result = tick(instance, paged_hub, max_models_per_tick=20)
        assert scored(instance, result) == [f"org/p{i}" for i in range(7)]
        assert len(result.run_requests) == 1


def test_updated_model_is_scored_again(paged_hub, tiny_model, tmp_path):
    publish_at(paged_hub, tiny_model, "org/a", hours_ago=2)
    publish_at(paged_hub, tiny_model, "org/b", hours_ago=1)
    with dg.instance_for_test() as instance:
        first = tick(instance, paged_hub)
        old = sha(paged_hub, "org/a")
        # A new commit: one file changes.
        (paged_hub.store.root / "org/a/README.md").write_text("v2")
        new = sha(paged_hub, "org/a")
        assert new != old
        second = tick(instance, paged_hub, first.cursor)
        (req,) = second.run_requests
        assert (req.partition_key, req.run_key, req.tags[REVISION_TAG]) == (
            "org/a",
            f"org/a@{new}",
            new,
        )
        assert req.tags["modelmap/source"] == "hub-update"
        assert not second.dynamic_partitions_requests
        assert tick(instance, paged_hub, second.cursor).skip_reason is not None


def test_cap_per_tick_delays_but_never_skips(paged_hub, tiny_model):
    # Two models share a created time: the cursor keeps ids per timestamp.
    for name, hours in [("m0", 5), ("m1", 4), ("m2", 4), ("m3", 3), ("m4", 2)]:
        publish_at(paged_hub, tiny_model, f"org/{name}", hours_ago=hours)
    publish_at(paged_hub, tiny_model, "spam/x", hours_ago=3.5)
    with dg.instance_for_test() as instance:
        cursor, seen = None, []
        for expected in (["org/m0", "org/m1"], ["org/m2", "org/m3"], ["org/m4"]):
            result = tick(instance, paged_hub, cursor, max_models_per_tick=2, deny=["spam/*"])
            assert scored(instance, result) == expected
            assert list(result.dynamic_partitions_requests[0].partition_keys) == expected
            seen += expected
            cursor = result.cursor
        assert tick(instance, paged_hub, cursor, max_models_per_tick=2).skip_reason
        assert "spam/x" not in instance.get_dynamic_partitions("models")


def test_definitions_load_with_the_sensor():
    from modelmap_assets.definitions import defs

    repo = defs().get_repository_def()
    assert repo.get_sensor_def("hub_models_sensor")
    assert "hub" in repo.get_top_level_resources()


def test_run_requests_carry_the_declared_base(hub, tiny_model):
    from modelmap_assets.tags import BASE_MODEL_TAG

    publish_at(hub, tiny_model, "org/base", hours_ago=2)
    publish_at(hub, tiny_model, "org/child", hours_ago=1, base_model="org/base")
    with dg.instance_for_test() as instance:
        # One model per tick, so each is a run of its own (a batch carries no base tag).
        first = tick(instance, hub, max_models_per_tick=1)
        second = tick(instance, hub, first.cursor, max_models_per_tick=1)
    tags = {r.partition_key: r.tags for r in [*first.run_requests, *second.run_requests]}
    assert BASE_MODEL_TAG not in tags["org/base"]
    assert tags["org/child"][BASE_MODEL_TAG] == "org/base"


def test_a_batch_larger_than_a_run_is_cut_into_ranges(paged_hub, tiny_model, monkeypatch):
    import modelmap_assets.automation.hub_sensor as sensors

    for i in range(5):
        publish_at(paged_hub, tiny_model, f"org/r{i}", hours_ago=10 - i)
    monkeypatch.setattr(sensors, "MODELS_PER_RUN", 2)
    with dg.instance_for_test() as instance:
        result = tick(instance, paged_hub, max_models_per_tick=20)
        runs = [
            requested_models(r, list(instance.get_dynamic_partitions("models")))
            for r in result.run_requests
        ]
        assert runs == [["org/r0", "org/r1"], ["org/r2", "org/r3"], ["org/r4"]]
        # A model already in a batch at its sha is not requested again when it shows as updated.
        assert sensors.already_requested(instance, "org/r3", sha(paged_hub, "org/r3"))
        assert not sensors.already_requested(instance, "org/r3", "0" * 40)
