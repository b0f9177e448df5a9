"""A new model placed against the current map (its neighbours and map position) without a
refresh, through the real assets on a real Dagster instance with synthetic likelihood files."""

import json
import logging

import dagster as dg
import numpy as np
import polars as pl
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.geometry.kl import two_kl_nats
from modelmap.geometry.neighbours import place
from modelmap.likelihoods import TEXT_SET_BUDGET, likelihood_frame
from modelmap_assets.automation.conditions import EAGER, coordinates_condition, with_schedule
from modelmap_assets.definitions import ASSETS
from modelmap_assets.geometry.placement import neighbours
from modelmap_assets.metadata import placement_metadata
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.assets import placement_of
from resources.settings import build_resources

N, N_FAM, PER_FAM = 80, 4, 6
HASH = "c0ffee" * 4


def _row(rng, fam_vecs, f):
    return -250 + fam_vecs[f] + rng.normal(0, 0.5, N) + rng.normal(0, 10)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """24 models in 4 families mapped (coordinates, kl_table, model_map); 4 more scored later."""
    root = tmp_path_factory.mktemp("placement")
    res = build_resources({"MODELMAP_DATA": str(root / "data"), "MODELMAP_MLFLOW": "off"})
    storage = res["storage"]
    texts = [f"text {i}" for i in range(N)]
    storage.write_corpus(
        pl.DataFrame(
            {"text_id": np.arange(N), "text": texts, "domain": ["d"] * N, "n_bytes": [900] * N}
        ),
        {"corpus_hash": HASH, "mean_bytes": 900.0, "n_texts": N},
    )
    rng = np.random.default_rng(0)
    fam_vecs = rng.normal(0, 4, size=(N_FAM, N))
    keys, rows = [], []
    for i in range(N_FAM * PER_FAM + N_FAM):
        f = i % N_FAM
        key = f"fam{f}/model-{i}"
        row = _row(rng, fam_vecs, f)
        storage.write_likelihood(
            key,
            likelihood_frame(np.arange(N), row),
            {"key": key, "corpus_hash": HASH, "family": f"fam{f}"},
        )
        keys.append(key)
        rows.append(row)
    mapped_keys = keys[: N_FAM * PER_FAM]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(models_partitions.name, mapped_keys)
        result = dg.materialize(
            ASSETS,
            selection=["coordinates", "kl_table", "model_map"],
            instance=instance,
            resources=res,
        )
        assert result.success
        yield {
            "storage": storage,
            "instance": instance,
            "resources": res,
            "keys": keys,
            "L": np.array(rows),
            "root": root,
        }


@pytest.mark.slow
def test_new_model_neighbours_equal_the_matrix_with_the_frozen_clip(mapped):
    storage, keys, L = mapped["storage"], mapped["keys"], mapped["L"]
    new = keys[-1]  # family 3, scored after the map was built
    placed = place(storage.root, new, k=5)
    assert not placed.in_map and placed.among == 24
    assert placed.neighbours["neighbour"].str.starts_with("fam3/").all()
    # Reference: the 25 models' clipped, double-centred matrix with the map's clip value.
    folder = storage.current_version_dir("coordinates")
    clip = json.loads((folder / "info.json").read_text())["clip_threshold_nats"]
    rows = np.vstack([L[:24], L[-1:]])
    D = two_kl_nats(double_centre(np.maximum(rows, clip)))[24, :24]
    order = np.argsort(D, kind="stable")[:5]
    assert placed.neighbours["neighbour"].to_list() == [keys[i] for i in order]
    np.testing.assert_allclose(placed.neighbours["two_kl_nats"].to_numpy(), D[order], rtol=1e-4)
    # Its map position is among its family's points.
    mp = pl.read_parquet(storage.root / "model_map" / "map.parquet")
    xy = mp.select("x", "y").to_numpy()
    near = np.argsort(np.linalg.norm(xy - [placed.x, placed.y], axis=1))[:3]
    assert all(k.startswith("fam3/") for k in mp["key"].gather(near).to_list())
    meta = placement_metadata(placed)
    assert meta["nearest_model"].startswith("fam3/") and "map_x" in meta


@pytest.mark.slow
def test_a_scored_model_s_materialization_carries_its_placement(mapped, caplog):
    storage, keys = mapped["storage"], mapped["keys"]
    with caplog.at_level(logging.INFO):
        meta = placement_of(storage, keys[-2], logging.getLogger("likelihood"))
    assert set(meta) == {
        "placed_among",
        "placement_s",
        "nearest_neighbours",
        "nearest_model",
        "nearest_two_kl_bits_per_byte",
        "map_x",
        "map_y",
    }
    assert meta["placed_among"] == 24 and meta["nearest_model"].startswith("fam2/")
    assert isinstance(meta["nearest_neighbours"], dg.MarkdownMetadataValue)
    rows = meta["nearest_neighbours"].value.splitlines()[2:]  # the nearest ten, ranked
    assert [r.split(" | ")[0] for r in rows] == [f"| {rank}" for rank in range(1, 11)]
    assert f"{keys[-2]}: placed among 24 models" in caplog.text


def test_a_model_without_a_map_is_scored_all_the_same(tmp_path, caplog):
    storage = build_resources({"MODELMAP_DATA": str(tmp_path)})["storage"]
    with caplog.at_level(logging.INFO):
        assert placement_of(storage, "org/new", logging.getLogger("likelihood")) == {}
    assert "org/new: not placed yet: no map to place models on yet" in caplog.text


@pytest.mark.slow
def test_a_mapped_model_is_not_its_own_neighbour_and_keeps_its_point(mapped):
    storage, keys = mapped["storage"], mapped["keys"]
    placed = place(storage.root, keys[0], k=3)
    assert placed.in_map and keys[0] not in placed.neighbours["neighbour"].to_list()
    mp = pl.read_parquet(storage.root / "model_map" / "map.parquet").filter(
        pl.col("key") == keys[0]
    )
    assert (placed.x, placed.y) == (mp["x"][0], mp["y"][0])


@pytest.mark.slow
def test_a_budget_row_is_placed_from_its_texts(mapped):
    storage, L = mapped["storage"], mapped["L"]
    texts = np.arange(0, N, 2)
    storage.write_likelihood(
        "fam2/budget",
        likelihood_frame(texts, L[-2][texts]),
        {"corpus_hash": HASH, "text_set": TEXT_SET_BUDGET, "selection_hash": "s"},
    )
    placed = place(storage.root, "fam2/budget", k=4)
    assert placed.text_set == TEXT_SET_BUDGET
    assert placed.neighbours["neighbour"].str.starts_with("fam2/").all()


@pytest.mark.slow
def test_command_line_and_notebook_function(mapped, monkeypatch, capsys):
    from modelmap_assets.cli.main import main

    monkeypatch.setenv("MODELMAP_DATA", str(mapped["storage"].root))
    key = mapped["keys"][-3]
    assert main(["neighbours", key, "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == key and len(out["neighbours"]) == 3 and out["map_x"] is not None
    assert main(["neighbours", key, "-k", "2"]) == 0
    assert "placed since the last map refresh" in capsys.readouterr().out
    df = neighbours(key, k=3)
    assert df.columns == [
        "model",
        "rank",
        "neighbour",
        "two_kl_nats",
        "two_kl_bits_per_byte",
        "map_x",
        "map_y",
    ]
    assert df["neighbour"].to_list() == [n["neighbour"] for n in out["neighbours"]]
    with pytest.raises(SystemExit) as exited:  # a mistake of the command line: exit 2
        main(["neighbours", "org/never-scored"])
    assert exited.value.code == 2 and "no likelihood file" in capsys.readouterr().err


@pytest.mark.slow
def test_refresh_keeps_the_map_and_drops_stale_pairs(mapped):
    from modelmap.geometry.stability import displacement_frac

    storage, instance, keys = mapped["storage"], mapped["instance"], mapped["keys"]
    before = pl.read_parquet(storage.root / "model_map" / "map.parquet")
    assert (storage.root / "kl_table" / "pairs.parquet").exists()
    instance.add_dynamic_partitions(models_partitions.name, keys[24:])
    result = dg.materialize(
        ASSETS,
        selection=["coordinates", "kl_table", "model_map"],
        instance=instance,
        resources=mapped["resources"],
        run_config={"ops": {"kl_table": {"config": {"max_pair_models": 10}}}},
    )
    assert result.success
    assert not (storage.root / "kl_table" / "pairs.parquet").exists()
    after = pl.read_parquet(storage.root / "model_map" / "map.parquet")
    assert after.height == 28
    old = before.join(after, on="key", suffix="_new")
    moved = displacement_frac(
        old.select("x", "y").to_numpy(), old.select("x_new", "y_new").to_numpy()
    )
    assert moved < 0.05


def test_the_full_refresh_is_rate_limited_by_default():
    cond = coordinates_condition()
    assert "at most once per '0 * * * *'" in cond.get_label()
    assert coordinates_condition(EAGER).get_label() != cond.get_label()
    scheduled = {a.key.to_user_string(): a for a in with_schedule(ASSETS, "*/5 * * * *")}
    label = (
        scheduled["coordinates"]
        .automation_conditions_by_key[dg.AssetKey("coordinates")]
        .get_label()
    )
    assert "*/5 * * * *" in label
    report = scheduled["regression_report"].automation_conditions_by_key[
        dg.AssetKey("regression_report")
    ]
    assert report.get_label() == "refresh with the map"


@pytest.mark.slow
def test_hourly_refresh_waits_for_the_tick_and_not_for_models_in_progress():
    """Declarative automation evaluated for real (Dagster's evaluator, an ephemeral instance):
    the first map comes at once, later scores wait for the next tick of the schedule, and
    then the refresh does not wait for the hour's other models (a model still in progress
    would not hold it either: the condition has no `any_deps_in_progress`)."""
    import datetime as dt

    def at(hh, mm):
        return dt.datetime(2026, 12, 1, hh, mm, tzinfo=dt.UTC)

    assets = dg.Definitions(
        assets=with_schedule(ASSETS, "0 * * * *"), resources=build_resources({})
    )
    selection = dg.AssetSelection.assets("coordinates")

    def scored(instance, key):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="likelihood", partition=key)
        )

    def requested(result):
        return result.get_num_requested(dg.AssetKey("coordinates"))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(models_partitions.name, ["a/one", "a/two"])
        result = dg.evaluate_automation_conditions(
            assets, instance, selection, evaluation_time=at(10, 0)
        )
        scored(instance, "a/one")
        result = dg.evaluate_automation_conditions(
            assets, instance, selection, evaluation_time=at(10, 1), cursor=result.cursor
        )
        assert requested(result) == 1  # the first map: no waiting for the hour
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="coordinates"))
        result = dg.evaluate_automation_conditions(
            assets, instance, selection, evaluation_time=at(10, 2), cursor=result.cursor
        )
        scored(instance, "a/two")
        for minute in (5, 30, 59):
            result = dg.evaluate_automation_conditions(
                assets, instance, selection, evaluation_time=at(10, minute), cursor=result.cursor
            )
            assert requested(result) == 0  # new scores wait for the hour
        result = dg.evaluate_automation_conditions(
            assets, instance, selection, evaluation_time=at(11, 0), cursor=result.cursor
        )
        assert requested(result) == 1


@pytest.mark.parametrize("schedule", [EAGER, "0 * * * *"])
def test_scores_landing_during_a_refresh_bring_another_refresh(schedule):
    """A model scored while a refresh runs (after it was requested, before its coordinates
    land) is not swallowed by that refresh's materialization: the next tick asks again.
    (Dagster's `eager()` forgets updates when the asset itself updates, so the model stayed
    off the map until another model came: the hub end-to-end test caught it on a slow run.)"""
    import datetime as dt

    # Tick times on the real clock: the events below carry real timestamps, and a tick
    # compares them with its own time.
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)

    def at(seconds):
        return start + dt.timedelta(seconds=seconds)

    next_hour = (start.replace(minute=0, second=0, microsecond=0) - start).total_seconds() + 3600
    defs = dg.Definitions(assets=with_schedule(ASSETS, schedule), resources=build_resources({}))
    selection = dg.AssetSelection.assets("coordinates")

    def scored(instance, key):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key="likelihood", partition=key)
        )

    def tick(instance, minute, cursor):
        result = dg.evaluate_automation_conditions(
            defs, instance, selection, evaluation_time=at(minute), cursor=cursor
        )
        return result.get_num_requested(dg.AssetKey("coordinates")), result.cursor

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(models_partitions.name, ["a/one", "a/two"])
        _, cursor = tick(instance, 0, None)
        scored(instance, "a/one")
        n, cursor = tick(instance, 1, cursor)
        assert n == 1  # the first map
        scored(instance, "a/two")  # lands while the refresh runs ...
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="coordinates"))
        n, cursor = tick(instance, 31, cursor)  # ... which then lands without it
        if schedule != EAGER:
            assert n == 0  # waits for the next tick of the schedule, but is not forgotten
            n, cursor = tick(instance, next_hour + 1, cursor)
        assert n == 1
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="coordinates"))
        n, cursor = tick(instance, next_hour + 2, cursor)
        assert n == 0  # nothing new: no refresh
