"""Small real models and a local Hub for the Hub tests (no mocks of huggingface_hub)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TEXT = (
    "In the beginning was the word, and the word was with the model. "
    "def f(x):\n    return x * 2\n"
    "A fortune: you will write many tests today. "
) * 20


def make_tokenizer(folder: Path):
    """A byte-level BPE tokenizer trained on a few lines, saved in `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    return fast


def make_tiny_model(folder: Path, seed: int = 0, n_embd: int = 16) -> Path:
    """A random 1-layer GPT-2 with its tokenizer (a few hundred KB), saved in `folder`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    tokenizer = make_tokenizer(folder)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=n_embd,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def variant(src: Path, dest: Path, edit=None) -> Path:
    """A copy of a model folder, changed by `edit(folder)` (a bad model for the failure tests)."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    if edit is not None:
        edit(dest)
    return dest


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
