"""Reading a user's benchmark scores file and turning scores into regression targets."""

import numpy as np
import polars as pl
import pytest

from modelmap.reports.benchmarks import (
    BenchmarkFileError,
    canonical_name,
    primary_mean,
    read_scores_file,
    targets,
)


@pytest.mark.parametrize(
    ("column", "name"),
    [
        ("ARC", "ARC"),
        ("arc_challenge", "ARC"),
        ("ARC (25-shot)", "ARC"),
        ("HellaSwag (10-Shot)", "HellaSwag"),
        ("MMLU", "MMLU"),
        ("TruthfulQA", "TruthfulQA"),
        ("truthfulqa_mc2", "TruthfulQA"),
        ("Winogrande (5-shot)", "Winogrande"),
        ("GSM8K", "GSM8K"),
        ("my_task", "my_task"),
    ],
)
def test_open_llm_leaderboard_names_are_recognised(column, name):
    assert canonical_name(column) == name


def test_csv_and_parquet_give_the_same_long_table(tmp_path):
    df = pl.DataFrame(
        {
            "model_id": ["org/a", "org/b", "org/c"],
            "ARC (25-shot)": [50.0, 60.0, None],
            "HellaSwag": [70.0, 75.0, 80.0],
            "note": ["x", "y", "z"],  # non-numeric columns are ignored
            "custom": [0.5, 0.25, 1.0],  # percentages, read as written (no 0-1 guess)
        }
    )
    df.write_csv(tmp_path / "s.csv")
    df.write_parquet(tmp_path / "s.parquet")
    a, b = read_scores_file(tmp_path / "s.csv"), read_scores_file(tmp_path / "s.parquet")
    assert a.equals(b)
    assert set(a["benchmark"]) == {"ARC", "HellaSwag", "custom"}
    assert a.filter(pl.col("benchmark") == "ARC").height == 2  # the missing value is dropped
    custom = a.filter(pl.col("benchmark") == "custom").sort("model")["score"].to_list()
    assert custom == [0.5, 0.25, 1.0]
    assert set(a.filter(pl.col("benchmark") == "ARC")["suite"]) == {"open_llm_v1"}
    assert set(a.filter(pl.col("benchmark") == "custom")["suite"]) == {"file"}


def test_bad_files_name_the_file_and_the_reason(tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(BenchmarkFileError, match="s.csv: benchmark scores file not found"):
        read_scores_file(path)
    path.write_text("name,ARC\na,50\n")
    with pytest.raises(BenchmarkFileError, match="s.csv: no model column"):
        read_scores_file(path)
    path.write_text("model,ARC\na,50\na,60\n")
    with pytest.raises(BenchmarkFileError, match="'a' listed more than once"):
        read_scores_file(path)
    path.write_text("model,ARC\na,150\nb,50\n")
    with pytest.raises(
        BenchmarkFileError,
        match=r"row 1 \(model 'a'\), column 'ARC': '150' is not a score in percent \(0..100\)",
    ):
        read_scores_file(path)
    path.write_text("model,ARC,arc_challenge\na,50,50\n")
    with pytest.raises(BenchmarkFileError, match="both mean ARC"):
        read_scores_file(path)


def test_targets_have_a_mean_per_suite_over_complete_models():
    rows = [
        ("m1", "ARC", "open_llm_v1", 40.0),
        ("m1", "MMLU", "open_llm_v1", 60.0),
        ("m2", "ARC", "open_llm_v1", 50.0),  # no MMLU: no suite mean
        ("m1", "spelling", "modelmap_tasks", 90.0),
        ("m2", "spelling", "modelmap_tasks", 80.0),
        ("m2", "word_order", "modelmap_tasks", 70.0),
        ("m1", "word_order", "modelmap_tasks", 60.0),
    ]
    scores = pl.DataFrame(
        [(*r, "file", None) for r in rows],
        schema=["model", "benchmark", "suite", "score", "source", "n_items"],
        orient="row",
    )
    t = targets(scores, ["m1", "m2", "m3"])
    np.testing.assert_array_equal(t["ARC"], [40.0, 50.0, np.nan])
    np.testing.assert_array_equal(t["mean:open_llm_v1"], [50.0, np.nan, np.nan])
    np.testing.assert_array_equal(t["mean:modelmap_tasks"], [75.0, 75.0, np.nan])
    assert primary_mean(t) == "mean:modelmap_tasks"  # the mean with the most models
