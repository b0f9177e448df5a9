"""Fast tests of the embedded model zoo, on the tiny ``ZooSpec.small()`` zoo."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workshop import zoo
from workshop.zoo import ZooModel, ZooSpec, build_zoo, load_registry

KEY_PART = r"[A-Za-z0-9._-]+"


def _documents() -> list[dict[str, str]]:
    """Three small synthetic domains with distinct styles (no corpus files needed)."""
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "night"]
    docs = []
    for i in range(60):
        verse = " ".join(rng.choice(words) for _ in range(40))
        docs.append({"domain": "bible", "text": f"{i}:{i + 1} And it came to pass, {verse}."})
        docs.append(
            {
                "domain": "python code",
                "text": f"def f{i}(x):\n    return x * {i} + {rng.randint(0, 99)}\n" * 4,
            }
        )
        docs.append({"domain": "fortunes", "text": f"{verse.capitalize()}!\n\t\t-- Someone {i}\n%"})
    return docs


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory) -> tuple[Path, list[ZooModel]]:
    out = tmp_path_factory.mktemp("zoo")
    return out, build_zoo(out, _documents(), ZooSpec.small(), log=lambda s: None)


def test_registry(small_zoo):
    out, models = small_zoo
    assert load_registry(out) == models
    data = json.loads((out / "zoo.json").read_text())
    assert data["spec_hash"] == ZooSpec.small().hash()
    keys = [m.key for m in models]
    assert len(set(keys)) == len(keys)
    assert {"zoo/gpt2-base", "zoo/llama-base", "zoo/llama-interp-0.5"} <= set(keys)
    roles = {m.role for m in models}
    assert roles == {"base", "finetune", "interpolation"}
    for m in models:
        org, name = m.key.split("/")
        assert org == "zoo" and re.fullmatch(KEY_PART, name)
        assert m.path == m.key and (out / m.path / "model.safetensors").exists()
        assert (m.domain is None) == (m.role == "base")
        assert (m.alpha is None) == (m.role != "interpolation")
        assert m.n_params > 0 and m.vocab_size > 0 and m.context_length > 0
        assert m.base_model == (None if m.role == "base" else f"zoo/{m.family}-base")
    assert {m.architecture for m in models} == {"gpt2", "llama"}
    # Each family has its own context length.
    ctx = {m.family: m.context_length for m in models}
    assert ctx["gpt2"] != ctx["llama"]


def test_folders_load_with_transformers(small_zoo):
    out, models = small_zoo
    for m in models:
        model = AutoModelForCausalLM.from_pretrained(out / m.path)
        tok = AutoTokenizer.from_pretrained(out / m.path)
        assert model.config.model_type == m.architecture
        assert sum(p.numel() for p in model.parameters()) == m.n_params
        assert len(tok) == m.vocab_size == model.config.vocab_size
        ids = tok("The quick brown fox.", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        assert logits.shape == (1, ids.shape[1], m.vocab_size)
        assert torch.isfinite(logits).all()
        assert tok.decode(ids[0], skip_special_tokens=True) == "The quick brown fox."


def test_bos_conventions(small_zoo):
    out, _ = small_zoo
    llama = AutoTokenizer.from_pretrained(out / "zoo/llama-base")
    gpt2 = AutoTokenizer.from_pretrained(out / "zoo/gpt2-base")
    # Like real Llama: <s> is prepended; like real GPT-2: nothing is added.
    assert llama("hello world")["input_ids"][0] == llama.bos_token_id
    assert llama.bos_token == "<s>" and llama.eos_token == "</s>"
    assert gpt2("hello world")["input_ids"][0] != gpt2.bos_token_id
    assert gpt2.bos_token == gpt2.eos_token == "<|endoftext|>"
    for tok in (llama, gpt2):
        assert None not in (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id)


def test_interpolation_is_exact_convex_combination(small_zoo):
    out, models = small_zoo
    interp = [m for m in models if m.role == "interpolation"]
    assert interp
    fam = interp[0].family
    base = AutoModelForCausalLM.from_pretrained(out / f"zoo/{fam}-base").state_dict()
    ft_key = next(
        m.key
        for m in models
        if m.family == fam and m.role == "finetune" and m.key.endswith("-strong")
    )
    ft = AutoModelForCausalLM.from_pretrained(out / ft_key).state_dict()
    assert any(not torch.equal(base[k], ft[k]) for k in base)
    for m in interp:
        got = AutoModelForCausalLM.from_pretrained(out / m.path).state_dict()
        a = m.alpha
        for k in base:
            assert torch.equal(got[k], (1.0 - a) * base[k] + a * ft[k]), k


def test_finetunes_start_from_their_base(small_zoo):
    out, models = small_zoo
    for m in models:
        if m.role != "finetune":
            continue
        base = AutoModelForCausalLM.from_pretrained(out / f"zoo/{m.family}-base").state_dict()
        ft = AutoModelForCausalLM.from_pretrained(out / m.path).state_dict()
        # Moved, but not far: relative change of the weights is small.
        num = sum((ft[k] - base[k]).norm() ** 2 for k in base) ** 0.5
        den = sum(base[k].norm() ** 2 for k in base) ** 0.5
        assert 0 < num / den < 0.2


def test_cache_skips_retraining(small_zoo, monkeypatch):
    out, models = small_zoo
    stamp = {m.key: (out / m.path / "model.safetensors").stat().st_mtime_ns for m in models}

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(zoo, "train", no_training)
    again = build_zoo(out, _documents(), ZooSpec.small(), log=lambda s: None)
    assert again == models
    assert stamp == {m.key: (out / m.path / "model.safetensors").stat().st_mtime_ns for m in models}
    # A registry written before declared bases gets them on load, without retraining.
    data = json.loads((out / "zoo.json").read_text())
    for entry in data["models"]:
        del entry["base_model"]
    (out / "zoo.json").write_text(json.dumps(data))
    assert build_zoo(out, _documents(), ZooSpec.small(), log=lambda s: None) == models
    assert load_registry(out) == models
    # Different training text: the cache does not apply.
    with pytest.raises(AssertionError, match="retrained"):
        build_zoo(out, _documents()[:-3], ZooSpec.small(), log=lambda s: None)


def test_build_is_deterministic(small_zoo, tmp_path):
    out, models = small_zoo
    other = build_zoo(tmp_path, _documents(), ZooSpec.small(), log=lambda s: None)
    assert other == models
    a = AutoModelForCausalLM.from_pretrained(out / "zoo/gpt2-base").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "zoo/gpt2-base").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_spec_round_trip_and_hash():
    spec = ZooSpec.default()
    assert ZooSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.hash() != ZooSpec.small().hash()
    archs = {f.architecture for f in spec.families}
    assert archs == {"gpt2", "llama", "gpt_neox"}
    assert len({f.context_length for f in spec.families}) == len(spec.families)
    assert len({f.vocab_size for f in spec.families}) == len(spec.families)


def test_slug_and_domain_choice():
    assert zoo.slug("devil's dictionary") == "devils-dictionary"
    assert zoo.slug("Python Code") == "python-code"
    texts = {"a": ["x" * 10], "bible": ["x"], "big": ["x" * 100]}
    assert zoo._choose_domains(texts, ("bible", "missing"), 2) == ["bible", "big"]


def test_threads_are_the_ones_asked_for_and_restored(tmp_path):
    before = torch.get_num_threads()
    lines: list[str] = []
    build_zoo(tmp_path, _documents(), ZooSpec.small(), log=lines.append, threads=1)
    assert any(line.endswith(", 1 threads") for line in lines), lines[:2]
    assert torch.get_num_threads() == before
    assert (tmp_path.parent / f"{tmp_path.name}.lock").exists()  # one trainer per folder
