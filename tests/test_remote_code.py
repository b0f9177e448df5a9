"""The trust_remote_code allow-list works end to end through the local Hub: an allow-listed
repo's own *.py files are fetched at the pinned sha and its model loads; code in another repo,
or any code of a repo not on the list, is refused."""

import pytest
import torch
from hubtools import edit_config, variant

from modelmap.scoring.loading import ModelLoadError, load_causal_lm
from resources.hub import HubResource
from workshop.hub_server import publish

CONFIGURATION = """from transformers import GPT2Config


class XConfig(GPT2Config):
    model_type = "x-gpt2"
"""
MODELING = """from transformers import GPT2LMHeadModel

from .configuration_x import XConfig


class XForCausalLM(GPT2LMHeadModel):
    config_class = XConfig
"""
AUTO_MAP = {
    "AutoConfig": "configuration_x.XConfig",
    "AutoModelForCausalLM": "modeling_x.XForCausalLM",
}


def _remote_code_model(src, dest, auto_map=AUTO_MAP):
    def edit(folder):
        (folder / "configuration_x.py").write_text(CONFIGURATION)
        (folder / "modeling_x.py").write_text(MODELING)
        edit_config(folder, model_type="x-gpt2", auto_map=auto_map)

    return variant(src, dest, edit)


@pytest.fixture
def hub_models(hub, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    publish(hub.store.root, "org/custom", _remote_code_model(tiny_model, tmp_path / "a"))
    elsewhere = {k: f"evil/repo--{v}" for k, v in AUTO_MAP.items()}
    publish(
        hub.store.root, "org/borrows", _remote_code_model(tiny_model, tmp_path / "b", elsewhere)
    )
    return hub


def _hub(server, tmp_path, allow):
    return HubResource(
        endpoint=server.url,
        cache_dir=str(tmp_path / "cache"),
        trust_remote_code_allow=",".join(allow),
    )


def test_an_allow_listed_model_with_its_own_code_loads_and_scores(hub_models, tmp_path):
    hub = _hub(hub_models, tmp_path, ["org/custom"])
    folder, sha, _ = hub.fetch("org/custom")
    assert (folder / "modeling_x.py").exists()
    loaded = load_causal_lm(
        "org/custom",
        folder,
        revision=sha,
        device="cpu",
        trust_remote_code=hub.trusts_remote_code("org/custom"),
    )
    assert type(loaded.model).__name__ == "XForCausalLM"
    ids = loaded.tokenizer("a fortune", return_tensors="pt")["input_ids"]
    assert torch.isfinite(loaded.model(ids).logits).all()


def test_a_model_not_on_the_list_gets_no_code_and_is_refused(hub_models, tmp_path):
    hub = _hub(hub_models, tmp_path, [])
    folder, sha, _ = hub.fetch("org/custom")
    assert not list(folder.glob("*.py"))
    with pytest.raises(ModelLoadError, match="needs remote code"):
        load_causal_lm("org/custom", folder, revision=sha, device="cpu")


def test_code_from_another_repo_is_refused_even_when_allow_listed(hub_models, tmp_path):
    hub = _hub(hub_models, tmp_path, ["org/borrows"])
    with pytest.raises(ModelLoadError, match=r"model org/borrows: .*another repo.*evil/repo"):
        folder, sha, _ = hub.fetch("org/borrows")
        load_causal_lm("org/borrows", folder, revision=sha, device="cpu", trust_remote_code=True)
