"""Benchmark scores: a user's file of published scores, and the targets the regression fits.

A scores file is CSV or Parquet with one row per model: a model column (``model``,
``model_id``, ``model_name``, ``fullname``, ``eval_name``, ``key`` or ``id``) and one numeric
column per benchmark, in percent (0-100; a column whose values all lie in 0-1 is read as a
fraction and multiplied by 100). Missing values are allowed. The six benchmarks of the Open LLM
Leaderboard v1 are recognised under their usual spellings (``ARC``, ``arc_challenge``,
``HellaSwag (10-shot)``, ``MMLU``, ``TruthfulQA``, ``truthfulqa_mc2``, ``Winogrande``,
``GSM8K``, ...) and renamed to ``ARC``, ``HellaSwag``, ``MMLU``, ``TruthfulQA``,
``Winogrande``, ``GSM8K``; other numeric columns are kept under their own names.

Every score belongs to a suite: ``open_llm_v1`` (those six), ``modelmap_tasks`` (measured by
the platform, see ``modelmap.reports.tasks``) or ``file`` (any other column of the file). The
regression's "mean" targets are per suite (``mean:open_llm_v1`` is the paper's 6-task mean),
over the models that have every benchmark of that suite.
"""

from __future__ import annotations

import re
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


def read_scores_file(path: str | Path) -> pl.DataFrame:
    """Long table (``SCORE_COLUMNS``) of the scores in a CSV or Parquet file."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkFileError(f"{path}: benchmark scores file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            df = pl.read_parquet(path)
        elif path.suffix.lower() in (".csv", ".tsv"):
            df = pl.read_csv(path, separator="\t" if path.suffix.lower() == ".tsv" else ",")
        else:
            raise BenchmarkFileError(f"{path}: expected a .csv, .tsv or .parquet file")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise BenchmarkFileError(f"{path}: cannot be read ({err})") from err
    lower = {c.lower(): c for c in df.columns}
    model_col = next((lower[c] for c in MODEL_COLUMNS if c in lower), None)
    if model_col is None:
        raise BenchmarkFileError(
            f"{path}: no model column (one of {', '.join(MODEL_COLUMNS)}); columns: {df.columns}"
        )
    models = df[model_col].cast(pl.Utf8)
    if models.null_count():
        raise BenchmarkFileError(f"{path}: {models.null_count()} row(s) without a model id")
    dupes = models.filter(models.is_duplicated()).unique().to_list()
    if dupes:
        raise BenchmarkFileError(f"{path}: models listed more than once: {sorted(dupes)[:5]}")

    rows, seen = [], {}
    for col in df.columns:
        if col == model_col or not df[col].dtype.is_numeric():
            continue
        name = canonical_name(col)
        if name in seen:
            raise BenchmarkFileError(f"{path}: columns {seen[name]!r} and {col!r} both mean {name}")
        seen[name] = col
        values = df[col].cast(pl.Float64)
        finite = values.drop_nulls().drop_nans()
        if finite.len() and (finite.min() < 0 or finite.max() > 100):
            bad = df.filter((values < 0) | (values > 100))[model_col][0]
            raise BenchmarkFileError(
                f"{path}: column {col!r}: scores must be percentages in 0..100 (model {bad})"
            )
        if finite.len() and finite.max() <= 1.0:
            values = values * 100.0  # fractions
        for model, score in zip(models, values, strict=True):
            if score is not None and np.isfinite(score):
                rows.append((model, name, suite_of(name), float(score), "file", None))
    if not rows:
        raise BenchmarkFileError(f"{path}: no numeric benchmark columns")
    return pl.DataFrame(rows, schema=_schema(), orient="row")


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
