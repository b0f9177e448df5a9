"""Bad Hub models fail their own `likelihood` partition with a message naming model and cause.

Each case is served by the local Hub and scored through the real client, as in production.
"""

import json

import dagster as dg
import pytest
import torch
from hubtools import edit_config, variant
from safetensors.torch import load_file, save_file

from modelmap.corpus.build import build_corpus, corpus_hash
from modelmap_assets.cli.main import failure_message
from modelmap_assets.definitions import ASSETS, build_resources
from modelmap_assets.tags import REVISION_TAG
from resources.hub import HubResource
from resources.scorer import ScorerResource
from workshop.hub_server import HubServer, publish


def _drop(*names):
    def edit(folder):
        for name in names:
            (folder / name).unlink()

    return edit


def _nan_weights(folder):
    path = folder / "model.safetensors"
    state = load_file(path)
    name = next(k for k in state if k.endswith("wte.weight"))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, path, metadata={"format": "pt"})


# repo id -> (how to break the tiny model, publish settings, words the failure must contain)
CASES = {
    "bad/gated": (None, {"gated": "manual"}, "gated repo, access refused (401)"),
    "bad/no-weights": (_drop("model.safetensors"), {}, "no weights in safetensors format"),
    "bad/not-causal": (lambda f: edit_config(f, model_type="distilbert"), {}, "as a causal LM"),
    "bad/remote-code": (
        lambda f: edit_config(f, auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}),
        {},
        "needs remote code",
    ),
    "bad/no-tokenizer": (
        _drop("tokenizer.json", "tokenizer_config.json"),
        {},
        "no tokenizer files",
    ),
    "bad/too-large": (None, {}, "too large"),
    "bad/nan": (
        _nan_weights,
        {},
        "are NaN or infinite (first at text index 0) (also after a retry in float32)",
    ),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """A local Hub with the good and bad models, a corpus, and resources pointing at both."""
    tmp = tmp_path_factory.mktemp("failures")
    publish(tmp / "hub", "good/tiny", tiny_model)
    for repo_id, (edit, settings, _) in CASES.items():
        src = variant(tiny_model, tmp / "src" / repo_id, edit)
        publish(tmp / "hub", repo_id, src, **settings)
    env = {"MODELMAP_DATA": str(tmp / "data"), "MODELMAP_CACHE": str(tmp / "cache")}
    resources = build_resources(env)
    texts = build_corpus("embedded", 8)
    resources["storage"].write_corpus(
        texts, {"corpus_hash": corpus_hash(texts), "mean_bytes": float(texts["n_bytes"].mean())}
    )
    # bf16 scoring, so that the NaN model goes through the float32 retry.
    resources["scorer"] = ScorerResource(device="cpu", dtype="bfloat16")
    with HubServer(tmp / "hub") as server, dg.instance_for_test() as instance:
        n_params = sum(t.numel() for t in load_file(tiny_model / "model.safetensors").values())
        resources["hub"] = HubResource(
            endpoint=server.url, cache_dir=str(tmp / "cache" / "hub"), max_parameters=n_params
        )
        instance.add_dynamic_partitions("models", ["good/tiny", "bad/gone", *CASES])
        yield server, instance, resources


def with_settings(hub: HubResource, **changes) -> HubResource:
    return HubResource(**{**hub.model_dump(), **changes})


def score(setup, key, hub=None, tags=None):
    server, instance, resources = setup
    result = dg.materialize(
        ASSETS,
        selection=["likelihood"],
        partition_key=key,
        instance=instance,
        resources={**resources, **({"hub": hub} if hub else {})},
        raise_on_error=False,
        tags=tags,
    )
    return result


def test_good_hub_model_is_scored_at_the_pinned_sha(setup):
    server, instance, resources = setup
    from huggingface_hub import HfApi

    sha = HfApi(endpoint=server.url, token=False).model_info("good/tiny").sha
    secret = "hf_not_to_be_seen"
    hub = with_settings(resources["hub"], token=secret)
    result = score(setup, "good/tiny", hub=hub, tags={REVISION_TAG: sha})
    assert result.success
    meta = result.asset_materializations_for_node("likelihood")[0].metadata
    assert meta["revision"].value == sha
    logs = [str(e) for e in instance.all_logs(result.run_id)]
    assert secret not in json.dumps({k: str(v) for k, v in meta.items()}) + "".join(logs)


def test_repo_gone(setup):
    result = score(setup, "bad/gone")
    assert not result.success
    message = failure_message(result)
    assert message.startswith("model bad/gone:") and "repo not found on the Hub (404)" in message


def test_revision_gone(setup):
    result = score(setup, "good/tiny", tags={REVISION_TAG: "0" * 40})
    assert "revision 0000000000000000000000000000000000000000 not found" in failure_message(result)


@pytest.mark.parametrize("key", [k for k in CASES if k != "bad/too-large"])
def test_bad_model_fails_with_its_cause(setup, key):
    result = score(setup, key)
    assert not result.success
    message = failure_message(result)
    assert message.startswith(f"model {key}:"), message
    assert CASES[key][2] in message, message


def test_too_large(setup):
    server, instance, resources = setup
    small_limit = with_settings(resources["hub"], max_parameters=1000)
    result = score(setup, "bad/too-large", hub=small_limit)
    message = failure_message(result)
    assert "too large" in message and "more than the limit of 1,000" in message, message
