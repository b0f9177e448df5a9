"""The paper's published matrix: read safely, imported as partitions, a scored model among it."""

import json
import os
import pickle
import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest

from modelmap.likelihoods import read_metadata, read_rows
from modelmap.published import (
    PAPER_CORPUS_FILE,
    PublishedMatrixError,
    UnsafePickleError,
    model_key,
    read_published_matrix,
)
from modelmap_assets.definitions import ASSETS, build_resources
from modelmap_assets.scoring.imports import import_published_matrix
from resources.benchmarks import BenchmarkResource

RNG = np.random.default_rng(0)


def write_pickle(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_a_dict_of_float32_and_float64_vectors(tmp_path, protocol):
    rows = {
        "org/a": RNG.normal(size=6).astype(np.float32),
        "org/b": RNG.normal(size=6),
        "org/c": [float(x) for x in RNG.normal(size=6)],
    }
    m = read_published_matrix(write_pickle(tmp_path / "m.pkl", rows, protocol))
    assert m.names == ["org/a", "org/b", "org/c"] and m.shape == (3, 6)
    assert m.loglik_nats.dtype == np.float64
    assert np.array_equal(m.loglik_nats[0], rows["org/a"].astype(np.float64))
    assert len(m.sha256) == 64


def test_numpy_1_module_names_are_accepted(tmp_path):
    """numpy 1.x pickles name `numpy.core.multiarray`; numpy 2.x `numpy._core.multiarray`."""
    data = pickle.dumps({"org/a": np.arange(4, dtype=np.float32)}, protocol=2)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "old.pkl").write_bytes(old)
    m = read_published_matrix(tmp_path / "old.pkl")
    assert m.loglik_nats.tolist() == [[0.0, 1.0, 2.0, 3.0]]


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_naming_file_and_global(tmp_path):
    marker = tmp_path / "ran"
    path = write_pickle(tmp_path / "evil.pkl", {"org/a": _RunsCode(marker)})
    with pytest.raises(UnsafePickleError) as refused:
        read_published_matrix(path)
    assert str(path) in str(refused.value)
    assert f"refused global {os.system.__module__}.system" in str(refused.value)
    assert not marker.exists()
    # Any other global too, even a harmless one: only what the format needs.
    path = write_pickle(tmp_path / "od.pkl", {"org/a": __import__("collections").OrderedDict()})
    with pytest.raises(UnsafePickleError, match="refused global collections.OrderedDict"):
        read_published_matrix(path)


@pytest.mark.parametrize(
    "obj, message",
    [
        ([1.0, 2.0], "expected a non-empty dict"),
        ({"org/a": np.zeros(3), "org/b": np.zeros(4)}, "org/b has 4 values, the first model 3"),
        ({"org/a": np.array([1.0, np.nan])}, "org/a: 1 values are NaN or inf"),
        ({"org/a": np.zeros((2, 2))}, "2-D array"),
    ],
)
def test_a_badly_shaped_matrix_is_refused_with_the_reason(tmp_path, obj, message):
    with pytest.raises(PublishedMatrixError, match=message):
        read_published_matrix(write_pickle(tmp_path / "bad.pkl", obj))


def test_published_names_become_partition_keys():
    assert model_key("EleutherAI/pythia-160m") == "EleutherAI/pythia-160m"
    assert model_key("gpt2") == "gpt2"
    assert model_key("org/name with space") == "org/name-with-space"
    assert model_key("a/b/c") == "a/b_c"


def jsonl_corpus(folder, texts, name=PAPER_CORPUS_FILE):
    """A file of the paper's corpus shape (one JSON object per line) named `name`."""
    path = folder / name
    lines = [
        json.dumps({"text": t, "pile_set_name": "Pile-CC", "pile_idx": i, "chunk_idx": 0})
        for i, t in enumerate(texts)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def materialize_corpus(instance, resources, path, n):
    dg.materialize(
        ASSETS,
        selection=["corpus"],
        instance=instance,
        resources=resources,
        run_config={
            "ops": {
                "corpus": {
                    "config": {"source": "jsonl", "path": str(path), "n_texts": n, "n_twins": 0}
                }
            }
        },
    )


@pytest.mark.slow
def test_import_writes_imported_files_and_partitions(tmp_path):
    texts = [f"text number {i}: " + "word " * (20 + i) for i in range(8)]
    env = {"MODELMAP_DATA": str(tmp_path / "data"), "MODELMAP_MLFLOW": "off"}
    resources = build_resources(env)
    storage = resources["storage"]
    matrix = {f"paper/m{i}": RNG.normal(-300, 30, size=8).astype(np.float32) for i in range(4)}
    pkl = write_pickle(tmp_path / "raw_log-likelihood_1018.pkl", matrix)
    with dg.instance_for_test() as instance:
        other = jsonl_corpus(tmp_path, texts, name="other.jsonl")
        materialize_corpus(instance, resources, other, 8)
        with pytest.raises(
            PublishedMatrixError, match=f"the current corpus is not {PAPER_CORPUS_FILE}"
        ):
            import_published_matrix(instance, storage, pkl)
        materialize_corpus(instance, resources, jsonl_corpus(tmp_path, texts), 8)
        short = write_pickle(tmp_path / "short.pkl", {"paper/x": np.zeros(7)})
        with pytest.raises(PublishedMatrixError, match="7 texts, but the current corpus has 8"):
            import_published_matrix(instance, storage, short, corpus_check=False)

        report = import_published_matrix(instance, storage, pkl, log=lambda s: None)
        assert sorted(report.imported) == sorted(matrix)
        assert set(instance.get_dynamic_partitions("models")) == set(matrix)
        meta = read_metadata(storage.likelihood_path("paper/m2"))
        assert meta["origin"] == "imported" and meta["text_set"] == "all"
        assert meta["import_file"] == pkl.name and len(meta["import_sha256"]) == 64
        rows = read_rows(storage.likelihood_path("paper/m2"), columns=("loglik", "n_tokens"))
        assert np.allclose(rows["loglik"].to_numpy(), matrix["paper/m2"])
        assert rows["n_tokens"].null_count() == rows.height
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("likelihood")), limit=10
        ).records
        assert {r.partition_key for r in records} == set(matrix)
        # Importing the same file again changes nothing.
        again = import_published_matrix(instance, storage, pkl, log=lambda s: None)
        assert again.imported == [] and sorted(again.unchanged) == sorted(matrix)


@pytest.mark.slow
def test_a_scored_model_lands_among_the_imported_ones_with_its_neighbours(tiny_model, tmp_path):
    """Score a real tiny model on a corpus of the paper's file shape, import a synthetic
    published matrix holding a near copy of its row (and rows further away), and build the
    map: the scored model's nearest neighbour is the near copy, by the KL table."""
    from modelmap.corpus.build import build_corpus

    texts = build_corpus("embedded", 40)["text"].to_list()
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "mine" / "tiny")
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_LOCAL_MODELS": str(models),
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_MLFLOW": "off",
    }
    resources = {**build_resources(env), "benchmarks": BenchmarkResource(measure="never")}
    storage = resources["storage"]
    with dg.instance_for_test() as instance:
        materialize_corpus(instance, resources, jsonl_corpus(tmp_path, texts), 40)
        instance.add_dynamic_partitions("models", ["mine/tiny"])
        dg.materialize(
            ASSETS,
            selection=["likelihood"],
            partition_key="mine/tiny",
            instance=instance,
            resources=resources,
        )
        mine = read_rows(storage.likelihood_path("mine/tiny"))["loglik"].to_numpy()
        rng = np.random.default_rng(1)
        published = {"near/copy": (mine + rng.normal(0, 0.05, 40)).astype(np.float32)}
        for i in range(12):
            published[f"far/m{i}"] = (mine + rng.normal(0, 3.0, 40)).astype(np.float32)
        pkl = write_pickle(tmp_path / "raw_log-likelihood_1018.pkl", published)
        import_published_matrix(instance, storage, pkl, log=lambda s: None)
        dg.materialize(
            ASSETS,
            selection=["coordinates", "kl_table"],
            instance=instance,
            resources=resources,
        )
        index = pl.read_parquet(storage.current_version_dir("coordinates") / "models.parquet")
        assert set(index["key"]) == {"mine/tiny", *published}
        nn = pl.read_parquet(storage.root / "kl_table" / "neighbours.parquet")
        first = nn.filter((pl.col("model") == "mine/tiny") & (pl.col("rank") == 1))
        assert first["neighbour"].item() == "near/copy"


def test_the_command_refuses_an_unsafe_pickle(tmp_path, monkeypatch, capsys):
    from modelmap_assets.cli.main import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("MODELMAP_DATA", str(tmp_path / "data"))
    path = write_pickle(tmp_path / "evil.pkl", {"org/a": _RunsCode(tmp_path / "ran")})
    assert main(["import-matrix", str(path)]) == 1
    err = capsys.readouterr().err
    assert "import-matrix:" in err and "evil.pkl: refused global" in err
    assert not (tmp_path / "ran").exists()
