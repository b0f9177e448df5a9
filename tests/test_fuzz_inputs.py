"""Fuzzing the three things a user hands modelmap: corpus files, benchmark files, model keys.

Each property has an oracle. A file generated from a known table must read back as exactly
that table; the same file with one injected defect must raise the documented error naming the
file and the line (corpus), or the row and the column (benchmarks); a model key is accepted
exactly when the documented rule says so, and an accepted key gives a file name that fits the
file system and maps back to the key. Derandomized, so `make test` sees the same inputs every
time; `FUZZ_COUNTS` (printed at the end with `-s`) counts what was tried.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelmap.corpus.build import CorpusError, load_pile_jsonl
from modelmap.reports.benchmarks import (
    OPEN_LLM_V1,
    BenchmarkFileError,
    canonical_name,
    read_scores_file,
)
from modelmap.storage import (
    InvalidModelKey,
    filename_to_key,
    key_to_filename,
    path_inside,
    temporary_stem,
    validate_model_key,
)

FUZZ_COUNTS: Counter = Counter()
WORK = Path(tempfile.mkdtemp(prefix="modelmap-fuzz-"))


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nfuzz inputs tried: {dict(FUZZ_COUNTS)}, total {sum(FUZZ_COUNTS.values())}")


# ------------------------------------------------------------------------- corpus files

# Any Unicode text but lone surrogates (they have no UTF-8 form; a defect of their own below).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40).filter(
    lambda t: t.strip() != ""
)
DOMAIN = st.sampled_from(["Pile-CC", "Github", "ArXiv", "Wikipedia (en)", "ÜberDomain", ""])


@st.composite
def corpus_tables(draw):
    texts = draw(st.lists(TEXT, min_size=1, max_size=12, unique=True))
    return [(t, draw(DOMAIN)) for t in texts]


def _jsonl_lines(rows, ensure_ascii: bool, blanks: list[int]) -> tuple[list[bytes], list[int]]:
    """The file's lines and, for each row, its 1-based line number (blank lines interleaved)."""
    lines, line_of = [], []
    for i, (text, domain) in enumerate(rows):
        if i in blanks:
            lines.append(b"\n")
        obj = {"text": text, "pile_set_name": domain, "pile_idx": i, "chunk_idx": 0}
        lines.append((json.dumps(obj, ensure_ascii=ensure_ascii) + "\n").encode("utf-8"))
        line_of.append(len(lines))
    return lines, line_of


@fuzz(150)
@given(
    rows=corpus_tables(),
    ensure_ascii=st.booleans(),
    blanks=st.lists(st.integers(0, 11), max_size=3),
    data=st.data(),
)
def test_corpus_files_read_back_exactly(rows, ensure_ascii, blanks, data):
    lines, _ = _jsonl_lines(rows, ensure_ascii, blanks)
    path = WORK / "corpus-good.jsonl"
    path.write_bytes(b"".join(lines))
    n = data.draw(st.one_of(st.none(), st.integers(1, len(rows))))
    texts = load_pile_jsonl(path, n)
    assert [(t.text, t.domain) for t in texts] == rows[: n or len(rows)]
    FUZZ_COUNTS["corpus file, valid"] += 1


CORPUS_DEFECTS = {
    # name: (how the row's line is replaced, words of the error)
    "invalid UTF-8 byte": (lambda line, rows, i: line[:-2] + b"\xff" + line[-2:], "not UTF-8"),
    "lone surrogate": (
        lambda line, rows, i: b'{"text": "x\\udc80y", "pile_set_name": "d"}\n',
        "lone surrogate",
    ),
    "bad JSON": (
        lambda line, rows, i: line.decode()[: len(line.decode()) // 2].encode() + b"\n",
        "bad JSON",
    ),
    "not an object": (lambda line, rows, i: b'["text", "d"]\n', "expected a JSON object"),
    "missing field": (lambda line, rows, i: b'{"text": "only text"}\n', "'pile_set_name'"),
    "number as text": (
        lambda line, rows, i: b'{"text": 12, "pile_set_name": "d"}\n',
        "non-string field 'text'",
    ),
    "empty text": (lambda line, rows, i: b'{"text": " \\n ", "pile_set_name": "d"}\n', "empty"),
    "duplicate text": (
        lambda line, rows, i: (
            json.dumps({"text": rows[0][0], "pile_set_name": "d"}).encode() + b"\n"
        ),
        "the same text as line",
    ),
    "over-long text": (
        lambda line, rows, i: (
            json.dumps({"text": "y" * 300, "pile_set_name": "d"}).encode() + b"\n"
        ),
        "text of 300 bytes, more than 256",
    ),
}


@fuzz(350)
@given(
    rows=corpus_tables(),
    defect=st.sampled_from(sorted(CORPUS_DEFECTS)),
    blanks=st.lists(st.integers(0, 11), max_size=3),
    data=st.data(),
)
def test_corpus_defects_name_file_and_line(rows, defect, blanks, data):
    if defect == "duplicate text" and len(rows) < 2:
        rows = [*rows, ("a different text", "d")]
    lines, line_of = _jsonl_lines(rows, False, blanks)
    first = 1 if defect == "duplicate text" else 0
    i = data.draw(st.integers(first, len(rows) - 1))
    replace, words = CORPUS_DEFECTS[defect]
    lines[line_of[i] - 1] = replace(lines[line_of[i] - 1], rows, i)
    path = WORK / f"corpus-{defect.replace(' ', '-')}.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(CorpusError) as raised:
        load_pile_jsonl(path, max_text_bytes=256)
    message = str(raised.value)
    assert message.startswith(f"{path}: line {line_of[i]}: "), message
    assert words in message, message
    # A defect after the first n texts is never read.
    if i >= 1:
        assert len(load_pile_jsonl(path, i, max_text_bytes=256)) == i
    FUZZ_COUNTS[f"corpus file, {defect}"] += 1


# ------------------------------------------------------------------------- benchmark files

KEY_PART = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_]{0,6}", fullmatch=True)
MODEL_ID = st.builds(lambda a, b: f"{a}/{b}", KEY_PART, KEY_PART)
BENCHMARKS = ["ARC", "HellaSwag (10-shot)", "MMLU", "truthfulqa_mc2", "Winogrande", "GSM8K"]
BENCHMARKS += ["my_task", "Zeta Ω score", "cloze_prose"]
SCORE = st.one_of(
    st.none(),
    st.floats(0.0, 100.0, allow_nan=False),
    st.sampled_from([0.0, 0.5, 0.9, 1.0, 99.99, 100.0]),
)


@st.composite
def score_tables(draw):
    models = draw(st.lists(MODEL_ID, min_size=1, max_size=8, unique=True))
    columns = draw(st.lists(st.sampled_from(BENCHMARKS), min_size=1, max_size=4, unique=True))
    table = {"model": models}
    for col in columns:
        values = draw(st.lists(SCORE, min_size=len(models), max_size=len(models)))
        if all(v is None for v in values):
            values[0] = 50.0
        table[col] = values
    return table


def _expected(table: dict) -> set:
    return {
        (m, canonical_name(col), v)
        for col, values in table.items()
        if col != "model"
        for m, v in zip(table["model"], values, strict=True)
        if v is not None
    }


def _frame(table: dict, note: bool) -> pl.DataFrame:
    df = pl.DataFrame(
        {k: pl.Series(v, dtype=pl.Utf8 if k == "model" else pl.Float64) for k, v in table.items()}
    )
    return df.with_columns(pl.lit("a note, not a score").alias("note")) if note else df


@fuzz(150)
@given(table=score_tables(), fmt=st.sampled_from(["csv", "tsv", "parquet"]), note=st.booleans())
def test_benchmark_files_read_back_exactly(table, fmt, note):
    path = WORK / f"scores.{fmt}"
    df = _frame(table, note)
    if fmt == "parquet":
        df.write_parquet(path)
    else:
        df.write_csv(path, separator="\t" if fmt == "tsv" else ",")
    got = read_scores_file(path)
    assert set(got.select("model", "benchmark", "score").iter_rows()) == _expected(table)
    assert got.height == len(_expected(table))
    FUZZ_COUNTS[f"benchmark file, valid {fmt}"] += 1


CELL_DEFECTS = ["n/a", "abc", "50%", "1,5", "nan", "inf", "-inf", "-0.5", "100.01", "1e3"]


@fuzz(350)
@given(
    table=score_tables(),
    defect=st.sampled_from([*CELL_DEFECTS, "empty model id", "model listed twice", "Model"]),
    data=st.data(),
)
def test_benchmark_defects_name_file_row_and_column(table, defect, data):
    models = table["model"]
    columns = [c for c in table if c != "model"]
    path = WORK / "scores-defect.csv"
    cells = {c: ["" if v is None else repr(v) for v in table[c]] for c in columns}
    if defect == "model listed twice" and len(models) < 2:
        models, cells = [*models, "z/extra"], {c: [*v, "1"] for c, v in cells.items()}
    ids = list(models)
    extra = {}
    if defect in CELL_DEFECTS:
        row = data.draw(st.integers(0, len(ids) - 1))
        col = data.draw(st.sampled_from(columns))
        cells[col][row] = defect
        words = [f"row {row + 1} (model {ids[row]!r}), column {col!r}", repr(defect)[1:-1]]
    elif defect == "empty model id":
        row = data.draw(st.integers(0, len(ids) - 1))
        ids[row] = ""
        words = [f"row {row + 1}, column 'model': empty model id"]
    elif defect == "model listed twice":
        row = data.draw(st.integers(1, len(ids) - 1))
        ids[row] = ids[0]
        words = [f"row {row + 1}, column 'model': model {ids[0]!r} listed more than once"]
    else:  # a second model column differing only in case
        extra = {"Model": ids}
        words = ["columns 'model' and 'Model' differ only in case"]
    df = pl.DataFrame(
        {"model": ids, **cells, **extra}, schema={k: pl.Utf8 for k in ["model", *cells, *extra]}
    )
    df.write_csv(path)
    if defect in CELL_DEFECTS and _text_only(cells[col]) and canonical_name(col) not in OPEN_LLM_V1:
        # The column now holds no number: a note, ignored and listed as such (documented).
        others = [c for c in columns if c != col]
        if others:
            got = read_scores_file(path)
            assert canonical_name(col) not in set(got["benchmark"])
            FUZZ_COUNTS["benchmark file, column of text only"] += 1
            return
        words = ["no benchmark column"]
    with pytest.raises(BenchmarkFileError) as raised:
        read_scores_file(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, (word, message)
    FUZZ_COUNTS[f"benchmark file, {defect}"] += 1


def _text_only(cells: list[str]) -> bool:
    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    return not any(cell.strip() and number(cell) for cell in cells)


# ------------------------------------------------------------------------- model keys


def documented_rule(key: str) -> bool:
    """The README's rule, written independently of `validate_model_key`: `org/name` or
    `name`; each part 1-96 characters of letters, digits, '.', '_', '-', starting with a
    letter or digit and not ending in '.' or '-'; no '..', no '--' anywhere."""
    parts = key.split("/")
    if not 1 <= len(parts) <= 2:
        return False
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
    for part in parts:
        if not 1 <= len(part) <= 96 or not set(part) <= allowed:
            return False
        if not (part[0].isascii() and part[0].isalnum()) or part.endswith((".", "-")):
            return False
    return ".." not in key and "--" not in key


KEY_CHARS = st.sampled_from(list("aZ09._-/ \\:\n\x00é~") + ["..", "--", "/", "%2e"])
KEYS = st.one_of(
    st.lists(KEY_CHARS, min_size=0, max_size=12).map("".join),
    st.from_regex(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}(/[A-Za-z0-9][A-Za-z0-9._-]{0,100})?", fullmatch=True
    ),
    st.text(max_size=20),
)


@fuzz(1200)
@given(key=KEYS)
def test_model_keys_follow_the_documented_rule(key):
    base = WORK / "storage"
    if documented_rule(key):
        assert validate_model_key(key) == key
        name = key_to_filename(key, ".parquet")
        assert filename_to_key(name, ".parquet") == key
        assert base.resolve() in path_inside(base, "likelihood", name).parents
        temporary = f".{temporary_stem(name)}.0123abcd.4194304.abcdefgh.tmp"
        assert len(name.encode()) <= 255 and len(temporary.encode()) <= 255
        FUZZ_COUNTS["model key, valid"] += 1
    else:
        with pytest.raises(InvalidModelKey, match=re.escape(repr(key))):
            validate_model_key(key)
        FUZZ_COUNTS["model key, refused"] += 1
