"""A benchmark scores file is read exactly as documented or refused naming file, row, column."""

import polars as pl
import pytest

from modelmap.reports.benchmarks import BenchmarkFileError, read_scores_file


def _csv(tmp_path, text: str):
    path = tmp_path / "scores.csv"
    path.write_text(text)
    return path


def _scores(df: pl.DataFrame) -> dict:
    return {(m, b): s for m, b, s in df.select("model", "benchmark", "score").iter_rows()}


def test_low_percentages_are_not_rescaled(tmp_path):
    path = _csv(tmp_path, "model,GSM8K,ARC\norg/a,0.5,40\norg/b,0.9,41\n")
    assert _scores(read_scores_file(path)) == {
        ("org/a", "GSM8K"): 0.5,
        ("org/b", "GSM8K"): 0.9,
        ("org/a", "ARC"): 40.0,
        ("org/b", "ARC"): 41.0,
    }


def test_a_non_numeric_cell_is_refused_with_row_and_column(tmp_path):
    path = _csv(tmp_path, "model,ARC,MMLU\norg/a,40,50\norg/b,n/a,51\n")
    with pytest.raises(
        BenchmarkFileError, match=r"scores\.csv: row 2 \(model 'org/b'\), column 'ARC': 'n/a'"
    ):
        read_scores_file(path)


def test_a_non_numeric_cell_far_down_is_refused(tmp_path):
    body = "".join(f"org/m{i},{i % 90}\n" for i in range(300))
    path = _csv(tmp_path, "model,ARC\n" + body + "org/last,n/a\n")
    with pytest.raises(BenchmarkFileError, match=r"row 301 \(model 'org/last'\), column 'ARC'"):
        read_scores_file(path)


def test_an_empty_cell_is_a_missing_score(tmp_path):
    path = _csv(tmp_path, "model,ARC,MMLU\norg/a,,50\norg/b,41,51\n")
    assert ("org/a", "ARC") not in _scores(read_scores_file(path))


def test_two_model_columns_differing_in_case_are_refused(tmp_path):
    path = _csv(tmp_path, "model,ARC,Model\norg/a,40,org/x\n")
    with pytest.raises(BenchmarkFileError, match="columns 'model' and 'Model' differ only in case"):
        read_scores_file(path)


@pytest.mark.parametrize("cell", ["nan", "inf", "-1", "100.5"])
def test_non_finite_and_out_of_range_cells_are_refused(tmp_path, cell):
    path = _csv(tmp_path, f"model,ARC\norg/a,40\norg/b,{cell}\n")
    with pytest.raises(BenchmarkFileError, match=r"row 2 \(model 'org/b'\), column 'ARC'"):
        read_scores_file(path)


def test_ids_are_read_exactly_and_near_misses_named():
    from modelmap.reports.benchmarks import match_models

    match = match_models(
        ["org/a ", "ORG/B", "c", "org/d", "zzz/none"], ["org/a", "org/b", "org/c", "org/d"]
    )
    assert match.unmatched == ["org/a ", "ORG/B", "c", "zzz/none"]
    assert match.near_misses == {"org/a ": "org/a", "ORG/B": "org/b", "c": "org/c"}


@pytest.mark.slow
def test_the_asset_names_a_near_miss_of_its_model(tmp_path):
    import dagster as dg

    from modelmap_assets.definitions import ASSETS, build_resources
    from resources.benchmarks import BenchmarkResource

    path = _csv(tmp_path, "model,ARC\nORG/tiny ,40\nother/x,50\n")
    resources = build_resources({"MODELMAP_DATA": str(tmp_path / "data"), "MODELMAP_MLFLOW": "off"})
    resources["benchmarks"] = BenchmarkResource(scores_file=str(path), measure="never")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/tiny"])
        result = dg.materialize(
            ASSETS,
            selection=["benchmark_scores"],
            partition_key="org/tiny",
            instance=instance,
            resources=resources,
        )
        logs = "\n".join(e.message for e in instance.all_logs(result.run_id) if e.message)
    meta = result.asset_materializations_for_node("benchmark_scores")[0].metadata
    assert meta["file_models_unregistered"].value == 2
    assert "'ORG/tiny ' -> org/tiny" in meta["file_near_misses"].value
    assert "has no row for 'org/tiny' but has ['ORG/tiny ']" in logs
