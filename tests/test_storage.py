"""Model keys that could escape the storage folder are refused; writes are atomic."""

import polars as pl
import pytest

from modelmap.storage import (
    InvalidModelKey,
    key_to_filename,
    path_inside,
    read_parquet_metadata,
    validate_model_key,
    write_atomic,
    write_parquet,
)


@pytest.mark.parametrize(
    "key", ["org/name", "EleutherAI/pythia-160m", "zoo/llama-interp-0.4", "gpt2"]
)
def test_valid_keys(key):
    assert validate_model_key(key) == key
    assert "/" not in key_to_filename(key, ".parquet")


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "org/../x",
        "a/b/c",
        "/abs/path",
        "org/na me",
        "org/a,b",
        "org/x\n",
        "org/\x00x",
        "",
        "org/",
        "-org/x",
        "org/x.",
        "a--b/c",
    ],
)
def test_invalid_keys_are_refused_with_the_key_named(key):
    with pytest.raises(InvalidModelKey, match="invalid model key"):
        validate_model_key(key)


def test_paths_never_leave_the_base(tmp_path):
    assert path_inside(tmp_path, "likelihood", "a.parquet").parent == tmp_path / "likelihood"
    with pytest.raises(InvalidModelKey, match="escapes"):
        path_inside(tmp_path, "..", "x")


def test_failed_write_leaves_neither_partial_nor_temporary_file(tmp_path):
    final = tmp_path / "out.parquet"

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(final, boom)
    assert list(tmp_path.iterdir()) == []


def test_parquet_carries_its_metadata(tmp_path):
    path = write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "x.parquet", {"corpus_hash": "h"})
    assert read_parquet_metadata(path) == {"corpus_hash": "h"}
    assert pl.read_parquet(path)["a"].to_list() == [1]
