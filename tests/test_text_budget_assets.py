"""`text_selection`, a model scored on the budget, and the intervals, through Dagster.

The map's models are rows of a synthetic matrix written as likelihood files (the one file
format); one real tiny model is then scored on the selected texts only.
"""

import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest

from modelmap.likelihoods import likelihood_frame, read_metadata, write_likelihood_file
from modelmap_assets.cli.main import materialize_corpus
from modelmap_assets.definitions import ASSETS, build_resources
from workshop.synthetic import synthetic_loglik

MAP = ["coordinates", "text_selection", "kl_table", "model_map"]


@pytest.fixture
def platform(tmp_path, tiny_model):
    local = tmp_path / "models"
    shutil.copytree(tiny_model, local / "tiny" / "model")
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_CACHE": str(tmp_path / "cache"),
        "MODELMAP_LOCAL_MODELS": str(local),
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_MLFLOW": "off",
    }
    resources = build_resources(env)
    with dg.instance_for_test() as instance:
        materialize_corpus(instance, resources, {"source": "embedded", "n_texts": 120})
        storage = resources["storage"]
        corpus, meta = storage.read_corpus()
        L, families = synthetic_loglik(K=25, N=corpus.height, n_families=5, seed=3)
        keys = [f"{fam}/m{i:02d}" for i, fam in enumerate(families)]
        for key, fam, row in zip(keys, families, L, strict=True):
            write_likelihood_file(
                storage.likelihood_path(key),
                [likelihood_frame(corpus["text_id"], row)],
                {"key": key, "family": fam, "corpus_hash": meta["corpus_hash"]},
            )
        instance.add_dynamic_partitions("models", keys)
        yield instance, resources, keys, L


def _run(instance, resources, selection, **kwargs):
    return dg.materialize(
        ASSETS, selection=selection, instance=instance, resources=resources, **kwargs
    )


@pytest.mark.slow
def test_a_model_scored_on_the_budget_lands_on_the_map(platform):
    instance, resources, keys, L = platform
    storage = resources["storage"]
    assert _run(instance, resources, MAP).success
    root = storage.root
    summary = pl.read_parquet(root / "text_selection" / "summary.parquet")
    assert set(summary["sampler"]) == {"uniform", "ls"}
    assert (summary["n_seeds"] == 10).all()
    event = instance.get_latest_materialization_event(dg.AssetKey("text_selection"))
    meta = event.asset_materialization.metadata
    n_budget = meta["n_texts"].value
    assert 0 < n_budget < L.shape[1]

    # Every 2KL carries its interval, in nats and bits per byte; the level is in metadata.
    neighbours = pl.read_parquet(root / "kl_table" / "neighbours.parquet")
    pairs = pl.read_parquet(root / "kl_table" / "pairs.parquet")
    for table in (neighbours, pairs):
        for col in ("two_kl_nats_low", "two_kl_nats_high", "in_kl_regime", "text_set"):
            assert col in table.columns
        inside = table.filter(pl.col("in_kl_regime"))
        assert (inside["two_kl_bits_per_byte_low"] <= inside["two_kl_bits_per_byte"]).all()
        assert (inside["two_kl_bits_per_byte"] <= inside["two_kl_bits_per_byte_high"]).all()
    assert neighbours.filter(pl.col("rank") == 1)["distinguishable"].is_not_null().all()
    kl_event = instance.get_latest_materialization_event(dg.AssetKey("kl_table"))
    assert kl_event.asset_materialization.metadata["interval_level"].value == 0.95

    # A real model scored on the selected texts only.
    instance.add_dynamic_partitions("models", ["tiny/model"])
    result = dg.materialize(
        ASSETS,
        selection=["likelihood"],
        partition_key="tiny/model",
        instance=instance,
        resources=resources,
        run_config={"ops": {"likelihood": {"config": {"text_set": "budget"}}}},
    )
    assert result.success
    file_meta = read_metadata(storage.likelihood_path("tiny/model"))
    assert file_meta["text_set"] == "budget" and file_meta["n_corpus_rows"] == n_budget
    assert file_meta["selection_hash"] == meta["selection_hash"].value
    # And a synthetic model's own row cut to the budget: its nearest neighbour must be the
    # one its full row has.
    key = keys[0]
    own = pl.read_parquet(root / "kl_table" / "neighbours.parquet").filter(
        (pl.col("model") == key) & (pl.col("rank") == 1)
    )["neighbour"][0]
    selection = pl.read_parquet(next((root / "text_selection" / "selections").glob("*.parquet")))
    corpus, corpus_meta = storage.read_corpus()
    cols = np.searchsorted(corpus["text_id"].to_numpy(), selection["text_id"].to_numpy())
    write_likelihood_file(
        storage.likelihood_path("budget/copy"),
        [likelihood_frame(selection["text_id"], L[0, cols])],
        {
            "key": "budget/copy",
            "corpus_hash": corpus_meta["corpus_hash"],
            "text_set": "budget",
            "selection_hash": meta["selection_hash"].value,
        },
    )
    instance.add_dynamic_partitions("models", ["budget/copy"])
    assert _run(instance, resources, ["coordinates", "kl_table", "model_map"]).success

    neighbours = pl.read_parquet(root / "kl_table" / "neighbours.parquet")
    budget = neighbours.filter(pl.col("text_set") == "budget")
    assert set(budget["model"]) == {"tiny/model", "budget/copy"}
    copy_first = budget.filter((pl.col("model") == "budget/copy") & (pl.col("rank") == 1))
    # Its nearest is the model it copies (distance ~0) ...
    assert copy_first["neighbour"][0] == key
    # ... and its second is the nearest of the original's full row.
    second = budget.filter((pl.col("model") == "budget/copy") & (pl.col("rank") == 2))
    assert second["neighbour"][0] == own
    map_rows = pl.read_parquet(root / "model_map" / "map.parquet")
    placed = map_rows.filter(pl.col("text_set") == "budget")
    assert set(placed["key"]) == {"tiny/model", "budget/copy"}
    assert placed["x"].is_finite().all()
    map_event = instance.get_latest_materialization_event(dg.AssetKey("model_map"))
    assert set(map_event.asset_materialization.metadata["budget_models"].value) == {
        "tiny/model",
        "budget/copy",
    }
    assert "text budget" in (root / "model_map" / "map.html").read_text()
    # The map's embedding (coordinates) never takes a budget row.
    index = pl.read_parquet(next((root / "coordinates").glob("v-*/models.parquet")))
    assert "tiny/model" not in index["key"].to_list()
