"""Bad models and bad model folders are refused with a message naming the model and the cause.

Real tiny models (built in about a second), loaded through the real transformers code.
"""

import json

import dagster as dg
import pytest
import torch
from hubtools import make_tokenizer, variant

from modelmap.scoring import loading
from modelmap.scoring.engine import ScoringError, score_texts
from modelmap.scoring.loading import ModelLoadError, load_causal_lm


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny BertLMHeadModel with is_decoder=False: AutoModelForCausalLM loads it, and it sees
    the tokens after each position (not a causal LM)."""
    from transformers import BertConfig, BertLMHeadModel

    folder = tmp_path_factory.mktemp("bert") / "model"
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        is_decoder=False,
    )
    BertLMHeadModel(config).save_pretrained(folder)
    return folder


def test_a_non_causal_model_is_refused_by_a_probe(bert_folder):
    with pytest.raises(ModelLoadError, match=r"model org/bert: not a causal LM: .* nats"):
        load_causal_lm("org/bert", bert_folder, device="cpu")


def test_the_same_weights_pass_when_the_attention_is_made_causal(bert_folder, tmp_path):
    # The probe measures the attention, not a class or a flag: is_decoder=true makes BERT's
    # attention causal, and the same weights then pass.
    folder = variant(bert_folder, tmp_path / "dec")
    config = json.loads((folder / "config.json").read_text())
    config["is_decoder"] = True
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_causal_lm("org/bert-decoder", folder, device="cpu")
    assert loading.causality_leak_nats(loaded.model) < 1e-5


def test_a_causal_model_passes_the_probe(tiny_model):
    loaded = load_causal_lm("org/tiny", tiny_model, device="cpu")
    assert loading.causality_leak_nats(loaded.model) < 1e-5


def test_a_config_that_is_not_an_object_is_named(tiny_model, tmp_path):
    folder = variant(tiny_model, tmp_path / "m")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="model org/m: config.json is not a JSON object"):
        load_causal_lm("org/m", folder, device="cpu")


def test_a_tokenizer_larger_than_the_embedding_is_named(tiny_model, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = variant(tiny_model, tmp_path / "small-vocab")
    config = GPT2Config(vocab_size=40, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    loaded = load_causal_lm("org/small-vocab", folder, device="cpu")
    with pytest.raises(ScoringError, match=r"model org/small-vocab: token id \d+ .* 40 embeddings"):
        score_texts(
            loaded.model,
            loaded.tokenizer,
            ["hello world, a test"],
            context=64,
            name="org/small-vocab",
            token_cache=None,
        )


@pytest.mark.slow
def test_a_missing_corpus_is_not_a_model_failure(tiny_model, tmp_path):
    from modelmap_assets.cli.main import failure_message
    from modelmap_assets.definitions import ASSETS, build_resources
    from resources.models import ModelSourceResource

    resources = build_resources(
        {"MODELMAP_DATA": str(tmp_path / "data"), "MODELMAP_CACHE": str(tmp_path / "cache")}
    )
    local = tmp_path / "local"
    variant(tiny_model, local / "org" / "tiny")
    resources["model_source"] = ModelSourceResource(local_dirs=[str(local)])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", ["org/tiny"])
        result = dg.materialize(
            ASSETS,
            selection=["likelihood"],
            partition_key="org/tiny",
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
    message = failure_message(result)
    assert not message.startswith("model org/tiny"), message
    assert "materialize the `corpus` asset first" in message, message
