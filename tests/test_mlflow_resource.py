"""MlflowResource against a real SQLite tracking store in tmp_path, and ScorePredictor."""

import multiprocessing as mp
import subprocess
import sys

import cloudpickle
import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from modelmap.reports.predictor import ScorePredictor
from resources.mlflow import MlflowResource
from resources.settings import build_resources

N_TEXTS, TARGETS = 40, ["arc", "hellaswag", "mmlu"]


@pytest.fixture(scope="module")
def db_dir(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture
def store(db_dir, tmp_path, monkeypatch, request):
    """A resource with its own experiment; the working folder is tmp_path (not the repo)."""
    monkeypatch.chdir(tmp_path)
    return MlflowResource(
        tracking_uri=f"sqlite:///{db_dir / 'mlflow.db'}",
        artifact_root=str(db_dir / "artifacts"),
        experiment=request.node.name,
    )


@pytest.fixture
def predictor():
    rng = np.random.default_rng(0)
    L = rng.normal(-100.0, 20.0, size=(12, N_TEXTS))
    return ScorePredictor.from_matrix(
        L,
        clip_value=-150.0,
        text_ids=[f"text-{i:03d}" for i in range(N_TEXTS)],
        targets=TARGETS,
        coef=rng.normal(0.0, 0.3, size=(len(TARGETS), N_TEXTS)),
        intercept=np.array([50.0, 40.0, 30.0]),
        corpus_hash="abc123",
    )


def _client(store: MlflowResource) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store.uri(), registry_uri=store.uri())


def _runs(store: MlflowResource):
    client = _client(store)
    exp = client.get_experiment_by_name(store.experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


# ScorePredictor ---------------------------------------------------------------------------
def test_centre_is_double_centring_of_the_training_matrix(predictor):
    rng = np.random.default_rng(1)
    L = rng.normal(-100.0, 30.0, size=(9, N_TEXTS))
    L[0, 3] = -1e4  # clipped
    p = ScorePredictor.from_matrix(
        L, -150.0, predictor.text_ids, TARGETS, predictor.coef, predictor.intercept, "h"
    )
    X = np.maximum(L, -150.0)
    X = X - X.mean(axis=1, keepdims=True)
    expected = X - X.mean(axis=0, keepdims=True)
    np.testing.assert_allclose(p.centre(L), expected, atol=1e-10)
    np.testing.assert_allclose(p.centre(L).sum(axis=0), 0.0, atol=1e-9)
    Q = p.centre(L[:2])
    np.testing.assert_allclose(
        p.predict(L[:2]), np.clip(Q @ p.coef.T + p.intercept, 0, 100), atol=1e-12
    )
    with pytest.raises(ValueError, match=f"shape \\(m, {N_TEXTS}\\)"):
        p.predict(L[:, :-1])


def test_predictor_npz_round_trip(predictor, tmp_path):
    path = predictor.save(tmp_path / "p.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["p.npz"]  # no temporary left behind
    back = ScorePredictor.load(path)
    assert (back.text_ids, back.targets, back.corpus_hash) == (
        predictor.text_ids,
        TARGETS,
        "abc123",
    )
    assert back.clip_value == predictor.clip_value
    for field in ("col_means", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(back, field), getattr(predictor, field))


# MlflowResource ---------------------------------------------------------------------------
def test_log_run_records_params_metrics_tags_and_artifacts(store, tmp_path, db_dir):
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "plot.html").write_text("<html></html>")
    run_id = store.log_run(
        "fit",
        params={"alpha": 0.5, "n_models": 12},
        metrics={"r2": 0.8, "bad": float("nan"), "worse": float("inf")},
        tags={"stage": "test"},
        artifacts={"": tmp_path / "report.json", "plots": str(tmp_path / "plot.html")},
    )
    (run,) = _runs(store)
    assert run.info.run_id == run_id and run.info.run_name == "fit"
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "0.5", "n_models": "12"}
    assert run.data.metrics == {"r2": 0.8}
    assert run.data.tags["stage"] == "test"
    assert run.data.tags["modelmap.skipped_metrics"] == "bad=nan,worse=inf"
    client = _client(store)
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.json", "plots"}
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/plot.html"]
    assert run.info.artifact_uri.startswith((db_dir / "artifacts").as_uri())


def test_log_run_failure_marks_run_failed(store, tmp_path):
    strict = store.model_copy(update={"mode": "required"})
    with pytest.raises(OSError):
        strict.log_run("broken", artifacts={"": tmp_path / "missing.txt"})
    (run,) = _runs(store)
    assert run.info.status == "FAILED"


def test_a_tracking_error_is_a_warning_unless_required(store, tmp_path, caplog):
    """MLflow is the record, the files are the truth: by default an error does not fail."""
    assert store.log_run("soft", artifacts={"": tmp_path / "missing.txt"}) is None
    assert "not recorded" in caplog.text and "missing.txt" in caplog.text


def test_log_run_from_an_asset_adds_dagster_tags(store):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["org/model"]))
    def scored(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> None:
        mlflow.log_run("scored", metrics={"x": 1.0}, context=context)

    result = dg.materialize([scored], resources={"mlflow": store}, partition_key="org/model")
    (run,) = _runs(store)
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.partition_key"] == "org/model"
    assert run.data.tags["dagster.asset_key"] == "scored"


def test_register_predictor_versions_and_pyfunc_predictions(store, predictor, monkeypatch):
    name = "bench-predictor"
    run1, v1 = store.register_predictor(predictor, name=name, run_name="r1", metrics={"r2": 0.7})
    run2, v2 = store.register_predictor(predictor, name=name, run_name="r2")
    assert (v1, v2) == ("1", "2") and run1 != run2
    assert {r.info.status for r in _runs(store)} == {"FINISHED"}
    assert _client(store).get_model_version(name, "1").run_id == run1

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri())
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    L = np.random.default_rng(2).normal(-100.0, 25.0, size=(5, N_TEXTS))
    expected = predictor.predict(L)
    df = pd.DataFrame(L, columns=predictor.text_ids)
    out = model.predict(df)
    assert list(out.columns) == TARGETS
    np.testing.assert_allclose(out.to_numpy(), expected, atol=1e-10)
    shuffled = df[list(np.random.default_rng(3).permutation(predictor.text_ids))]
    np.testing.assert_allclose(model.predict(shuffled).to_numpy(), expected, atol=1e-10)
    raw = model.unwrap_python_model().predict(None, L)  # a bare array, bypassing pyfunc's schema
    np.testing.assert_allclose(raw.to_numpy(), expected, atol=1e-10)
    with pytest.raises(Exception, match="missing inputs"):
        model.predict(df.drop(columns=[predictor.text_ids[7]]))


def test_versions_pickled_under_the_old_module_path_still_load(monkeypatch):
    """Versions registered before the pyfunc class moved to resources.mlflow_pyfunc (so that
    runs do not import mlflow) pickled it as resources.mlflow.ScorePredictorModel."""
    from resources import mlflow_pyfunc

    monkeypatch.setattr(mlflow_pyfunc.ScorePredictorModel, "__module__", "resources.mlflow")
    blob = cloudpickle.dumps(mlflow_pyfunc.ScorePredictorModel())
    monkeypatch.undo()
    assert b"resources.mlflow" in blob and b"mlflow_pyfunc" not in blob
    assert type(cloudpickle.loads(blob)) is mlflow_pyfunc.ScorePredictorModel


def test_a_run_process_does_not_import_mlflow():
    """Every Dagster run imports the code location; mlflow is imported only when used."""
    code = "import sys, modelmap_assets.definitions; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_disabled_resource_is_a_no_op(tmp_path, predictor, monkeypatch):
    monkeypatch.chdir(tmp_path)
    off = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'db' / 'm.db'}", mode="off")
    assert off.log_run("x", params={"a": 1}, metrics={"m": 1.0}, tags={}) is None
    assert off.register_predictor(predictor, run_name="x") is None
    assert list(tmp_path.iterdir()) == []


def _log_five(uri: str, worker: int) -> None:
    resource = MlflowResource(tracking_uri=uri, experiment="concurrent")
    for i in range(5):
        resource.log_run(f"w{worker}-{i}", params={"i": i}, metrics={"v": float(i)}, tags={})


@pytest.mark.slow
def test_two_processes_log_concurrently_to_one_sqlite_store(tmp_path, monkeypatch):
    """Both start on a new database: table creation and experiment creation race too."""
    monkeypatch.chdir(tmp_path)
    store = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}", experiment="concurrent")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_log_five, args=(store.uri(), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    runs = _runs(store)
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"w{w}-{i}" for w in range(2) for i in range(5)
    )
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_default_uri_is_sqlite_in_dagster_home(tmp_path):
    home = {"DAGSTER_HOME": str(tmp_path / "home")}
    assert build_resources(home)["mlflow"].uri() == (
        f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    )
    assert (tmp_path / "home" / "mlflow").is_dir()
    assert MlflowResource(tracking_uri="file:///tmp/x").uri() == "file:///tmp/x"


def test_tracking_uri_is_bound_to_the_environment_never_copied(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI may carry a password: the resource holds the variable, and Dagster
    resolves it when the run starts."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@tracking:5000")
    resource = build_resources({"MLFLOW_TRACKING_URI": "ignored"})["mlflow"]
    assert isinstance(resource.tracking_uri, dg.EnvVar)
    assert "secret" not in repr(resource.model_dump())
    resolved = resource.process_config_and_initialize()
    assert resolved.uri() == "http://user:secret@tracking:5000"


def test_a_new_store_keeps_default_under_the_artifact_root_and_links_to_the_runs(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    store = MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}")
    url = store.runs_url("http://127.0.0.1:5000/")
    client = _client(store)
    exp = client.get_experiment_by_name("modelmap")
    runs = f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs"
    assert url == runs + "?workflowType=machine_learning"  # the runs, not the traces
    assert exp.artifact_location == (tmp_path / "db" / "artifacts").as_uri()
    default = client.get_experiment("0")
    assert default.artifact_location == (tmp_path / "db" / "artifacts" / "0").as_uri()
    assert default.lifecycle_stage == "active"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]  # no mlruns/ anywhere


@pytest.mark.parametrize("default_has_a_run", [False, True])
def test_a_stray_default_experiment_is_hidden_when_empty(tmp_path, monkeypatch, default_has_a_run):
    """A store a plain client created points `Default` at `<working dir>/mlruns`."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plain = mlflow.MlflowClient(tracking_uri=uri)
    assert plain.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    if default_has_a_run:
        plain.create_run("0")
    store = MlflowResource(tracking_uri=uri, experiment="kinded")
    store.log_run("first")
    stage = _client(store).get_experiment("0").lifecycle_stage
    assert stage == ("active" if default_has_a_run else "deleted")
    assert len(_runs(store)) == 1
