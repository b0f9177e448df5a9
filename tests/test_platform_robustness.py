"""A scoring run whose process is killed mid-way, through the real daemon and webserver.

SIGKILL leaves no output (the file is written only after scoring, to a temporary name that is
renamed), the run-monitoring daemon marks the run failed through `LocalRunLauncher`'s health
check and frees its `gpu` slot, and `run_retries` launches a retry that completes with the same
numbers as scoring the model directly.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import transformers
import yaml
from dagster_graphql import DagsterGraphQLClient
from platformtools import runs_of, wait_for

from modelmap.likelihoods import corpus_rows
from modelmap_assets.definitions import build_resources
from modelmap_assets.instance.launcher import run_worker_pid, worker_health
from modelmap_assets.instance.processes import worker_alive
from modelmap_assets.partitions import models_partitions
from workshop.platform import prepare, running_platform

SLOW = "slow/llama"


def build_slow_model(platform) -> None:
    """A random-initialised Llama (0.6M parameters, context 256) with a small-zoo tokenizer:
    seconds of scoring on this corpus, so there is a mid-way to kill."""
    source = next(m for m in platform.zoo if m.architecture == "llama")
    src = source.local_path(platform.models_dir)
    config = transformers.AutoConfig.from_pretrained(src)
    config.update(
        {
            "hidden_size": 128,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "head_dim": 32,
            "max_position_embeddings": 256,
        }
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    out = platform.models_dir / SLOW
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, out / f.name)


@pytest.fixture
def platform(tmp_path):
    platform = prepare(
        tmp_path, n_texts=300, extra_env={"MODELMAP_DTYPE": "float32", "MODELMAP_MLFLOW": "off"}
    )
    build_slow_model(platform)
    platform.instance.add_dynamic_partitions(models_partitions.name, [SLOW])
    yield platform
    platform.instance.dispose()


def scoring_started(instance, run_id: str) -> bool:
    return any("scoring 300 texts" in entry.user_message for entry in instance.all_logs(run_id))


@pytest.mark.slow
def test_killed_scoring_run_fails_leaves_nothing_and_its_retry_completes(platform):
    instance = platform.instance
    out = platform.data / "likelihood"
    with running_platform(platform.env, platform.logs) as url:
        host, port = url.removeprefix("http://").split(":")
        client = DagsterGraphQLClient(host, port_number=int(port))
        run_id = client.submit_job_execution("score_models", tags={"dagster/partition": SLOW})
        pid, _ = wait_for(lambda: run_worker_pid(instance, run_id), 120, "the run's pid", 0.2)
        wait_for(lambda: scoring_started(instance, run_id), 120, "scoring to start", 0.1)
        os.kill(pid, signal.SIGKILL)

        # Nothing of the killed run is left: no likelihood file, no temporary file.
        assert not out.exists() or not list(out.iterdir())
        killed = wait_for(
            lambda: instance.get_run_by_id(run_id).is_finished and instance.get_run_by_id(run_id),
            60,
            "the monitoring daemon to fail the killed run",
        )
        assert killed.status == dg.DagsterRunStatus.FAILURE
        retry = wait_for(
            lambda: [r for r in runs_of(instance, SLOW) if r.run_id != run_id],
            90,
            "the automatic retry",
        )[0]
        assert retry.tags.get("dagster/parent_run_id") == run_id
        done = wait_for(
            lambda: (
                instance.get_run_by_id(retry.run_id).is_finished
                and instance.get_run_by_id(retry.run_id)
            ),
            180,
            "the retry to finish",
        )
        assert done.status == dg.DagsterRunStatus.SUCCESS, done.status

    # The code server saw its child die (or, were it gone too, LocalRunLauncher's check did).
    events = " ".join(e.message for e in instance.all_logs(run_id))
    assert "signal 9 (SIGKILL)" in events or "is gone (killed or crashed)" in events, events
    # Exactly one file, the retry's, and it holds what the model gives when scored directly.
    assert [p.name for p in out.iterdir()] == ["slow--llama.parquet"]
    written = corpus_rows(out / "slow--llama.parquet")  # twin rows are scored too
    resources = build_resources(platform.env)
    texts = resources["storage"].read_corpus()[0]["text"].to_list()
    scorer = resources["scorer"]
    loaded = scorer.load(SLOW, str(platform.models_dir / SLOW))
    direct = scorer.score(loaded, texts, log=lambda s: None)
    np.testing.assert_allclose(written["loglik"].to_numpy(), direct.loglik_nats, rtol=1e-5)


def test_the_postgres_instance_is_dagster_yaml_with_its_storage_layered_on():
    """One instance file: the PostgreSQL fragment holds only `storage`, which dagster.yaml
    leaves to Dagster's SQLite default, so the two files one after the other are the
    PostgreSQL instance (what scripts/postgres.sh tells a user to write)."""
    home = Path(__file__).resolve().parents[1] / "dagster_home"
    base_text = (home / "dagster.yaml").read_text()
    fragment_text = (home / "storage.postgres.yaml").read_text()
    base, fragment = yaml.safe_load(base_text), yaml.safe_load(fragment_text)
    assert list(fragment) == ["storage"] and "storage" not in base
    assert fragment["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert base_text.endswith("\n")
    assert yaml.safe_load(base_text + fragment_text) == {**base, **fragment}
    assert base["run_launcher"] == {
        "module": "modelmap_assets.instance.launcher",
        "class": "LocalRunLauncher",
    }
    script = (home.parent / "scripts" / "postgres.sh").read_text()
    assert "cat dagster_home/dagster.yaml dagster_home/storage.postgres.yaml >" in script


WORKER_LOCATION = """
import os
import time
from pathlib import Path

import dagster as dg

MARKERS = Path({markers!r})


@dg.asset
def worker_pid() -> dg.MaterializeResult:
    (MARKERS / "started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (MARKERS / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return dg.MaterializeResult(metadata={{"pid": os.getpid()}})


defs = dg.Definitions(
    assets=[worker_pid],
    jobs=[dg.define_asset_job("record_pid", selection=[worker_pid])],
    executor=dg.in_process_executor,
)
"""


@pytest.mark.slow
def test_the_launcher_checks_the_pid_of_a_real_run_worker(tmp_path):
    """A run launched by `LocalRunLauncher` on the installed Dagster (its code server starts
    the run worker): the pid the launcher finds is the process that ran the step; the health
    check says running while it runs and failed once the process is gone."""
    home, markers = tmp_path / "home", tmp_path / "markers"
    home.mkdir()
    markers.mkdir()
    committed = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml").read_text()
    )
    # No daemon here: the run is launched at once instead of queued.
    committed["run_coordinator"] = {
        "module": "dagster._core.run_coordinator",  # not exported by `dagster`
        "class": "DefaultRunCoordinator",
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(committed))
    location = tmp_path / "location.py"
    location.write_text(WORKER_LOCATION.format(markers=str(markers)))
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).parent / "dagster"
    launch = subprocess.Popen(
        [str(dagster), "job", "launch", "-f", str(location), "-j", "record_pid"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        started = markers / "started"
        wait_for(started.exists, 120, "the run worker to start the step", 0.2)
        step_pid = int(started.read_text())
        with dg.DagsterInstance.from_config(str(home)) as instance:
            (run,) = instance.get_runs()
            found = wait_for(lambda: run_worker_pid(instance, run.run_id), 30, "the pid", 0.2)
            assert found[0] == step_pid
            launcher = instance.run_launcher
            assert launcher.supports_check_run_worker_health
            health = launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
            assert health.status.value == "RUNNING", health
            (markers / "release").write_text("")
            output = launch.communicate(timeout=120)[0]
            assert launch.returncode == 0, output
            run = wait_for(
                lambda: (
                    instance.get_run_by_id(run.run_id).is_finished
                    and instance.get_run_by_id(run.run_id)
                ),
                60,
                "the run to finish",
            )
            assert run.status == dg.DagsterRunStatus.SUCCESS
            wait_for(lambda: not worker_alive(*found), 30, "the run worker to exit", 0.2)
            assert worker_health(instance, run) == (
                False,
                f"run worker process {step_pid} is gone (killed or crashed) without ending the run",
            )
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait()


def test_worker_alive_tells_a_live_process_from_a_dead_or_reused_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)
        assert worker_alive(proc.pid, time.time())
        # Recorded before this process existed: the pid was reused, the recorded worker is gone.
        assert not worker_alive(proc.pid, time.time() - 3600)
    finally:
        proc.kill()
        proc.wait()
    assert not worker_alive(proc.pid, time.time())
