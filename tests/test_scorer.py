"""The scorer (`modelmap.scoring.scorer`): one reading of the device setting, the float32
retry of a model whose half-precision scores are not finite, and a run's models in turn; on a
real tiny model, without Dagster."""

import dataclasses

import numpy as np
import pytest
import torch
from hubtools import variant
from safetensors.torch import load_file, save_file

from modelmap.scoring.engine import ScoringError, score_texts
from modelmap.scoring.loading import ModelLoadError, load_causal_lm, resolve_device
from modelmap.scoring.scorer import ModelFiles, Scorer
from resources.scorer import ScorerResource

TEXTS = ["the cat sat on the mat", "a longer text, with a comma and more words in it"]
TWINS = ["a held-out twin text"]


def _set_weight(suffix: str, value: float):
    def edit(folder):
        path = folder / "model.safetensors"
        state = load_file(path)
        name = next(k for k in state if k.endswith(suffix))
        state[name] = torch.full_like(state[name], value)
        save_file(state, path, metadata={"format": "pt"})

    return edit


def test_the_device_setting_has_one_reading():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # named, present or not
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device 'gpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    # Prefetching follows the same reading.
    assert Scorer(device="auto").loads_ahead() == int(resolve_device("auto").type == "cuda")


def test_the_resource_builds_the_scorer_from_every_setting():
    settings = {
        "device": "cpu",
        "dtype": "float32",
        "token_budget": 512,
        "head_chunk_tokens": 64,
        "stride": 16,
        "max_context": 32,
        "progress_every_s": 1.0,
        "prefetch": True,
    }
    assert {f.name for f in dataclasses.fields(Scorer)} == set(settings)
    assert ScorerResource(**settings).scorer() == Scorer(**settings)
    assert ScorerResource().scorer() == Scorer()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_loading_on_an_absent_gpu_names_the_cause(tiny_model):
    with pytest.raises(ModelLoadError, match="device 'cuda' requested but CUDA is not available"):
        load_causal_lm("org/tiny", tiny_model, device="cuda")


def test_an_overflow_in_half_precision_is_scored_again_in_float32(tiny_model, tmp_path):
    # A final layer norm scaled past float16's largest value (65,504): inf in float16 only.
    folder = variant(tiny_model, tmp_path / "overflow", _set_weight("ln_f.weight", 7e4))
    scorer = Scorer(device="cpu", dtype="float16")
    files = ModelFiles("org/overflow", str(folder))
    half = scorer.load_files(files)
    logs, warnings = [], []
    scores = scorer.score_model(files, half, TEXTS, TWINS, log=logs.append, warn=warnings.append)
    assert scores.loaded.dtype == torch.float32 and scores.loaded.revision == half.revision
    assert warnings == [
        "model org/overflow: 2 of 2 log-likelihoods are NaN or infinite (first at text index "
        "0); retrying once in float32 instead of torch.float16"
    ]
    full = load_causal_lm("org/overflow", folder, device="cpu", dtype="float32")
    expected = score_texts(full.model, full.tokenizer, TEXTS, context=full.context_length)
    np.testing.assert_allclose(scores.corpus.loglik_nats, expected.loglik_nats, rtol=1e-6)
    assert np.isfinite(scores.twins.loglik_nats).all() and len(scores.twins.loglik_nats) == 1


@pytest.mark.parametrize(
    ("dtype", "words"),
    [("bfloat16", r"\(also after a retry in float32\)$"), ("float32", r"index 0\)$")],
)
def test_a_model_that_is_not_finite_in_float32_fails_with_its_cause(
    tiny_model, tmp_path, dtype, words
):
    folder = variant(tiny_model, tmp_path / "nan", _set_weight("wte.weight", float("nan")))
    scorer = Scorer(device="cpu", dtype=dtype)
    files = ModelFiles("org/nan", str(folder))
    with pytest.raises(ScoringError, match=f"model org/nan: .*NaN.*{words}"):
        scorer.score_model(files, scorer.load_files(files), TEXTS, log=lambda s: None)


def test_a_run_s_models_come_in_order_each_with_its_own_error(tiny_model):
    def locate(key: str) -> ModelFiles:
        if key == "org/gone":
            raise FileNotFoundError(f"model {key}: not found")
        return ModelFiles(key, str(tiny_model), info={"family": "tiny"})

    jobs = list(Scorer(device="cpu").in_turn(["org/a", "org/gone", "org/b"], locate))
    assert [job.item for job in jobs] == ["org/a", "org/gone", "org/b"]
    assert isinstance(jobs[1].error, FileNotFoundError)
    files, loaded = jobs[2].get()
    assert (files.info, loaded.key, loaded.dtype) == ({"family": "tiny"}, "org/b", torch.bfloat16)
