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
    """The demo's zoo cache: `make demo` and the tests build and reuse the same models."""
    cache = Path(os.environ.get("MODELMAP_CACHE", REPO / ".cache" / "modelmap"))
    return cache / "zoo"


@pytest.fixture(scope="session")
def zoo():
    """(folder, registry entries) of the full embedded zoo, trained on first use (~minutes)."""
    from modelmap.zoo import ZooSpec, build_zoo

    folder = zoo_dir()
    models = build_zoo(folder, spec=ZooSpec.default(), log=lambda s: print(s, flush=True))
    return folder, models


@pytest.fixture(scope="session")
def corpus_texts():
    """300 real texts of the embedded corpus (held out from the zoo's training text)."""
    from modelmap.corpus import build_corpus

    return build_corpus("embedded", 300)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random 1-layer GPT-2 folder with a trained BPE tokenizer (built in about a second)."""
    from hubtools import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def hub(tmp_path):
    """A local Hub server on a free port, serving `tmp_path / 'hub'`."""
    from modelmap.hub_server import HubServer

    root = tmp_path / "hub"
    root.mkdir()
    with HubServer(root) as server:
        yield server
