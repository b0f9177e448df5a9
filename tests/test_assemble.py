"""Assembling the coordinates from small real likelihood files (`modelmap.geometry.assemble`)."""

import json

import numpy as np
import polars as pl
import pytest

from modelmap.geometry.assemble import (
    CENTRING_FILE,
    GRAPH_FILE,
    TWINS_FILE,
    TextIdsDiffer,
    build_coordinates,
    fill_rows,
    row_means,
    select_models,
)
from modelmap.geometry.centering import Centring
from modelmap.geometry.kl import NeighbourGraph
from modelmap.likelihoods import SPLIT_TWIN, likelihood_frame, write_likelihood_file
from modelmap.storage import write_parquet

TEXT_IDS = np.array([2, 5, 7, 11, 13, 17, 19, 23], dtype=np.int64)  # the corpus, ascending
TWIN_IDS = np.array([0, 1, 2], dtype=np.int64)


@pytest.fixture
def files(tmp_path):
    """Six models' files: four on every corpus text (one with twin rows, one in the layout
    written before the `split` column, one written unsorted), one on a text budget, one on
    another corpus; their log-likelihoods by key."""
    rng = np.random.default_rng(0)
    rows = {k: rng.normal(-300, 20, len(TEXT_IDS)) for k in ("a/one", "a/two", "b/old", "b/mixed")}
    twin = rng.normal(-250, 10, len(TWIN_IDS))
    paths = {k: tmp_path / f"{k.replace('/', '--')}.parquet" for k in [*rows, "c/budget", "d/x"]}
    meta = {"corpus_hash": "h", "family": "fam", "n_params": 7, "base_models": ["a/base"]}
    write_likelihood_file(
        paths["a/one"],
        [
            likelihood_frame(TEXT_IDS, rows["a/one"]),
            likelihood_frame(TWIN_IDS, twin, split=SPLIT_TWIN),
        ],
        {**meta, "twins_hash": "t"},
    )
    write_likelihood_file(paths["a/two"], [likelihood_frame(TEXT_IDS, rows["a/two"])], meta)
    write_parquet(
        pl.DataFrame({"text_id": TEXT_IDS, "loglik": rows["b/old"]}),
        paths["b/old"],
        {"corpus_hash": "h"},
    )
    order = rng.permutation(len(TEXT_IDS))  # rows out of order: the exact reader sorts them
    write_parquet(
        pl.DataFrame({"text_id": TEXT_IDS[order], "loglik": rows["b/mixed"][order]}),
        paths["b/mixed"],
        {"corpus_hash": "h", "n_corpus_rows": len(TEXT_IDS)},
    )
    write_likelihood_file(
        paths["c/budget"],
        [likelihood_frame(TEXT_IDS[:3], rows["a/one"][:3])],
        {"corpus_hash": "h", "text_set": "budget", "selection_hash": "s"},
    )
    write_likelihood_file(
        paths["d/x"], [likelihood_frame(TEXT_IDS, rows["a/two"])], {"corpus_hash": "other"}
    )
    return paths, rows, twin


def test_select_models_keeps_full_files_of_this_corpus(files):
    paths, _, _ = files
    keys = ["a/one", "a/two", "b/mixed", "b/old", "c/budget", "d/x", "e/missing"]
    models, left_out, budget = select_models(keys, paths, "h")
    assert [m["key"] for m in models] == ["a/one", "a/two", "b/mixed", "b/old"]
    assert models[0]["path"] == paths["a/one"] and models[0]["twins_hash"] == "t"
    assert budget == ["c/budget"]
    assert left_out == [
        "c/budget: scored on a text budget, not on every corpus text",
        "d/x: scored on another corpus (other)",
        "e/missing: not scored (failed or not yet run)",
    ]


def test_build_coordinates_writes_L_T_and_Q(files, tmp_path):
    paths, rows, twin = files
    models, left_out, budget = select_models(sorted(paths), paths, "h")
    out = tmp_path / "version"
    out.mkdir()
    info = build_coordinates(
        out,
        models,
        TEXT_IDS,
        corpus_hash="h",
        mean_bytes=900.0,
        twins=(TWIN_IDS, "t"),
        left_out=left_out,
        budget=budget,
    )
    keys = ["a/one", "a/two", "b/mixed", "b/old"]
    L = np.load(out / "L_raw.npy")
    assert L.dtype == np.float32 and L.shape == (4, 8)
    np.testing.assert_array_equal(L, np.array([rows[k] for k in keys], dtype=np.float32))
    T = np.load(out / TWINS_FILE)
    np.testing.assert_array_equal(T[0], twin.astype(np.float32))
    assert np.isnan(T[1:]).all()  # scored without twin rows

    centring = Centring.load(out / CENTRING_FILE)
    assert centring.clip_value == pytest.approx(np.percentile(L.astype(np.float64), 2.0))
    np.testing.assert_array_equal(np.load(out / "Q.npy"), centring.transform(L).astype(np.float32))
    np.testing.assert_array_equal(
        np.load(out / "L_clipped.npy"), np.maximum(L, np.float32(centring.clip_value))
    )
    assert NeighbourGraph.load(out / GRAPH_FILE) is not None

    index = pl.read_parquet(out / "models.parquet")
    assert index["key"].to_list() == keys
    assert index["family"].to_list() == ["fam", "fam", "b", "b"]
    assert index["base_models"].to_list() == ["a/base", "a/base", "", ""]
    np.testing.assert_allclose(index["mean_loglik_nats"], L.astype(np.float64).mean(axis=1))
    assert json.loads((out / "info.json").read_text()) == info
    assert info["K"] == 4 and info["N"] == 8 and info["models_with_twins"] == 1
    assert info["budget_models"] == ["c/budget"] and len(info["left_out"]) == 2
    assert info["clip_threshold_nats"] == centring.clip_value


def test_a_file_of_other_texts_fails_by_name(files, tmp_path):
    paths, rows, _ = files
    write_likelihood_file(
        paths["a/two"], [likelihood_frame(TEXT_IDS + 1, rows["a/two"])], {"corpus_hash": "h"}
    )
    models, _, _ = select_models(["a/one", "a/two"], paths, "h")
    with pytest.raises(TextIdsDiffer, match="a/two"):
        fill_rows(models, TEXT_IDS, np.empty((2, len(TEXT_IDS)), np.float32))


def test_row_means_by_blocks():
    L = np.arange(35, dtype=np.float32).reshape(7, 5)
    np.testing.assert_array_equal(row_means(L, block_rows=3), L.mean(axis=1))
