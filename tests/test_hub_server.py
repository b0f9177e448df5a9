"""The local Hub against the real huggingface_hub client (and transformers through HF_ENDPOINT)."""

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from workshop.hub_server import publish

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_list_models_newest_first_with_paging(hub, tiny_model):
    for i in range(7):
        publish(hub.store.root, f"org{i % 2}/m{i}", tiny_model, created_at=T0 + timedelta(hours=i))
    api = HfApi(endpoint=hub.url, token=False)
    # limit is the page size on the server; the client follows `Link` over 3 pages.
    models = list(api.list_models(sort="created_at", expand=["createdAt", "sha"]))
    assert [m.id for m in models] == [f"org{i % 2}/m{i}" for i in reversed(range(7))]
    assert all(len(m.sha) == 40 for m in models)
    assert len({m.sha for m in models}) == 7  # the repo id is part of the sha
    assert models[0].created_at == T0 + timedelta(hours=6)

    from huggingface_hub.utils._pagination import paginate

    pages = list(paginate(f"{hub.url}/api/models", {"limit": 3, "sort": "createdAt"}, {}))
    assert [p["id"] for p in pages] == [m.id for m in models]

    by_author = list(api.list_models(author="org1", pipeline_tag="text-generation"))
    assert [m.id for m in by_author] == ["org1/m5", "org1/m3", "org1/m1"]
    assert by_author[0].sha is None  # like the Hub: no sha unless expanded
    assert [m.id for m in api.list_models(search="m4", filter="transformers")] == ["org0/m4"]
    assert list(api.list_models(filter="no-such-tag")) == []


def test_model_info_tree_and_snapshot(hub, tiny_model, tmp_path):
    publish(hub.store.root, "org/tiny", tiny_model)
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info("org/tiny")
    assert info.sha == api.model_info("org/tiny", revision=info.sha).sha
    names = {s.rfilename for s in info.siblings}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert info.safetensors.total > 0
    tree = {f.path: f.size for f in api.list_repo_tree("org/tiny", recursive=True)}
    assert tree["model.safetensors"] == (tiny_model / "model.safetensors").stat().st_size
    meta = api.get_safetensors_metadata("org/tiny")  # range requests
    assert sum(meta.parameter_count.values()) == info.safetensors.total

    folder = snapshot_download(
        "org/tiny",
        endpoint=hub.url,
        cache_dir=tmp_path / "cache",
        token=False,
        allow_patterns=["*.json", "*.safetensors"],
    )
    assert folder.endswith(info.sha)
    for name in ("config.json", "model.safetensors"):
        assert (tiny_model / name).read_bytes() == open(f"{folder}/{name}", "rb").read()

    # Files change -> a new sha; the old revision is gone.
    (hub.store.root / "org/tiny/extra.txt").write_text("new")
    new = api.model_info("org/tiny")
    assert new.sha != info.sha and new.last_modified >= info.last_modified
    with pytest.raises(RevisionNotFoundError):
        api.model_info("org/tiny", revision=info.sha)


def test_typed_errors(hub, tiny_model, tmp_path):
    publish(hub.store.root, "org/tiny", tiny_model)
    publish(hub.store.root, "org/gated", tiny_model, gated="manual", tokens=["hf_ok"])
    publish(hub.store.root, "org/secret", tiny_model, private=True, tokens=["hf_ok"])
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(RemoteEntryNotFoundError):
        api.hf_hub_download("org/tiny", "nope.bin", cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        api.hf_hub_download("org/tiny", "config.json", revision="v9", cache_dir=tmp_path / "c")
    # Gated: metadata is public, files need an allowed token (401 without, 403 with another).
    assert api.model_info("org/gated").gated == "manual"
    with pytest.raises(GatedRepoError) as no_token:
        api.hf_hub_download("org/gated", "config.json", cache_dir=tmp_path / "c")
    assert no_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as wrong:
        api.hf_hub_download("org/gated", "config.json", cache_dir=tmp_path / "c", token="hf_no")
    assert wrong.value.response.status_code == 403
    assert api.hf_hub_download("org/gated", "config.json", cache_dir=tmp_path / "c", token="hf_ok")
    # Private: invisible without the token.
    assert "org/secret" not in {m.id for m in api.list_models()}
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/secret")
    assert HfApi(endpoint=hub.url, token="hf_ok").model_info("org/secret").private


@pytest.mark.slow
def test_transformers_from_pretrained_through_hf_endpoint(hub, tiny_model, tmp_path):
    publish(hub.store.root, "org/tiny", tiny_model)
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained('org/tiny')\n"
        "model = AutoModelForCausalLM.from_pretrained('org/tiny')\n"
        "print(type(model).__name__, len(tok('hello world')['input_ids']) > 0)\n"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_TOKEN": "",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GPT2LMHeadModel True" in out.stdout


def test_publish_zoo_from_its_registry(hub, tiny_model, tmp_path):
    import json

    from workshop.hub_server import publish_zoo

    zoo = tmp_path / "zoo"
    entry = dict(
        path="zoo/a",
        family="a",
        architecture="gpt2",
        role="base",
        domain=None,
        alpha=None,
        n_params=1,
        context_length=64,
        vocab_size=300,
    )
    for key in ("zoo/a", "zoo/b"):
        (zoo / key).parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copytree(tiny_model, zoo / key)
    models = [{**entry, "key": "zoo/a"}, {**entry, "key": "zoo/b", "path": "zoo/b"}]
    (zoo / "zoo.json").write_text(json.dumps({"models": models}))
    assert publish_zoo(hub.store.root, zoo) == ["zoo/a", "zoo/b"]
    listed = HfApi(endpoint=hub.url, token=False).list_models(sort="created_at")
    assert [m.id for m in listed] == ["zoo/b", "zoo/a"]


def test_declared_base_model_as_the_hub_serves_it(hub, tiny_model, tmp_path):
    from resources.hub import HubResource, declared_bases

    publish(hub.store.root, "org/base", tiny_model)
    publish(hub.store.root, "org/child", tiny_model, base_model="org/base")
    publish(hub.store.root, "org/merge", tiny_model, base_model=["org/base", "other/gone"])
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info("org/child")
    assert info.card_data.base_model == "org/base"
    assert {"base_model:org/base", "base_model:finetune:org/base"} <= set(info.tags)
    assert declared_bases(info) == ["org/base"]
    expanded = api.model_info("org/merge", expand=["baseModels"])
    assert expanded.base_models["relation"] == "finetune"
    assert [m["id"] for m in expanded.base_models["models"]] == ["org/base", "other/gone"]
    assert declared_bases(expanded) == ["org/base", "other/gone"]
    assert declared_bases(api.model_info("org/base")) == []
    listed = {m.id: declared_bases(m) for m in api.list_models(expand=["cardData", "tags"])}
    assert listed == {
        "org/base": [],
        "org/child": ["org/base"],
        "org/merge": ["org/base", "other/gone"],
    }
    _, _, card = HubResource(endpoint=hub.url, cache_dir=str(tmp_path / "c")).fetch("org/merge")
    # The family label comes from the same card (never evidence for the lineage check).
    assert card == {"family": "org/base", "base_models": ["org/base", "other/gone"]}


def test_synthetic_listing_serves_k_models_from_memory():
    from workshop.hub_server import HubServer, SyntheticHubStore, synthetic_sha

    store = SyntheticHubStore(2500, family_size=10)
    with HubServer(None, store=store) as server:
        api = HfApi(endpoint=server.url, token=False)
        models = list(api.list_models(sort="created_at", expand=["createdAt", "sha", "tags"]))
        assert len(models) == 2500  # three pages of 1,000
        assert models[0].id == "synth-f00249/ft-009" and models[-1].id == "synth-f00000/base"
        assert models[0].created_at > models[-1].created_at
        assert models[0].sha == synthetic_sha("synth-f00249/ft-009")
        assert "family:synth-f00249" in models[0].tags
        assert [m.id for m in api.list_models(author="synth-f00001")][-1] == "synth-f00001/base"
        assert api.model_info("synth-f00001/ft-003").sha == synthetic_sha("synth-f00001/ft-003")
