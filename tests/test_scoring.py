"""The scoring engine against hand-worked windows and the plain per-token reference."""

import random

import numpy as np
import pytest
import torch

from modelmap.scoring.engine import (
    ScoringError,
    context_of_token,
    make_batches,
    plan_windows,
    score_texts,
    tokenize,
)
from modelmap.scoring.loading import load_causal_lm
from workshop.reference import reference_loglik
from workshop.zoo import FamilySpec, ZooSpec, build_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """One small trained base per architecture (GPT-2, Llama, NeoX: both tokenizer
    conventions, three position schemes), trained in seconds: the engine's tests need each
    architecture, not the map's zoo."""
    small = ZooSpec.small()
    spec = ZooSpec(
        families=(
            *small.families,
            FamilySpec("neox", "gpt_neox", 384, 56, n_layer=1, d_model=32, n_head=2, n_finetunes=0),
        ),
        interpolation=None,
        base_steps=40,
        base_warmup=4,
        batch_size=4,
        max_chars_per_domain=200_000,
        bf16_autocast=False,
    )
    folder = tmp_path_factory.mktemp("architectures")
    return folder, build_zoo(folder, spec=spec, log=lambda s: None)


def test_windows_by_hand():
    # 10 tokens, context 4, stride 2: tokens 1-3, then 4-5, 6-7, 8-9, each with >= 2 of context.
    assert plan_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert plan_windows(3, 4) == [(0, 3, 1)]
    assert plan_windows(4, 4) == [(0, 4, 1)]
    assert plan_windows(5, 4) == [(0, 4, 1), (1, 5, 4)]
    assert plan_windows(1, 4) == [] and plan_windows(0, 4) == []
    assert context_of_token(9, 10, 4, 2) == 6


@pytest.mark.parametrize("seed", range(20))
def test_windows_score_every_token_once(seed):
    rng = random.Random(seed)
    n, context = rng.randint(2, 300), rng.randint(2, 64)
    stride = rng.randint(1, context - 1)
    scored = []
    for start, end, first in plan_windows(n, context, stride):
        assert 0 <= start < first <= end and end - start <= context
        assert first - start >= min(first, context - stride)  # enough left context
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_batches_respect_the_token_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    batches = make_batches(lengths, 512)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 512
    longest_first = [max(lengths[i] for i in b) for b in batches]
    assert longest_first == sorted(longest_first, reverse=True)
    assert make_batches([700, 10], 512) == [[0], [1]]  # too long for the budget: alone


def _base_models(zoo):
    folder, models = zoo
    return {m.architecture: m for m in models if m.role == "base"}


@pytest.mark.slow
def test_engine_matches_per_token_reference_for_every_architecture(zoo, corpus_texts):
    folder, _ = zoo
    bases = _base_models(zoo)
    assert {"gpt2", "llama", "gpt_neox"} <= set(bases)
    texts = corpus_texts["text"].to_list()
    longest = max(texts, key=len)
    sample = [longest, *texts[:5], "a", "Hello"]
    for arch, entry in bases.items():
        loaded = load_causal_lm(entry.key, folder / entry.path, device="cpu", dtype="float32")
        ids = tokenize(loaded.tokenizer, sample)
        assert len(ids[0]) > loaded.context_length, f"{arch}: no text exceeds the context"
        fast = score_texts(
            loaded.model,
            loaded.tokenizer,
            sample,
            context=loaded.context_length,
            token_budget=4 * loaded.context_length,
            head_chunk_tokens=100,
        ).loglik_nats
        reference = np.array(
            [
                reference_loglik(loaded.model, loaded.tokenizer, t, context=loaded.context_length)
                for t in sample
            ]
        )
        scored = np.abs(reference) > 0
        rel = np.abs(fast[scored] - reference[scored]) / np.abs(reference[scored])
        assert rel.max() < 1e-5, f"{arch}: largest relative difference {rel.max():.2e}"
        assert np.all(fast[~scored] == 0)


@pytest.mark.slow
def test_first_token_rule(zoo):
    folder, _ = zoo
    bases = _base_models(zoo)
    for arch, entry in bases.items():
        loaded = load_causal_lm(entry.key, folder / entry.path, device="cpu")
        text = "The first token rule."
        ids = tokenize(loaded.tokenizer, [text])[0]
        plain = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        result = score_texts(loaded.model, loaded.tokenizer, [text], context=loaded.context_length)
        if arch == "llama":  # prepends BOS: every text token is scored
            assert ids[0] == loaded.tokenizer.bos_token_id and len(ids) == len(plain) + 1
            assert result.n_scored[0] == len(plain)
        else:  # no BOS: the first text token is not scored
            assert ids == plain and result.n_scored[0] == len(plain) - 1


@pytest.mark.slow
def test_batching_and_precision_do_not_change_the_result(zoo, corpus_texts):
    folder, _ = zoo
    entry = _base_models(zoo)["gpt_neox"]
    texts = corpus_texts["text"].to_list()[:40]
    loaded = load_causal_lm(entry.key, folder / entry.path, device="cpu", dtype="float32")
    ctx = loaded.context_length
    one = score_texts(loaded.model, loaded.tokenizer, texts, context=ctx, token_budget=ctx)
    many = score_texts(loaded.model, loaded.tokenizer, texts, context=ctx, token_budget=64 * ctx)
    np.testing.assert_allclose(one.loglik_nats, many.loglik_nats, rtol=1e-5)
    bf16 = load_causal_lm(entry.key, folder / entry.path, device="cpu", dtype="bfloat16")
    low = score_texts(bf16.model, bf16.tokenizer, texts, context=ctx).loglik_nats
    rel = np.abs(low - many.loglik_nats) / np.abs(many.loglik_nats)
    assert rel.max() < 0.02, f"bf16 differs from float32 by {rel.max():.3f}"


@pytest.mark.slow
def test_nan_weights_fail_with_the_model_named(zoo):
    folder, _ = zoo
    entry = _base_models(zoo)["gpt2"]
    loaded = load_causal_lm(entry.key, folder / entry.path, device="cpu")
    with torch.no_grad():
        next(loaded.model.parameters()).fill_(float("nan"))
    with pytest.raises(ScoringError, match=f"model {entry.key}: .*NaN"):
        score_texts(
            loaded.model,
            loaded.tokenizer,
            ["some text to score"],
            context=loaded.context_length,
            name=entry.key,
        )
