"""Benchmark scores: a user's file of published scores, and the targets the regression fits.

A scores file is CSV, TSV or Parquet with one row per model: a model column (the first of
``model``, ``model_id``, ``model_name``, ``fullname``, ``eval_name``, ``key``, ``id``, in any
case) and one column per benchmark whose cells are scores in percent, 0 to 100, read exactly as
written (0.5 is half a percent: nothing is rescaled). An empty cell is a missing score. A
column with no number in it (a note, a link) is not a benchmark and is listed as ignored,
unless its name is one of the six below; in a benchmark column every cell is a number or empty.
Model ids are taken exactly as written (no trimming, no case folding). The file is refused,
naming the file, the row (1-based data row) and the column, when a cell is not a number
(``n/a``), is NaN or infinite, or lies outside 0..100; when a model id is empty or listed
twice; when two columns have the same name up to case and spaces (``model`` and ``Model``) or
mean the same benchmark. The six benchmarks of the Open LLM Leaderboard v1 are recognised under
their usual spellings (``ARC``, ``arc_challenge``, ``HellaSwag (10-shot)``, ``MMLU``,
``TruthfulQA``, ``truthfulqa_mc2``, ``Winogrande``, ``GSM8K``, ...) and renamed to ``ARC``,
``HellaSwag``, ``MMLU``, ``TruthfulQA``, ``Winogrande``, ``GSM8K``; other benchmark columns
keep their own names.

Every score belongs to a suite: ``open_llm_v1`` (those six), ``modelmap_tasks`` (measured by
the platform, see ``modelmap.reports.tasks``) or ``file`` (any other column of the file). The
regression's "mean" targets are per suite (``mean:open_llm_v1`` is the paper's 6-task mean),
over the models that have every benchmark of that suite.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

OPEN_LLM_V1 = ("ARC", "HellaSwag", "MMLU", "TruthfulQA", "Winogrande", "GSM8K")
SUITE_OPEN_LLM = "open_llm_v1"
SUITE_TASKS = "modelmap_tasks"
SUITE_FILE = "file"
MODEL_COLUMNS = ("model", "model_id", "model_name", "fullname", "eval_name", "key", "id")
SCORE_COLUMNS = ["model", "benchmark", "suite", "score", "source", "n_items"]

_ALIASES = {
    "arc": "ARC",
    "arcchallenge": "ARC",
    "hellaswag": "HellaSwag",
    "mmlu": "MMLU",
    "hendryckstest": "MMLU",
    "truthfulqa": "TruthfulQA",
    "truthfulqamc2": "TruthfulQA",
    "truthfulqamc": "TruthfulQA",
    "winogrande": "Winogrande",
    "gsm8k": "GSM8K",
}


class BenchmarkFileError(ValueError):
    """A bad scores file; the message names the file and the reason."""


def canonical_name(column: str) -> str:
    """The Open LLM Leaderboard v1 name of a column, or the column itself."""
    bare = re.sub(r"\(.*?\)|\d+-?shot", "", column.lower())
    bare = re.sub(r"[^a-z0-9]", "", bare)
    return _ALIASES.get(bare, column.strip())


def suite_of(benchmark: str) -> str:
    return SUITE_OPEN_LLM if benchmark in OPEN_LLM_V1 else SUITE_FILE


@dataclass(frozen=True)
class ScoresFile:
    """A scores file as read: the long table, the file's model ids, the ignored columns."""

    scores: pl.DataFrame  # SCORE_COLUMNS
    models: list[str]
    ignored_columns: list[str]


def read_scores_file(path: str | Path) -> pl.DataFrame:
    """Long table (``SCORE_COLUMNS``) of the scores in a CSV, TSV or Parquet file."""
    return parse_scores_file(path).scores


def parse_scores_file(path: str | Path) -> ScoresFile:
    """The scores file at ``path``, read as the module docstring says or refused with
    `BenchmarkFileError` naming the file, the row and the column."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark scores file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        elif suffix in (".csv", ".tsv"):
            # Every cell as text: the cells are parsed here, so no type guess drops a column.
            df = pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        else:
            raise BenchmarkFileError(f"{path}: expected a .csv, .tsv or .parquet file")
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as err:
        raise BenchmarkFileError(f"{path}: cannot be read ({err})") from err
    folded: dict[str, str] = {}
    for col in df.columns:
        same = folded.setdefault(col.strip().lower(), col)
        if same != col:
            raise BenchmarkFileError(
                f"{path}: columns {same!r} and {col!r} differ only in case or spaces"
            )
    model_col = next((folded[c] for c in MODEL_COLUMNS if c in folded), None)
    if model_col is None:
        raise BenchmarkFileError(
            f"{path}: no model column (one of {', '.join(MODEL_COLUMNS)}); columns: {df.columns}"
        )
    models = df[model_col].cast(pl.Utf8).to_list()
    first_row: dict[str, int] = {}
    for row, model in enumerate(models, start=1):
        if model is None or not model.strip():
            raise BenchmarkFileError(f"{path}: row {row}, column {model_col!r}: empty model id")
        if model in first_row:
            raise BenchmarkFileError(
                f"{path}: row {row}, column {model_col!r}: model {model!r} listed more than "
                f"once (first in row {first_row[model]})"
            )
        first_row[model] = row

    rows, seen, ignored = [], {}, []
    for col in df.columns:
        if col == model_col:
            continue
        values = _column_scores(path, df[col], models)
        if values is None:
            ignored.append(col)
            continue
        name = canonical_name(col)
        if name in seen:
            raise BenchmarkFileError(f"{path}: columns {seen[name]!r} and {col!r} both mean {name}")
        seen[name] = col
        for model, score in zip(models, values, strict=True):
            if score is not None:
                rows.append((model, name, suite_of(name), score, "file", None))
    if not seen:
        raise BenchmarkFileError(
            f"{path}: no benchmark column (a column of scores in percent); columns: {df.columns}"
        )
    return ScoresFile(pl.DataFrame(rows, schema=_schema(), orient="row"), models, ignored)


def _column_scores(path: Path, column: pl.Series, models: list[str]) -> list[float | None] | None:
    """The column's scores (None where empty), or None when the column holds no number."""
    if column.dtype.is_numeric():
        cells = column.cast(pl.Float64).to_list()
        texts = [repr(c) for c in cells]
    elif column.dtype == pl.Utf8:
        texts = column.to_list()
        cells = [None if t is None or not t.strip() else _number(t) for t in texts]
        known = canonical_name(column.name) in OPEN_LLM_V1
        if not known and all(c is None or c is _NOT_A_NUMBER for c in cells):
            return None  # a note, a link: not scores (an Open LLM benchmark name always is)
        for row, (text, cell) in enumerate(zip(texts, cells, strict=True), start=1):
            if cell is _NOT_A_NUMBER:
                raise BenchmarkFileError(
                    f"{path}: row {row} (model {models[row - 1]!r}), column {column.name!r}: "
                    f"{text!r} is not a number (leave the cell empty for a missing score)"
                )
    else:
        return None
    for row, cell in enumerate(cells, start=1):
        if cell is not None and not (math.isfinite(cell) and 0.0 <= cell <= 100.0):
            raise BenchmarkFileError(
                f"{path}: row {row} (model {models[row - 1]!r}), column {column.name!r}: "
                f"{texts[row - 1]!r} is not a score in percent (0..100)"
            )
    return cells


_NOT_A_NUMBER = object()


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return _NOT_A_NUMBER


@dataclass(frozen=True)
class ModelMatch:
    """How a scores file's model ids meet the registered models."""

    unmatched: list[str]  # file ids that are no registered model
    near_misses: dict[str, str]  # file id -> the registered key it probably means


def _loose(key: str) -> str:
    return key.strip().casefold()


def match_models(file_models: list[str], registered: list[str]) -> ModelMatch:
    """File ids that match no registered model, and the near misses among them: the same id
    up to case and surrounding whitespace, or the same name without its organisation."""
    exact = set(registered)
    by_loose = {_loose(k): k for k in registered}
    by_name = {}
    for k in registered:
        by_name.setdefault(_loose(k.rsplit("/", 1)[-1]), []).append(k)
    unmatched, near = [], {}
    for model in file_models:
        if model in exact:
            continue
        unmatched.append(model)
        loose = _loose(model)
        if loose in by_loose:
            near[model] = by_loose[loose]
        elif "/" not in loose and len(by_name.get(loose, [])) == 1:
            near[model] = by_name[loose][0]
    return ModelMatch(unmatched, near)


def _schema() -> dict:
    return {
        "model": pl.Utf8,
        "benchmark": pl.Utf8,
        "suite": pl.Utf8,
        "score": pl.Float64,
        "source": pl.Utf8,
        "n_items": pl.Int64,
    }


def empty_scores() -> pl.DataFrame:
    return pl.DataFrame(schema=_schema())


def targets(scores: pl.DataFrame, models: list[str]) -> dict[str, np.ndarray]:
    """Per benchmark and per suite mean: a score per model in ``models`` order (NaN if none).

    A suite's mean (``mean:<suite>``) is defined for models that have every benchmark of the
    suite (and only when the suite has two benchmarks or more).
    """
    index = {m: i for i, m in enumerate(models)}
    out: dict[str, np.ndarray] = {}
    suites: dict[str, list[str]] = {}
    for (benchmark, suite), group in scores.group_by(["benchmark", "suite"], maintain_order=True):
        y = np.full(len(models), np.nan)
        for model, score in zip(group["model"], group["score"], strict=True):
            if model in index:
                y[index[model]] = score
        out[benchmark] = y
        suites.setdefault(suite, []).append(benchmark)
    for suite, names in sorted(suites.items()):
        if len(names) >= 2:
            out[f"mean:{suite}"] = np.mean([out[n] for n in sorted(names)], axis=0)
    return dict(sorted(out.items()))


def primary_mean(target_map: dict[str, np.ndarray]) -> str | None:
    """The mean target with the most models (the paper's 6-task mean when there is one)."""
    means = [k for k in target_map if k.startswith("mean:")]
    if not means:
        return None
    return max(
        means, key=lambda k: (np.isfinite(target_map[k]).sum(), k == f"mean:{SUITE_OPEN_LLM}")
    )
