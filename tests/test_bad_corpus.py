"""A JSONL corpus with bad bytes, bad text or repeated text is refused naming file and line."""

import json

import pytest

from modelmap.corpus.build import CorpusError, load_pile_jsonl


def _line(text: str, domain: str = "Pile-CC") -> bytes:
    return (json.dumps({"text": text, "pile_set_name": domain}) + "\n").encode()


def _write(tmp_path, *lines: bytes):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"".join(lines))
    return path


GOOD = _line("a first text of the corpus")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"text": "caf\xe9", "pile_set_name": "x"}\n', r"line 2: not UTF-8 \(invalid"),
        (b'{"text": "a \\ud800 b", "pile_set_name": "x"}\n', r"line 2: field 'text' holds a lone"),
        (_line(""), r"line 2: empty text"),
        (_line("   \n"), r"line 2: empty text"),
        (_line("a first text of the corpus"), r"line 2: the same text as line 1"),
        (_line("x" * 10_000_000), r"line 2: text of 10,000,000 bytes, more than 1,048,576"),
    ],
    ids=["latin1-byte", "lone-surrogate", "empty", "blank", "duplicate", "10MB-line"],
)
def test_bad_line_is_refused_with_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path, GOOD, bad, _line("a third text"))
    with pytest.raises(CorpusError, match=rf"corpus\.jsonl: {message}"):
        load_pile_jsonl(path)


def test_bad_bytes_after_the_first_n_texts_are_not_read(tmp_path):
    path = _write(tmp_path, GOOD, _line("second"), b"\xff\xfe not read\n")
    assert [t.text for t in load_pile_jsonl(path, 2)] == ["a first text of the corpus", "second"]
