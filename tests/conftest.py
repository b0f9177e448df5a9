"""Shared fixtures: the real embedded zoo (built once, cached) and a small real corpus."""

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Runs the tests log go to a throw-away store, never to the repo's dagster_home/mlflow.
os.environ["MLFLOW_TRACKING_URI"] = (
    f"sqlite:///{tempfile.mkdtemp(prefix='modelmap-test-mlflow-')}/mlflow.db"
)


def zoo_dir() -> Path:
    """The tests' zoo cache, beside the demo's (`<cache>/zoo`): trained once, then reused as
    long as its content hash (spec and training text) is the same."""
    cache = Path(os.environ.get("MODELMAP_CACHE", REPO / ".cache" / "modelmap"))
    return cache / "zoo-test"


@pytest.fixture(scope="session")
def zoo():
    """(folder, registry entries) of the tests' zoo: the full zoo's members (three
    architectures, fine-tunes, the interpolation series, the leaked model), smaller and
    trained shorter (`ZooSpec.test`), trained on first use."""
    from workshop.zoo import ZooSpec, build_zoo

    folder = zoo_dir()
    models = build_zoo(folder, spec=ZooSpec.test(), log=lambda s: print(s, flush=True))
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
    variables that dagster.postgres.yaml reads, and the MLflow URI on the same server."""
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


# The first test that uses the trained zoo pays for training it (about 5 minutes on two idle
# cores, more when loaded) inside its own time limit, and the pipeline fixture builds the
# planted leaks and scores every model on top: such tests get 30 minutes, the rest keep 10.
ZOO_TIMEOUT_S = 1800


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "zoo" in fixtures:
            item.add_marker(pytest.mark.timeout(ZOO_TIMEOUT_S))
        # Under pytest-xdist (`make test` runs two workers, `--dist loadgroup`), the tests of a
        # session-wide resource run on one worker, which builds it once: the zoo, PostgreSQL.
        for shared in ("zoo", "postgres"):
            if shared in fixtures:
                item.add_marker(pytest.mark.xdist_group(shared))
                break
