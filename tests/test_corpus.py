"""Corpus loaders, the corpus table, its hash and the committed embedded default."""

from __future__ import annotations

import gzip
import hashlib
import json
import struct

import polars as pl
import pytest

from modelmap.corpus.build import (
    EMBEDDED_PATH,
    CorpusError,
    build_corpus,
    corpus_hash,
    doc_split,
    load_embedded_documents,
    load_pile_jsonl,
    load_text_folder,
)
from modelmap.corpus.chunking import chunk_documents

# Pinned: changes when the embedded data file, the chunking, the sampling or the hash change.
EMBEDDED_2000_HASH = "ea2fbe78fba0255d045e46bc09dc1420ceefdc30a48053425c4e2d7b299072ce"
EMBEDDED_DOMAINS = {
    "bible",
    "devil",
    "jargon",
    "fortunes",
    "python_docs",
    "python_code",
    "wikipedia",
}
SCHEMA = {"text_id": pl.Int64, "text": pl.Utf8, "domain": pl.Utf8, "n_bytes": pl.Int64}


# ---------------------------------------------------------------- the paper's JSONL


def write_pile(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pile_row(i, text, domain):
    return {"text": text, "pile_set_name": domain, "pile_idx": 10 * i, "chunk_idx": 0, "index": i}


@pytest.fixture
def pile_file(tmp_path):
    rows = [
        pile_row(0, "First text, café.", "Pile-CC"),
        pile_row(1, "def f():\n    return 1\n", "Github"),
        pile_row(2, "Third € text 😀", "ArXiv"),
    ]
    return write_pile(tmp_path / "texts-10k-pile.jsonl", rows)


def test_pile_jsonl_takes_first_n_without_rechunking(pile_file):
    texts = load_pile_jsonl(pile_file, 2)
    assert [(t.text, t.domain) for t in texts] == [
        ("First text, café.", "Pile-CC"),
        ("def f():\n    return 1\n", "Github"),
    ]
    assert "pile_idx=10" in texts[1].origin
    assert len(load_pile_jsonl(pile_file)) == 3


def test_build_corpus_from_jsonl_has_the_contract_columns(pile_file):
    df = build_corpus("jsonl", 3, path=pile_file)
    assert dict(df.schema) == SCHEMA
    assert df["text_id"].to_list() == [0, 1, 2]
    assert df["domain"].to_list() == ["Pile-CC", "Github", "ArXiv"]
    # 'é' is 2 bytes, '€' 3, '😀' 4
    assert df["n_bytes"].to_list() == [18, 22, 19]


def test_pile_jsonl_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(pile_row(0, "ok", "A")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"bad\.jsonl: line 2: bad JSON"):
        load_pile_jsonl(path)


def test_pile_jsonl_missing_field_is_named(tmp_path):
    path = write_pile(tmp_path / "x.jsonl", [{"text": "t", "pile_idx": 0}])
    with pytest.raises(CorpusError, match=r"x\.jsonl: line 1: .*'pile_set_name'"):
        load_pile_jsonl(path)


def test_pile_jsonl_missing_file_and_too_few_lines(tmp_path, pile_file):
    with pytest.raises(CorpusError, match=r"nope\.jsonl: no such file"):
        load_pile_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(CorpusError, match=r"asked for 5 texts but the file has only 3"):
        build_corpus("jsonl", 5, path=pile_file)


# ---------------------------------------------------------------- a folder of text files


@pytest.fixture
def text_folder(tmp_path):
    root = tmp_path / "docs"
    (root / "sub1").mkdir(parents=True)
    (root / "sub2" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "sub1" / "a.txt").write_text("α" * 600, encoding="utf-8")  # 1024 + 176 (dropped)
    (root / "sub2" / "deep" / "b.md").write_text("b" * 1300, encoding="utf-8")  # 1024 + 276
    (root / "top.txt").write_text("t" * 300, encoding="utf-8")  # one 300-byte chunk
    (root / ".hidden" / "h.txt").write_text("h" * 900, encoding="utf-8")  # skipped: hidden
    (root / "data.bin").write_bytes(b"\xff" * 900)  # skipped: not a text suffix
    return root


def test_folder_domains_chunks_and_sampling(text_folder):
    texts = load_text_folder(text_folder, 4)
    by_domain = sorted((t.domain, len(t.text.encode("utf-8"))) for t in texts)
    assert by_domain == [("sub1", 1024), ("sub2", 276), ("sub2", 1024), ("top", 300)]
    # the order is the paper's seeded sample, reproducible
    assert [t.origin for t in texts] == [t.origin for t in load_text_folder(text_folder, 4)]
    df = build_corpus("folder", 3, path=text_folder)
    assert df.height == 3 and dict(df.schema) == SCHEMA


def test_folder_with_too_few_chunks_names_the_numbers(text_folder):
    with pytest.raises(CorpusError, match=r"docs: 3 documents give 4 usable chunks .*asked for 5"):
        load_text_folder(text_folder, 5)


def test_empty_folder_and_bad_encoding(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty: no text files"):
        load_text_folder(tmp_path / "empty", 1)
    with pytest.raises(CorpusError, match=r"missing: no such folder"):
        load_text_folder(tmp_path / "missing", 1)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "latin1.txt").write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(CorpusError, match=r"latin1\.txt: not UTF-8"):
        load_text_folder(bad, 1)


def test_build_corpus_rejects_unknown_source_and_missing_path():
    with pytest.raises(ValueError, match="unknown corpus source 'pile'"):
        build_corpus("pile", 10)
    with pytest.raises(ValueError, match="needs a path"):
        build_corpus("folder", 10)


# ---------------------------------------------------------------- the hash


def test_corpus_hash_encoding_is_the_documented_one():
    df = pl.DataFrame({"text_id": [1, 0], "text": ["€", "ab"]})
    expected = hashlib.sha256(
        b"modelmap-corpus-v1\n"
        + struct.pack("<qQ", 0, 2)
        + b"ab"
        + struct.pack("<qQ", 1, 3)
        + "€".encode()
    ).hexdigest()
    assert corpus_hash(df) == expected
    # row order does not matter, content does
    assert corpus_hash(df.reverse()) == expected
    assert corpus_hash(df.with_columns(pl.Series("text", ["€", "ac"]))) != expected
    # length prefixes: moving a byte between texts changes the hash
    moved = pl.DataFrame({"text_id": [0, 1], "text": ["a", "b€"]})
    assert corpus_hash(moved) != expected


# ---------------------------------------------------------------- the embedded default


@pytest.fixture(scope="module")
def embedded_2000():
    return build_corpus("embedded", 2000)


def test_embedded_corpus_is_reproducible_byte_for_byte(embedded_2000):
    again = build_corpus("embedded", 2000)
    assert corpus_hash(embedded_2000) == corpus_hash(again) == EMBEDDED_2000_HASH
    assert embedded_2000.equals(again)


def test_embedded_corpus_shape_and_domains(embedded_2000):
    df = embedded_2000
    assert dict(df.schema) == SCHEMA
    assert df["text_id"].to_list() == list(range(2000))
    assert df["n_bytes"].min() > 256 and df["n_bytes"].max() <= 1024
    assert set(df["domain"].unique()) == EMBEDDED_DOMAINS
    assert df["domain"].value_counts()["count"].min() >= 40


def test_embedded_file_is_stable_gzip():
    raw = EMBEDDED_PATH.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert len(raw) < 4_000_000
    first = json.loads(gzip.decompress(raw).split(b"\n", 1)[0])
    assert set(first) == {"doc_id", "domain", "source", "text"}


def test_embedded_splits_are_disjoint_and_cover_all_domains():
    corpus = load_embedded_documents("corpus")
    train = load_embedded_documents("train")
    heldout = load_embedded_documents("heldout")
    every = load_embedded_documents("all")
    ids_c, ids_t, ids_h = ({d.doc_id for d in s} for s in (corpus, train, heldout))
    assert not ids_c & ids_t and not ids_c & ids_h and not ids_t & ids_h
    assert ids_c | ids_t | ids_h == {d.doc_id for d in every}
    assert all(doc_split(d.doc_id) == "corpus" for d in corpus)
    assert all(doc_split(d.doc_id) == "heldout" for d in heldout)
    for docs in (corpus, train, heldout):
        chunks = chunk_documents(docs)
        assert {c.domain for c in chunks} == EMBEDDED_DOMAINS
    assert len(chunk_documents(corpus)) > 4000
    with pytest.raises(ValueError, match="split"):
        load_embedded_documents("test")


def test_embedded_too_many_texts_is_a_clear_error():
    with pytest.raises(CorpusError, match=r"corpus split\): .* usable chunks .*asked for 100000"):
        build_corpus("embedded", 100_000)
