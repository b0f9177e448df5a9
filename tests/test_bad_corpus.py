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


def test_a_task_with_two_equal_choices_is_refused(tmp_path):
    # A tie goes to the first choice: a duplicate of the answer would score it right for free.
    from modelmap.reports.tasks import TaskError, read_tasks

    item = {"id": "q1", "context": "In the", "choices": [" beginning", " beginning"], "answer": 0}
    (tmp_path / "dup.jsonl").write_text(json.dumps(item) + "\n")
    with pytest.raises(TaskError, match=r"dup\.jsonl: line 1: two choices are the same text"):
        read_tasks(tmp_path)


FULL_DISK_WRITER = """
import resource, signal, sys
import numpy as np, polars as pl
from pathlib import Path
from modelmap.storage import write_parquet

final = Path(sys.argv[1])
write_parquet(pl.DataFrame({"x": [1.0]}), final)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a quota: writes fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    write_parquet(pl.DataFrame({"x": np.random.default_rng(0).random(100_000)}), final)
except OSError as exc:
    print("ERROR", exc)
"""


def test_a_full_disk_names_the_file_and_keeps_the_previous_version(tmp_path):
    import subprocess
    import sys

    import polars as pl

    final = tmp_path / "likelihood" / "org--m.parquet"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK_WRITER, str(final)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert f"ERROR [Errno 27] cannot write {final}" in out, out
    assert pl.read_parquet(final)["x"].to_list() == [1.0]
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary left


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"context": "\xff", "choices": [" a", " b"], "answer": 0}\n', "line 2: not UTF-8"),
        (b'{"context": "\\ud800", "choices": [" a", " b"], "answer": 0}\n', "line 2: a lone"),
    ],
    ids=["bad-byte", "lone-surrogate"],
)
def test_a_task_file_with_bad_text_names_file_and_line(tmp_path, bad, message):
    from modelmap.reports.tasks import TaskError, read_tasks

    good = json.dumps({"context": "In the", "choices": [" a", " b"], "answer": 0}).encode()
    (tmp_path / "t.jsonl").write_bytes(good + b"\n" + bad)
    with pytest.raises(TaskError, match=rf"t\.jsonl: {message}"):
        read_tasks(tmp_path)
