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
from modelmap_assets.instance.launcher import run_worker_pid, worker_alive
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


def test_sqlite_and_postgres_instances_differ_only_in_storage():
    """The launcher, queue, pool, monitoring and retries are the same on both backends."""
    home = Path(__file__).resolve().parents[1] / "dagster_home"
    sqlite = yaml.safe_load((home / "dagster.yaml").read_text())
    postgres = yaml.safe_load((home / "dagster.postgres.yaml").read_text())
    assert postgres.pop("storage")["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert sqlite == postgres
    assert sqlite["run_launcher"]["class"] == "LocalRunLauncher"


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
