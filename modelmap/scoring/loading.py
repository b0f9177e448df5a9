"""Load a Hugging Face causal LM and its tokenizer from a local folder or a Hub repo id."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Files scoring needs from a Hub repo: weights (safetensors preferred), config, tokenizer.
SCORING_FILES = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.txt",
]


class ModelLoadError(RuntimeError):
    """A model that cannot be scored: the message names the model and the cause."""


@dataclass
class LoadedModel:
    key: str
    model: torch.nn.Module
    tokenizer: object
    revision: str  # Hub commit sha, or a content hash for a local folder
    n_params: int
    context_length: int
    dtype: torch.dtype
    device: torch.device


def resolve_device(device: str = "auto") -> torch.device:
    """The device a `device` setting names: `auto` is CUDA when present, else the CPU; any
    other value (`cpu`, `cuda`, `cuda:1`, ...) is that device, present or not. The one reading
    of the setting (`MODELMAP_DEVICE`): loading, prefetching and batch sizes all follow it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r}: expected auto, cpu, cuda or cuda:N ({exc})") from exc


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on a GPU that supports it, float32 otherwise."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: choose one of {sorted(DTYPES)} or 'auto'")
    return DTYPES[dtype]


def folder_revision(folder: Path) -> str:
    """A content hash (sha256, 40 hex characters) of a local model folder's files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:40]


def context_length(config, cap: int | None = None) -> int:
    """The longest input the model accepts, from its config (capped at `cap` if given)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return min(value, cap) if cap else value
    if cap:
        return cap
    raise ModelLoadError("the config states no context length; set max_context to score it")


def load_causal_lm(
    key: str,
    source: str | Path,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    max_context: int | None = None,
) -> LoadedModel:
    """Load model `key` from the model folder `source` (a zoo folder or a Hub snapshot).

    Hub models are downloaded first by `resources.hub.HubResource.fetch`, pinned to a sha,
    which is passed as `revision`; a local folder's revision is a hash of its files.

    Raises `ModelLoadError` naming the model and the cause when it cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    torch_dtype = resolve_dtype(dtype, torch_device)
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"model {key}: no config.json in {folder}")
    sha = revision or folder_revision(folder)
    check_model_folder(key, folder, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"model {key}: cannot load its tokenizer: {exc}") from exc
    # Long texts are split into windows by the scorer, not truncated: silence the length warning.
    tokenizer.model_max_length = 1 << 60
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(f"model {key}: cannot load it as a causal LM: {exc}") from exc
    model.to(torch_device).eval()
    leak = causality_leak_nats(model)
    if leak > CAUSAL_TOLERANCE_NATS[torch_dtype]:
        raise ModelLoadError(
            f"model {key}: not a causal LM: changing the last token of a {PROBE_TOKENS}-token "
            f"probe moved the log-probabilities before it by up to {leak:.3g} nats (its "
            f"attention sees later tokens; {type(model).__name__}, whatever its config says)"
        )
    n_params = sum(p.numel() for p in model.parameters())
    return LoadedModel(
        key=key,
        model=model,
        tokenizer=tokenizer,
        revision=sha,
        n_params=n_params,
        context_length=context_length(model.config, max_context),
        dtype=torch_dtype,
        device=torch_device,
    )


PROBE_TOKENS = 8
# A causal model gives the same earlier log-probabilities to the last float rounding: 1e-5
# nats in float32; half precision rounds the logits more coarsely.
CAUSAL_TOLERANCE_NATS = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def causality_leak_nats(model: torch.nn.Module, n_tokens: int = PROBE_TOKENS) -> float:
    """How much the log-probabilities at positions 0..T-2 move when token T-1 changes (nats).

    Two probes of `n_tokens` ids that differ only in their last token go through the model in
    one batch; the result is the largest absolute difference of the log-softmax over the
    vocabulary at the earlier positions (float32). 0 for a causal LM, whatever its class or
    config claims; a model whose attention looks ahead (BERT-style) moves them.
    """
    n_vocab = model.get_input_embeddings().num_embeddings
    device = next(model.parameters()).device
    probe = (torch.arange(n_tokens, device=device) * 7919 + 3) % max(n_vocab - 1, 1)
    changed = probe.clone()
    changed[-1] = (probe[-1] + 1) % n_vocab
    with torch.inference_mode():
        logits = model(input_ids=torch.stack([probe, changed])).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float((logprobs[0] - logprobs[1]).abs().max())


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model"}


def check_model_folder(key: str, folder: Path, trust_remote_code: bool) -> None:
    """Refuse, before transformers runs anything, a folder without weights or with remote code.

    A config with `auto_map` ships its own Python modelling code: loading it would run code
    from the repo, which is allowed only for models the operator has allow-listed.
    """
    folder = Path(folder)
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir()):
        raise ModelLoadError(f"model {key}: no weights (no *.safetensors file) in {folder}")
    names = {p.name for p in folder.iterdir()}
    if not (names & TOKENIZER_FILES or any(n.endswith(".tiktoken") for n in names)):
        # transformers 5 would build an empty tokenizer from the config alone.
        raise ModelLoadError(
            f"model {key}: no tokenizer files (none of {sorted(TOKENIZER_FILES)}) in {folder}"
        )
    try:
        config = read_json(folder / "config.json")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {key}: unreadable config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"model {key}: config.json is not a JSON object (a {type(config).__name__}) in {folder}"
        )
    for name in ("config.json", "tokenizer_config.json"):
        mapping = config if name == "config.json" else _json_or_empty(folder / name)
        for entry in _auto_map_entries(mapping):
            if "--" in entry:
                raise ModelLoadError(
                    f"model {key}: {name} auto_map entry {entry!r} runs code from another repo "
                    f"({entry.split('--')[0]}); only a repo's own code is ever loaded"
                )
    if config.get("auto_map") and not trust_remote_code:
        raise ModelLoadError(
            f"model {key}: needs remote code (its config.json has auto_map "
            f"{sorted(config['auto_map'])}), and trust_remote_code is not allowed for it; "
            "add it to the trust_remote_code allow-list to score it"
        )


def _auto_map_entries(config: dict) -> list[str]:
    """Every class reference of a config's `auto_map` ("module.Class" or "repo--module.Class")."""
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    entries: list[str] = []
    for value in (auto_map or {}).values() if isinstance(auto_map, dict) else []:
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str):
                entries.append(item)
    return entries


def _json_or_empty(path: Path) -> dict:
    try:
        value = read_json(path)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
