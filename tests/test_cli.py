"""The `modelmap` command: models scored once, and mistakes told in one line."""

import os
import shutil

import dagster as dg
import pytest

from modelmap_assets.cli.main import backfill, main, materialize_all, materialize_corpus
from modelmap_assets.definitions import ASSETS
from modelmap_assets.scoring.scored import SKIPPED_LINE, already_scored
from resources.settings import build_resources
from workshop.hub_server import HubServer, publish

NO_WEBSERVER = "http://127.0.0.1:9"


def likelihood_events(instance, key: str) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("likelihood"), asset_partitions=[key]),
        limit=10,
    ).records
    return len(records)


@pytest.mark.slow
def test_materialize_scores_a_model_once_and_force_scores_it_again(zoo, tmp_path, capsys):
    folder, models = zoo
    keys = [m.key for m in models[:3]]
    env = {
        "MODELMAP_DATA": str(tmp_path / "data"),
        "MODELMAP_CACHE": str(tmp_path / "cache"),
        "MODELMAP_LOCAL_MODELS": str(folder),
        "MODELMAP_DEVICE": "cpu",
    }
    corpus = {"n_texts": 40}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", keys)
        first = materialize_all(instance, corpus, resources=build_resources(env))
        assert first["skipped"] == [] and first["failed"] == {}
        assert "skipped" not in capsys.readouterr().out
        files = {k: build_resources(env)["storage"].likelihood_path(k) for k in keys}
        written = {k: p.stat().st_mtime_ns for k, p in files.items()}

        second = materialize_all(instance, corpus, resources=build_resources(env))
        assert second["skipped"] == keys
        out = capsys.readouterr().out
        assert SKIPPED_LINE.format(n=3) in out and out.count("already scored") == 1
        assert all(likelihood_events(instance, k) == 1 for k in keys)
        assert {k: p.stat().st_mtime_ns for k, p in files.items()} == written

        # Other scoring settings: not the same scores.
        assert already_scored(keys, build_resources(env | {"MODELMAP_DTYPE": "float32"})) == []

        forced = materialize_all(instance, corpus, resources=build_resources(env), force=True)
        assert forced["skipped"] == [] and forced["failed"] == {}
        assert "already scored" not in capsys.readouterr().out
        assert all(likelihood_events(instance, k) == 2 for k in keys)


def test_a_hub_model_counts_as_scored_at_the_sha_the_hub_gives(
    tiny_model, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MODELMAP_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MODELMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELMAP_DEVICE", "cpu")
    publish(tmp_path / "hub", "org/tiny", tiny_model)
    with HubServer(tmp_path / "hub") as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        resources = build_resources(os.environ)
        materialize_corpus(instance, resources, {"n_texts": 8})
        instance.add_dynamic_partitions("models", ["org/tiny"])
        scored = dg.materialize(
            ASSETS,
            selection=["likelihood"],
            partition_key="org/tiny",
            instance=instance,
            resources=resources,
        )
        assert scored.success
        assert already_scored(["org/tiny"], build_resources(os.environ)) == ["org/tiny"]
        capsys.readouterr()
        # Nothing to launch: no webserver needed.
        assert backfill(instance, ["org/tiny"], NO_WEBSERVER, wait=False) == 0
        assert SKIPPED_LINE.format(n=1) in capsys.readouterr().out
        assert backfill(instance, ["org/tiny"], NO_WEBSERVER, wait=False, force=True) == 1
        assert "cannot reach the Dagster webserver" in capsys.readouterr().err
        # The Hub cannot say which sha main is: when in doubt, score.
        unreachable = build_resources(os.environ | {"HF_ENDPOINT": NO_WEBSERVER})
        assert already_scored(["org/tiny"], unreachable) == []
        # A new commit on the Hub: another sha, scored again.
        shutil.copytree(tiny_model, tmp_path / "v2")
        (tmp_path / "v2" / "README.md").write_text("a new commit\n")
        publish(tmp_path / "hub", "org/tiny", tmp_path / "v2")
        assert already_scored(["org/tiny"], build_resources(os.environ)) == []


def one_line_error(capsys, argv: list[str]) -> str:
    """The stderr of `modelmap argv`, which must be a mistake: exit 2, one line."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"modelmap {argv[0]}: error: argument ")
    return lines[0]


def test_neighbours_k_must_be_positive(capsys):
    line = one_line_error(capsys, ["neighbours", "org/m", "-k", "-3"])
    assert "argument -k: must be >= 1, got -3" in line
    assert "expected an integer" in one_line_error(capsys, ["neighbours", "org/m", "-k", "x"])


def test_neighbours_refuses_a_bad_key_and_an_unscored_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELMAP_DATA", str(tmp_path / "data"))
    line = one_line_error(capsys, ["neighbours", "../etc"])
    assert "argument key: invalid model key '../etc'" in line
    line = one_line_error(capsys, ["neighbours", "org/never-scored"])
    assert "argument key: model org/never-scored is not scored" in line


def test_materialize_refuses_a_missing_corpus_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, ["materialize", "--source", "jsonl", "--path", "missing.jsonl"])
    assert line.endswith("argument --path: no such file: missing.jsonl")
    line = one_line_error(capsys, ["materialize", "--source", "folder", "--path", "nowhere"])
    assert line.endswith("argument --path: no such folder: nowhere")
    line = one_line_error(capsys, ["materialize", "--source", "jsonl"])
    assert "argument --path: --source jsonl needs a path" in line
    assert "argument --source" in one_line_error(capsys, ["materialize", "--source", "pile"])
    assert "argument --n-texts" in one_line_error(capsys, ["materialize", "--n-texts", "0"])


def test_register_refuses_a_bad_key(capsys):
    assert "argument keys: invalid model key" in one_line_error(capsys, ["register", "a//b"])
