"""Held-out twin texts: from the corpus's sources, never from a corpus document (fast tier)."""

import json

import polars as pl

from modelmap.corpus.build import (
    build_corpus,
    build_twins,
    default_n_twins,
    load_embedded_documents,
)
from modelmap.corpus.chunking import chunk_documents


def test_embedded_twins_come_from_the_heldout_documents():
    corpus = build_corpus("embedded", 300)
    twins = build_twins("embedded", 300, 100)
    assert twins.height == 100 and twins.columns == corpus.columns
    assert set(twins["text_id"]) == set(range(100))
    heldout = {c.text for c in chunk_documents(load_embedded_documents("heldout"))}
    assert set(twins["text"]) <= heldout
    assert not set(twins["text"]) & set(build_corpus("embedded", 2000)["text"])
    assert set(twins["domain"]) == set(corpus["domain"])  # the same sources
    # independent of N: a bigger corpus never takes a twin
    assert twins.equals(build_twins("embedded", 1000, 100))
    assert build_twins("embedded", 300, 0).height == 0
    assert default_n_twins(300) == 100 and default_n_twins(5000) == 500


def test_folder_twins_share_no_document_with_the_corpus(tmp_path):
    for d in range(4):
        (tmp_path / f"dom{d}").mkdir()
        for f in range(6):
            (tmp_path / f"dom{d}" / f"doc{f}.txt").write_text(f"{d}{f} " * 400)  # 3 chunks
    corpus = build_corpus("folder", 20, path=tmp_path)
    twins = build_twins("folder", 20, 50, path=tmp_path)
    assert 0 < twins.height <= 50
    prefix = {t[:3] for t in corpus["text"]}  # "<d><f> " names the document
    assert not {t[:3] for t in twins["text"]} & prefix


def test_jsonl_twins_are_later_lines_of_other_documents(tmp_path):
    rows = [
        {"text": f"text {i} " * 40, "pile_set_name": "Pile-CC", "pile_idx": i // 2, "chunk_idx": i}
        for i in range(10)
    ]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    twins = build_twins("jsonl", 5, 10, path=path)
    # lines 5..9; line 5 shares pile_idx 2 with line 4 of the corpus
    assert twins["text"].to_list() == [f"text {i} " * 40 for i in (6, 7, 8, 9)]
    assert build_twins("jsonl", 10, 10, path=path).height == 0
    assert isinstance(twins, pl.DataFrame)
