"""The likelihood file format: full, budget, twin and imported rows in one schema."""

import numpy as np
import polars as pl
import pytest

from modelmap import likelihoods as lf
from modelmap.storage import write_parquet


def test_round_trip_of_corpus_and_twin_rows(tmp_path):
    path = tmp_path / "org--m.parquet"
    corpus = lf.likelihood_frame([2, 0, 1], [-3.0, -1.0, -2.0], [30, 10, 20])
    twins = lf.likelihood_frame([0, 1], [-5.0, -6.0], [50, 60], split=lf.SPLIT_TWIN)
    lf.write_likelihood_file(path, [twins, corpus], {"corpus_hash": "h", "key": "org/m"})
    rows = lf.corpus_rows(path)
    assert rows["text_id"].to_list() == [0, 1, 2]
    assert rows["loglik"].to_list() == [-1.0, -2.0, -3.0]
    assert lf.twin_rows(path)["loglik"].to_list() == [-5.0, -6.0]
    meta = lf.read_metadata(path)
    assert meta["n_corpus_rows"] == 3 and meta["n_twin_rows"] == 2
    assert meta["origin"] == lf.ORIGIN_SCORED and lf.is_full(meta)


def test_imported_rows_have_unknown_token_counts(tmp_path):
    path = tmp_path / "org--imp.parquet"
    frame = lf.likelihood_frame(np.arange(4), np.linspace(-4, -1, 4))
    lf.write_likelihood_file(
        path, [frame], {"origin": lf.ORIGIN_IMPORTED, "import_sha256": "x", "corpus_hash": "h"}
    )
    df = pl.read_parquet(path)
    assert df["n_tokens"].null_count() == 4
    assert lf.read_metadata(path)["origin"] == lf.ORIGIN_IMPORTED


def test_budget_file_is_not_full(tmp_path):
    path = tmp_path / "org--b.parquet"
    frame = lf.likelihood_frame([3, 7], [-1.0, -2.0], [5, 6])
    lf.write_likelihood_file(path, [frame], {"text_set": lf.TEXT_SET_BUDGET, "corpus_hash": "h"})
    assert not lf.is_full(lf.read_metadata(path))


def test_files_before_the_split_column_read_as_corpus_rows(tmp_path):
    path = tmp_path / "org--old.parquet"
    old = pl.DataFrame({"text_id": [0, 1], "loglik": [-1.0, -2.0], "n_tokens": [3, 4]})
    write_parquet(old, path, {"corpus_hash": "h"})
    assert lf.corpus_rows(path)["loglik"].to_list() == [-1.0, -2.0]
    assert lf.twin_rows(path).height == 0
    meta = lf.read_metadata(path)
    assert lf.is_full(meta) and meta["origin"] == lf.ORIGIN_SCORED


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="2 text ids but 1"):
        lf.likelihood_frame([0, 1], [-1.0])


SETTINGS = {"text_set": lf.TEXT_SET_ALL, "selection_hash": None, "twins_hash": "t", "d": "bf16"}


def scored_file(path, **meta):
    frame = lf.likelihood_frame([0, 1], [-1.0, -2.0], [5, 6])
    base = {"revision": "sha1", "corpus_hash": "h", "twins_hash": "t", "d": "bf16"}
    return lf.write_likelihood_file(path, [frame], base | meta)


def test_a_file_is_current_for_the_sha_corpus_and_settings_it_records(tmp_path):
    path = scored_file(tmp_path / "org--m.parquet")
    assert lf.is_current(path, "sha1", "h", SETTINGS)
    assert not lf.is_current(path, "sha2", "h", SETTINGS)  # the model changed
    assert not lf.is_current(path, "sha1", "h2", SETTINGS)  # the corpus changed
    assert not lf.is_current(path, "sha1", "h", SETTINGS | {"d": "float32"})
    assert not lf.is_current(path, "sha1", "h", SETTINGS | {"twins_hash": "t2"})
    assert not lf.is_current(path, "sha1", "h", SETTINGS | {"twins_hash": None})
    # A setting the file does not record reads as None: not current for any other value.
    assert not lf.is_current(path, "sha1", "h", SETTINGS | {"stride": 128})
    assert lf.is_current(path, "sha1", "h", SETTINGS | {"stride": None})


def test_when_in_doubt_a_file_is_not_current(tmp_path):
    path = scored_file(tmp_path / "org--m.parquet")
    assert not lf.is_current(path, None, "h", SETTINGS)  # revision unknown (Hub unreachable)
    assert not lf.is_current(path, "sha1", None, SETTINGS)  # no corpus yet
    assert not lf.is_current(tmp_path / "org--none.parquet", "sha1", "h", SETTINGS)
    broken = tmp_path / "org--broken.parquet"
    broken.write_bytes(b"not parquet")
    assert not lf.is_current(broken, "sha1", "h", SETTINGS)
    budget = scored_file(tmp_path / "org--b.parquet", text_set=lf.TEXT_SET_BUDGET)
    assert not lf.is_current(budget, "sha1", "h", SETTINGS | {"selection_hash": None})
    imported = scored_file(tmp_path / "org--i.parquet", origin=lf.ORIGIN_IMPORTED)
    assert not lf.is_current(imported, "sha1", "h", SETTINGS)
