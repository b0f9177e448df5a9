"""Outputs never go stale or pile up: temporaries and unfinished version folders are removed
once no writer can be filling them, names fit the file-system limit, data is fsynced, and a
table that no longer describes the map is removed."""

import os
import socket
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from modelmap import storage as storage_mod
from modelmap.storage import write_parquet
from resources.storage import StorageResource

DAY = 24 * 3600


def test_a_valid_96_plus_96_key_is_written_whatever_the_host_name(tmp_path, monkeypatch):
    # A long but ordinary FQDN (Kubernetes pods on a cluster domain have such names).
    host = "modelmap-scoring-7f9c6d5b8-x2x4z.gpu-nodes.europe-west4.cluster.internal"
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    key = "o" * 96 + "/" + "n" * 96
    path = StorageResource(base_dir=str(tmp_path)).likelihood_path(key)
    write_parquet(pl.DataFrame({"a": [1]}), path)
    assert pl.read_parquet(path)["a"].to_list() == [1]


def test_any_temporary_name_fits_255_bytes():
    for name in ["x.parquet", "é" * 120 + ".parquet", "n" * 250]:
        tmp = f".{storage_mod.temporary_stem(name)}.{storage_mod.host_id()}.4194304.abcdefgh.tmp"
        assert len(tmp.encode()) <= 255


def _age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_temporaries_of_another_host_are_removed_only_when_old(tmp_path):
    final = tmp_path / "org--m.parquet"
    other = final.parent / f".{final.name}.0badc0de.12.abcdefgh.tmp"
    legacy = final.parent / f".{final.name}.some-old-host.12.abcdefgh.tmp"
    young = final.parent / f".{final.name}.0badc0de.13.abcdefgh.tmp"
    for path in (other, legacy, young):
        path.write_bytes(b"partial")
    _age(other, DAY + 60)
    _age(legacy, DAY + 60)
    _age(young, DAY - 600)
    write_parquet(pl.DataFrame({"a": [1]}), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([final.name, young.name])


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1]
    )
    write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "f.parquet")
    assert calls[:2] == ["fsync", "replace"] and calls.count("fsync") == 2  # file, then folder


def test_unfinished_version_folders_are_pruned_when_old_and_no_run_is_in_progress(tmp_path):
    store = StorageResource(base_dir=str(tmp_path), stale_after_hours=24)
    old, young = tmp_path / "coordinates" / ".v-old", tmp_path / "coordinates" / ".v-young"
    for folder in (old, young):
        folder.mkdir(parents=True)
        (folder / "L_raw.npy").write_bytes(b"x" * 1000)
    _age(old / "L_raw.npy", DAY + 60)
    _age(old, DAY + 60)
    store.new_version_dir("coordinates", others_in_progress=True)
    assert old.exists()  # another run may still be filling it
    store.new_version_dir("coordinates", others_in_progress=False)
    assert not old.exists() and young.exists()


@pytest.mark.slow
def test_another_run_of_the_asset_in_progress_is_seen():
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from modelmap_assets.runs import others_in_progress

    @dg.asset
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"others": others_in_progress(context)})

    def others(instance) -> bool:
        result = dg.materialize([probe], instance=instance)
        return result.asset_materializations_for_node("probe")[0].metadata["others"].value

    with dg.instance_for_test() as instance:
        assert others(instance) is False
        instance.add_run(
            DagsterRun(
                job_name="__ASSET_JOB",
                run_id=make_new_run_id(),
                status=DagsterRunStatus.STARTED,
                asset_selection=frozenset({dg.AssetKey("probe")}),
            )
        )
        assert others(instance) is True


@pytest.fixture
def small_map(tmp_path):
    """A corpus and the likelihood files of 4 models (random numbers), ready for the map."""
    from modelmap.corpus.build import CorpusText, corpus_hash, to_frame
    from modelmap.likelihoods import likelihood_frame
    from resources.settings import build_resources

    resources = build_resources({"MODELMAP_DATA": str(tmp_path / "data"), "MODELMAP_MLFLOW": "on"})
    storage = resources["storage"]
    texts = to_frame([CorpusText(f"text number {i}", "d") for i in range(30)])
    chash = corpus_hash(texts)
    storage.write_corpus(texts, {"corpus_hash": chash, "mean_bytes": 14.0})
    rng = np.random.default_rng(0)
    keys = [f"org/m{i}" for i in range(4)]
    for key in keys:
        df = likelihood_frame(texts["text_id"], -50 + rng.normal(size=30), np.full(30, 10))
        storage.write_likelihood(key, df, {"key": key, "corpus_hash": chash, "revision": "r"})
    return resources, keys


@pytest.mark.slow
def test_pairs_of_a_smaller_map_are_removed_not_relogged(small_map, tmp_path):
    from modelmap_assets.definitions import ASSETS

    resources, keys = small_map

    def run(max_pair_models: int):
        config = {
            "ops": {
                "kl_table": {
                    "config": {"max_pair_models": max_pair_models, "bootstrap_resamples": 20}
                }
            }
        }
        return dg.materialize(
            ASSETS,
            selection=["coordinates", "kl_table"],
            instance=instance,
            resources=resources,
            run_config=config,
        )

    pairs = Path(resources["storage"].root) / "kl_table" / "pairs.parquet"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", keys)
        assert run(10).success and pairs.exists()
        result = run(3)
    assert result.success and not pairs.exists()
    meta = result.asset_materializations_for_node("kl_table")[0].metadata
    assert "not written: K=4 > max_pair_models=3" in meta["pairs"].value
