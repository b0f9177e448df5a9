"""Every asset materialized on the zoo with a real temporary Dagster instance."""

import json
import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest

from modelmap.kl import two_kl_nats
from modelmap_assets.cli import materialize_all
from modelmap_assets.definitions import build_resources, defs


def test_definitions_load():
    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"corpus", "likelihood", "coordinates", "kl_table", "model_map"}
    assert defs.get_assets_def("likelihood").partitions_def.name == "models"
    assert defs.get_assets_def("likelihood").op.pool == "gpu"


@pytest.fixture(scope="module")
def pipeline(zoo, tmp_path_factory):
    """Materialize everything for the zoo plus one broken model, on 300 texts."""
    folder, models = zoo
    tmp = tmp_path_factory.mktemp("pipeline")
    # A broken model: a zoo model whose weights file was truncated.
    broken = tmp / "cache" / "zoo" / "broken" / "truncated"
    shutil.copytree(folder / models[0].path, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    shutil.copy(folder / "zoo.json", tmp / "cache" / "zoo" / "zoo.json")
    for m in models:  # registry paths are relative: link the trained folders in
        target = tmp / "cache" / "zoo" / m.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(folder / m.path)
    env = {
        "MODELMAP_DATA": str(tmp / "data"),
        "MODELMAP_CACHE": str(tmp / "cache"),
        "MODELMAP_DEVICE": "cpu",
        # The demo's precision; float32 agreement with the reference is tested in test_scoring.
        "MODELMAP_DTYPE": "bfloat16",
    }
    resources = build_resources(env)
    keys = [m.key for m in models] + ["broken/truncated"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", keys)
        outcome = materialize_all(
            instance, {"source": "embedded", "n_texts": 300}, resources=resources
        )
        materialized = {
            k.to_user_string()
            for k in instance.get_asset_keys()
            if instance.get_latest_materialization_event(k) is not None
        }
        map_event = instance.get_latest_materialization_event(dg.AssetKey("model_map"))
        yield {
            "outcome": outcome,
            "root": tmp / "data",
            "models": models,
            "materialized": materialized,
            "map_event": map_event,
        }


def test_broken_model_fails_alone_with_a_clear_message(pipeline):
    failed = pipeline["outcome"]["failed"]
    assert list(failed) == ["broken/truncated"]
    message = failed["broken/truncated"]
    assert "broken/truncated" in message and "cannot load it as a causal LM" in message
    info = json.loads(next((pipeline["root"] / "coordinates").glob("v-*/info.json")).read_text())
    assert info["K"] == len(pipeline["models"])
    assert any("broken/truncated" in r for r in info["left_out"])


def test_every_asset_is_materialized_with_its_metadata(pipeline):
    assert {"corpus", "likelihood", "coordinates", "kl_table", "model_map"} <= pipeline[
        "materialized"
    ]
    root = pipeline["root"]
    for path in [
        "corpus/corpus.parquet",
        "kl_table/neighbours.parquet",
        "kl_table/pairs.parquet",
        "model_map/map.png",
        "model_map/map.html",
        "model_map/map.parquet",
    ]:
        assert (root / path).stat().st_size > 0, path
    metadata = pipeline["map_event"].asset_materialization.metadata
    assert metadata["method"].value == "tsne"
    assert "data:image/png;base64," in metadata["map"].value
    scores = pl.read_parquet(root / "likelihood" / "zoo--gpt2-base.parquet")
    assert scores.columns == ["text_id", "loglik", "n_tokens"] and scores.height == 300
    assert not list((root / "likelihood").glob(".*"))  # no temporary file left behind


def _q_and_index(root):
    folder = next((root / "coordinates").glob("v-*"))
    return pl.read_parquet(folder / "models.parquet"), np.load(folder / "Q.npy")


def test_each_finetune_is_nearest_to_its_own_family(pipeline):
    neighbours = pl.read_parquet(pipeline["root"] / "kl_table" / "neighbours.parquet")
    family = {m.key: m.family for m in pipeline["models"]}
    nearest = dict(neighbours.filter(pl.col("rank") == 1).select("model", "neighbour").iter_rows())
    finetunes = [m.key for m in pipeline["models"] if m.role == "finetune"]
    assert len(finetunes) >= 6
    for key in finetunes:
        assert family[nearest[key]] == family[key], f"{key} is nearest to {nearest[key]}"


def test_interpolation_series_lies_ordered_on_a_line(pipeline):
    index, Q = _q_and_index(pipeline["root"])
    row = {k: i for i, k in enumerate(index["key"].to_list())}
    series = sorted(
        (m for m in pipeline["models"] if m.role == "interpolation"), key=lambda m: m.alpha
    )
    assert len(series) >= 3
    family = series[0].family
    base = next(m for m in pipeline["models"] if m.family == family and m.role == "base")
    a = Q[row[base.key]].astype(np.float64)
    points = [Q[row[m.key]].astype(np.float64) for m in series]
    direction = points[-1] - a
    t = [float((p - a) @ direction / (direction @ direction)) for p in points]
    assert t == sorted(t), f"projections not ordered: {t}"
    for p, ti in zip(points, t, strict=True):
        off_line = np.linalg.norm(p - a - ti * direction) / np.linalg.norm(direction)
        assert off_line < 0.5, f"point at t={ti:.2f} is {off_line:.2f} line-lengths off the line"
    d = two_kl_nats(np.stack([a, *points]))[0]
    assert np.all(np.diff(d) > 0), f"2KL from the base does not grow along the series: {d}"
