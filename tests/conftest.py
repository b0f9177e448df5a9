"""Shared fixtures: the real embedded zoo (built once, cached) and a small real corpus."""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Under pytest-xdist (`make test`: two workers on two cores), each worker and every process it
# starts (run workers, code servers) uses one torch thread: two workers with a thread per core
# each oversubscribe the cores, and OpenMP's spinning threads then run several times slower.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

# Runs the tests log go to a throw-away store, never to the repo's dagster_home/mlflow.
os.environ["MLFLOW_TRACKING_URI"] = (
    f"sqlite:///{tempfile.mkdtemp(prefix='modelmap-test-mlflow-')}/mlflow.db"
)


def zoo_dir() -> Path:
    """The tests' zoo cache, the demo's too: trained once, then reused as long as its content
    hash (spec and training text) is the same."""
    from workshop.zoo import COMPACT_ZOO_DIR

    cache = Path(os.environ.get("MODELMAP_CACHE", REPO / ".cache" / "modelmap"))
    return cache / COMPACT_ZOO_DIR


@pytest.fixture(scope="session")
def zoo():
    """(folder, registry entries) of the tests' zoo: the full zoo's members (three
    architectures, fine-tunes, the interpolation series, the leaked model), smaller and
    trained shorter (`ZooSpec.compact`, the demo's), trained on first use."""
    from workshop.zoo import ZooSpec, build_zoo

    folder = zoo_dir()
    # build_zoo lets one trainer at a time at the folder (test sessions, workers, the demo).
    models = build_zoo(
        folder,
        spec=ZooSpec.compact(),
        log=lambda s: print(s, flush=True),
        threads=1 if XDIST_WORKER else None,
    )
    return folder, models


@pytest.fixture(scope="session")
def corpus_texts():
    """300 real texts of the embedded corpus (held out from the zoo's training text)."""
    from modelmap.corpus.build import build_corpus

    return build_corpus("embedded", 300)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random 1-layer GPT-2 folder with a trained BPE tokenizer (built in about a second)."""
    from hubtools import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def hub(tmp_path):
    """A local Hub server on a free port, serving `tmp_path / 'hub'`."""
    from workshop.hub_server import HubServer

    root = tmp_path / "hub"
    root.mkdir()
    with HubServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of its own (Debian's package, installed by scripts/postgres.sh when
    missing) on a free port, with the databases `modelmap` and `mlflow`; the MODELMAP_PG_*
    variables that storage.postgres.yaml reads, and the MLflow URI on the same server."""
    import shutil
    import subprocess

    from workshop.localhttp import free_port

    # Not under pytest's root-only temporary folder: the server runs as the `postgres` user.
    base = Path(tempfile.mkdtemp(prefix="modelmap-pg-"))
    base.chmod(0o755)
    env = {**os.environ, "PGDATA": str(base / "data"), "PGPORT": str(free_port())}
    script = REPO / "scripts" / "postgres.sh"
    subprocess.run([script], env=env, check=True, stdout=subprocess.DEVNULL)
    port = env["PGPORT"]
    yield {
        "MODELMAP_PG_HOST": "127.0.0.1",
        "MODELMAP_PG_PORT": port,
        "MODELMAP_PG_USER": "modelmap",
        "MODELMAP_PG_PASSWORD": "",
        "MODELMAP_PG_DB": "modelmap",
        "MLFLOW_TRACKING_URI": f"postgresql+psycopg2://modelmap@127.0.0.1:{port}/mlflow",
    }
    subprocess.run([script, "stop"], env=env, check=False, stdout=subprocess.DEVNULL)
    shutil.rmtree(base, ignore_errors=True)


# The first test that uses the trained zoo pays for training it (about 2 minutes on two idle
# cores, 4 on one) inside its own time limit, and the pipeline fixture builds the
# planted leaks and scores every model on top: such tests get 30 minutes, the rest keep 10.
ZOO_TIMEOUT_S = 1800


def pytest_configure(config):
    if XDIST_WORKER:
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "zoo" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(ZOO_TIMEOUT_S))
    # Longest first: `make test` hands whole files to two workers (pytest-xdist, `--dist
    # loadfile`) in the order their first test appears here, so the file that trains the zoo
    # starts at once and the daemon's tests overlap it, not the end of the run.
    items.sort(key=lambda item: ("zoo" not in item.fixturenames, "slow" not in item.keywords))
