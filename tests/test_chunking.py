"""Hand-worked cases for UTF-8-safe chunking, the >256-byte filter and the paper's sampling."""

from __future__ import annotations

import random

import pytest

from modelmap.corpus.chunking import Chunk, Document, chunk_documents, sample_chunks, split_utf8


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def test_ascii_splits_at_exactly_max_bytes():
    chunks = split_utf8("a" * 2500)
    assert [len(c) for c in chunks] == [1024, 1024, 452]


def test_text_of_exactly_max_bytes_is_one_chunk():
    assert split_utf8("a" * 1024) == ["a" * 1024]


@pytest.mark.parametrize(
    ("char", "width"),
    [("é", 2), ("€", 3), ("😀", 4)],
)
def test_multibyte_char_straddling_the_boundary_moves_to_next_chunk(char, width):
    # The character starts at byte 1023, so bytes 1023..1023+width-1 cross the 1,024 limit.
    assert nbytes(char) == width
    text = "a" * 1023 + char + "tail"
    chunks = split_utf8(text)
    assert chunks == ["a" * 1023, char + "tail"]
    assert nbytes(chunks[0]) == 1023


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_multibyte_char_ending_exactly_at_the_boundary_stays(char):
    prefix = "a" * (1024 - nbytes(char))
    chunks = split_utf8(prefix + char + "z")
    assert chunks == [prefix + char, "z"]
    assert nbytes(chunks[0]) == 1024


def test_all_emoji_text_cuts_on_four_byte_boundaries():
    chunks = split_utf8("😀" * 300)  # 1,200 bytes
    assert [nbytes(c) for c in chunks] == [1024, 176]


def test_splitting_is_lossless_and_bounded_on_mixed_text():
    rng = random.Random(0)
    alphabet = "ab c\n" + "éü" + "€漢" + "😀🎉"
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    for max_bytes in (4, 5, 7, 256, 1024):
        chunks = split_utf8(text, max_bytes)
        assert "".join(chunks) == text
        assert all(0 < nbytes(c) <= max_bytes for c in chunks)
        # greedy: every chunk but the last is at most 3 bytes short of the limit
        assert all(nbytes(c) > max_bytes - 4 for c in chunks[:-1])


def test_empty_text_gives_no_chunks():
    assert split_utf8("") == []


def test_max_bytes_below_one_character_is_rejected():
    with pytest.raises(ValueError, match="max_bytes"):
        split_utf8("abc", 3)


def test_chunk_of_exactly_256_bytes_is_dropped_and_257_kept():
    docs = [
        Document("x" * (1024 + 256), "d0", "first"),  # chunks of 1024 and 256 bytes
        Document("y" * (1024 + 257), "d1", "second"),  # chunks of 1024 and 257 bytes
    ]
    chunks = chunk_documents(docs)
    assert [(c.domain, c.doc_index, c.chunk_index, c.n_bytes) for c in chunks] == [
        ("d0", 0, 0, 1024),
        ("d1", 1, 0, 1024),
        ("d1", 1, 1, 257),
    ]
    assert chunks[2] == Chunk("y" * 257, "d1", 1, 1, "second")


def test_min_bytes_counts_bytes_not_characters():
    # 129 'é' = 258 bytes (kept); 128 'é' = 256 bytes (dropped) although both are < 257 chars.
    kept = chunk_documents([Document("é" * 129, "d"), Document("é" * 128, "d")])
    assert [c.doc_index for c in kept] == [0]


def test_sample_is_the_papers_pool_then_prefix():
    items = list(range(100))
    got = sample_chunks(items, 10, seed=42, pool=40)
    assert got == random.Random(42).sample(items, 40)[:10]
    # a larger n extends the same sample: text i of a 10-text corpus is text i of a 20-text one
    assert sample_chunks(items, 20, seed=42, pool=40)[:10] == got
    assert sample_chunks(items, 10, seed=43, pool=40) != got


def test_sample_pool_larger_than_input_uses_everything():
    items = list(range(7))
    assert sorted(sample_chunks(items, 7, pool=40_000)) == items


def test_sample_more_than_available_names_the_numbers():
    with pytest.raises(ValueError, match=r"asked for 11 .* only 10 .*100 chunks, pool 10"):
        sample_chunks(list(range(100)), 11, pool=10)
