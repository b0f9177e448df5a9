"""Scoring side by side: modelmap's engine, the paper's algorithm and lm-evaluation-harness.

For each model and precision, on the same texts and device, in one process:

- `modelmap`: `modelmap.scoring.engine.score_texts` (token-budget batches, chunked output layer);
- `paper`: the paper's algorithm, one text at a time, a full-vocabulary log_softmax and a
  per-token loop (`workshop.reference.reference_loglik`);
- `lm_eval_default` / `lm_eval_best`: lm-evaluation-harness's `HFLM.loglikelihood_rolling` with
  its default batch size (1) and with the fastest of `--lm-eval-batch-sizes` (chosen on a
  subset of the texts, then run on all of them).

Reported per run: tokens/s (tokens of the texts, the same numerator for every engine),
peak memory, `mfu` (achieved FLOP/s over the machine's matmul rate measured in the same run
and precision; FLOPs = 2 x matmul parameters per input token + causal attention, counted on
the engine's own windows) and the largest relative difference of the per-text
log-likelihoods from the float32 per-token reference. lm-eval scores every token after a
prefix token with disjoint windows, so its log-likelihoods differ from the reference by
construction (first token scored, less left context in long texts).

Also compares the KL table and the map of the whole zoo scored in bfloat16 against float32.

    .venv/bin/python benchmarks/bench_scoring.py                 # CPU: zoo bases + SmolLM2
    .venv/bin/python benchmarks/bench_scoring.py --gpu           # + random Llama ~1B, ~7B
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap.corpus.build import build_corpus
from modelmap.scoring.engine import TOKEN_CACHE, plan_windows, score_texts, tokenize
from modelmap.scoring.loading import LoadedModel, load_causal_lm
from modelmap.scoring.prefetch import prefetched
from workshop.reference import reference_loglik
from workshop.smollm import MODEL_KEY as SMOLLM_KEY
from workshop.smollm import smollm2_folder
from workshop.zoo import ZooSpec, build_zoo

CACHE = Path(os.environ.get("MODELMAP_CACHE", REPO / ".cache" / "modelmap"))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# Random-initialised Llama configurations for a GPU (vocabulary of the SmolLM2 tokenizer).
GPU_CONFIGS = {
    "random/llama-1b": dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32
    ),
    "random/llama-7b": dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32
    ),
}


@dataclass
class Run:
    model: str
    engine: str  # modelmap | paper | lm_eval_default | lm_eval_best
    dtype: str
    device: str
    tokens_per_s: float
    peak_mem_mb: float
    mfu: float
    max_rel_diff_vs_reference: float
    wall_s: float
    n_texts: int
    batch_size: int | None = None


# ------------------------------------------------------------------------------- measuring


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def matmul_rate(dtype: torch.dtype, device: torch.device) -> float:
    """Best FLOP/s of square matrix products (the machine's matmul rate in this precision)."""
    sizes = (1024, 2048) if device.type == "cpu" else (4096, 8192)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        for _ in range(2):
            a @ b
        reps = 5 if device.type == "cpu" else 50
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on CPU the peak resident set size
    above the level before the block plus the model's weights (sampled every 2 ms)."""

    def __init__(self, device: torch.device, weights_bytes: int):
        self.device, self.weights = device, weights_bytes
        self.peak_mb = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        _trim()
        self._base = self._peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, _rss())
        self.peak_mb = (self._peak - self._base + self.weights) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim() -> None:
    """Give freed heap back to the system so the next block's peak starts from a true base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def flops_per_window(model: torch.nn.Module, lengths: list[int]) -> float:
    """2 x matmul parameters per input token + causal attention (QK^T and AV) per window."""
    config = model.config
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    matmul = total - embed + (head.numel() if tied else 0)
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    n = np.asarray(lengths, dtype=np.float64)
    return float(2 * matmul * n.sum() + 4 * layers * width * (n * (n + 1) / 2).sum())


# ------------------------------------------------------------------------------- engines


def run_modelmap(lm: LoadedModel, texts: list[str]) -> np.ndarray:
    return score_texts(lm.model, lm.tokenizer, texts, context=lm.context_length).loglik_nats


def run_paper(lm: LoadedModel, texts: list[str]) -> np.ndarray:
    return np.array(
        [reference_loglik(lm.model, lm.tokenizer, t, context=lm.context_length) for t in texts]
    )


def lm_eval_engine(lm: LoadedModel, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    harness = HFLM(
        pretrained=lm.model,
        tokenizer=lm.tokenizer,
        batch_size=batch_size,
        max_length=lm.context_length,
    )

    def run(texts: list[str]) -> np.ndarray:
        requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
        # It opens a progress bar per batch whatever disable_tqdm says: keep them off the log.
        with contextlib.redirect_stderr(io.StringIO()):
            return np.array(harness.loglikelihood_rolling(requests, disable_tqdm=True))

    run.harness = harness  # type: ignore[attr-defined]
    return run


def lm_eval_flops(lm: LoadedModel, run, texts: list[str]) -> float:
    """lm-eval's own windows: a prefix token, then disjoint windows of its max_length."""
    from lm_eval import utils

    harness = run.harness
    lengths = []
    for text in texts:
        for context, continuation in map(
            utils.make_disjoint_window,
            utils.get_rolling_token_windows(
                harness.tok_encode(text), harness.prefix_token_id, harness.max_length, 1
            ),
        ):
            lengths.append(min(len(context) + len(continuation) - 1, harness.max_length))
    return flops_per_window(lm.model, lengths)


def timed(
    engine: Callable[[list[str]], np.ndarray], texts: list[str], device: torch.device, weights: int
) -> tuple[np.ndarray, float, float]:
    engine(texts[:2])  # warm-up (kernels, allocator); not timed
    with PeakMemory(device, weights) as memory:
        _sync(device)
        t0 = time.perf_counter()
        values = engine(texts)
        _sync(device)
        wall = time.perf_counter() - t0
    return values, wall, memory.peak_mb


def rel_diff(values: np.ndarray, reference: np.ndarray) -> float:
    scored = np.abs(reference) > 0
    return float(np.max(np.abs(values[scored] - reference[scored]) / np.abs(reference[scored])))


# ------------------------------------------------------------------------------- benchmark


def bench_model(
    key: str,
    load: Callable[[str], LoadedModel],
    texts: list[str],
    dtypes: list[str],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[Run]:
    runs: list[Run] = []
    reference: np.ndarray | None = None
    for dtype in dtypes:
        lm = load(dtype)
        device = lm.device
        weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
        rate = matmul_rate(lm.dtype, device)
        ids = tokenize(lm.tokenizer, texts)
        text_tokens = sum(len(t) for t in ids)
        windows = [
            end - start for t in ids for start, end, _ in plan_windows(len(t), lm.context_length)
        ]
        ours_flops = flops_per_window(lm.model, windows)
        paper_texts = texts[: args.paper_texts] if args.paper_texts else texts
        log(
            f"{key} {dtype} on {device}: {lm.n_params:,} params, context {lm.context_length}, "
            f"{len(texts)} texts, {text_tokens:,} tokens, matmul {rate / 1e12:.3f} TFLOP/s"
        )

        # The paper's algorithm first: in float32 it is the reference for every other run.
        values, wall, peak = timed(lambda t, lm=lm: run_paper(lm, t), paper_texts, device, weights)
        if dtype == "float32" and len(paper_texts) == len(texts):
            reference = values
        if reference is None:  # bf16 only, or a subset: a float32 reference of its own
            ref_lm = load("float32")
            reference = run_paper(ref_lm, texts)
            del ref_lm
        n_paper = sum(len(t) for t in ids[: len(paper_texts)])
        frac = ours_flops * n_paper / text_tokens
        runs.append(
            Run(
                key,
                "paper",
                dtype,
                str(device),
                n_paper / wall,
                peak,
                frac / wall / rate,
                rel_diff(values, reference[: len(values)]),
                wall,
                len(paper_texts),
            )
        )
        log(f"  {_row(runs[-1])}")

        TOKEN_CACHE.clear()  # tokenization is part of the timed run
        values, wall, peak = timed(lambda t, lm=lm: run_modelmap(lm, t), texts, device, weights)
        TOKEN_CACHE.clear()
        runs.append(
            Run(
                key,
                "modelmap",
                dtype,
                str(device),
                text_tokens / wall,
                peak,
                ours_flops / wall / rate,
                rel_diff(values, reference),
                wall,
                len(texts),
            )
        )
        log(f"  {_row(runs[-1])}")

        if not args.no_lm_eval:
            runs += bench_lm_eval(key, lm, texts, text_tokens, reference, rate, weights, args, log)
        del lm
        gc.collect()
    return runs


def bench_lm_eval(key, lm, texts, text_tokens, reference, rate, weights, args, log) -> list[Run]:
    device, dtype = lm.device, str(lm.dtype).removeprefix("torch.")
    runs = []
    default = lm_eval_engine(lm, 1)
    flops = lm_eval_flops(lm, default, texts)

    def measure(name: str, engine, batch_size: int) -> None:
        values, wall, peak = timed(engine, texts, device, weights)
        run = Run(
            key,
            name,
            dtype,
            str(device),
            text_tokens / wall,
            peak,
            flops / wall / rate,
            rel_diff(values, reference),
            wall,
            len(texts),
            batch_size,
        )
        runs.append(run)
        log(f"  {_row(run)}")

    measure("lm_eval_default", default, 1)
    # The best batch size, chosen on a subset, then timed on every text.
    subset = texts[: args.lm_eval_sweep_texts]
    speeds = {1: len(subset) / max(1e-9, _time_only(default, subset))}
    for bs in args.lm_eval_batch_sizes:
        if bs != 1:
            speeds[bs] = len(subset) / max(1e-9, _time_only(lm_eval_engine(lm, bs), subset))
    best = max(speeds, key=speeds.get)
    log(
        f"  lm-eval batch sizes, texts/s on {len(subset)} texts: "
        + ", ".join(f"{bs}: {v:.1f}" for bs, v in speeds.items())
        + f" -> {best}"
    )
    measure("lm_eval_best", lm_eval_engine(lm, best), best)
    return runs


def _time_only(engine, texts) -> float:
    engine(texts[:2])
    t0 = time.perf_counter()
    engine(texts)
    return time.perf_counter() - t0


def _row(r: Run) -> str:
    bs = f" (batch {r.batch_size})" if r.batch_size else ""
    return (
        f"{r.engine:16s} {r.tokens_per_s:10,.0f} tok/s  {r.peak_mem_mb:8,.0f} MB  "
        f"mfu {r.mfu:6.1%}  max rel diff {r.max_rel_diff_vs_reference:.2e}{bs}"
    )


def table(runs: list[Run]) -> str:
    """A Markdown table of the runs with each engine's speed-up over the paper's."""
    paper = {(r.model, r.dtype): r.tokens_per_s for r in runs if r.engine == "paper"}
    lines = [
        "| model | dtype | device | engine | tokens/s | x paper | peak MB | mfu | max rel diff |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        speedup = r.tokens_per_s / paper[(r.model, r.dtype)] if (r.model, r.dtype) in paper else 0
        engine = r.engine + (f" (bs {r.batch_size})" if r.engine == "lm_eval_best" else "")
        lines.append(
            f"| {r.model} | {r.dtype} | {r.device} | {engine} | {r.tokens_per_s:,.0f} | "
            f"{speedup:.1f} | {r.peak_mem_mb:,.0f} | {r.mfu:.1%} | "
            f"{r.max_rel_diff_vs_reference:.1e} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------- precision


def precision_study(zoo_dir: Path, zoo, texts: list[str], log) -> dict:
    """The zoo's KL table and map from bfloat16 scoring against float32 scoring."""
    from modelmap.geometry.centering import clip_global, double_centre
    from modelmap.geometry.kl import two_kl_nats
    from modelmap.geometry.mapping import embed_2d

    L = {}
    t0 = time.perf_counter()
    for dtype in ("float32", "bfloat16"):
        jobs = prefetched(
            zoo,
            lambda m, dtype=dtype: load_causal_lm(
                m.key, zoo_dir / m.path, device="cpu", dtype=dtype
            ),
            ahead=0,  # on a CPU a background load slows scoring (`modelmap.scoring.prefetch`)
        )
        rows = []
        for job in jobs:
            lm = job.get()
            rows.append(
                score_texts(lm.model, lm.tokenizer, texts, context=lm.context_length).loglik_nats
            )
        L[dtype] = np.array(rows)
    log(
        f"precision: {len(zoo)} models x {len(texts)} texts x 2 dtypes in "
        f"{time.perf_counter() - t0:.0f}s"
    )
    kl, maps = {}, {}
    for dtype, matrix in L.items():
        Q = double_centre(clip_global(matrix)[0])
        kl[dtype] = two_kl_nats(Q)
        maps[dtype] = embed_2d(Q)[0]
    upper = np.triu_indices(len(zoo), 1)
    a, b = kl["float32"][upper], kl["bfloat16"][upper]
    map_a = _pairwise(maps["float32"])[upper]
    map_b = _pairwise(maps["bfloat16"])[upper]
    nearest = [np.argsort(kl[d] + np.diag(np.full(len(zoo), np.inf)), axis=1)[:, 0] for d in kl]
    return {
        "n_models": len(zoo),
        "n_texts": len(texts),
        "loglik_max_rel_diff": float(
            np.max(np.abs(L["bfloat16"] - L["float32"]) / np.abs(L["float32"]))
        ),
        "kl_pearson": float(np.corrcoef(a, b)[0, 1]),
        "kl_max_rel_change": float(np.max(np.abs(b - a) / a)),
        "kl_median_rel_change": float(np.median(np.abs(b - a) / a)),
        "map_distance_pearson": float(np.corrcoef(map_a, map_b)[0, 1]),
        "nearest_neighbour_agreement": float(np.mean(nearest[0] == nearest[1])),
    }


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-texts", type=int, default=200)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="zoo keys and/or 'smollm2' (default: the three bases + smollm2)",
    )
    parser.add_argument(
        "--paper-texts",
        type=int,
        default=0,
        help="time the paper's algorithm on the first N texts only (0: all)",
    )
    parser.add_argument("--lm-eval-batch-sizes", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--lm-eval-sweep-texts", type=int, default=32)
    parser.add_argument("--no-lm-eval", action="store_true")
    parser.add_argument(
        "--precision-texts",
        type=int,
        default=300,
        help="texts for the bf16-vs-float32 map study (0: skip it)",
    )
    parser.add_argument(
        "--gpu",
        action="store_true",
        help="on CUDA: random-initialised Llama ~1B and ~7B in bfloat16",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, flush=True)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # "pretrained is not a str" notes
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    texts = build_corpus("embedded", args.n_texts)["text"].to_list()
    zoo_dir = CACHE / "zoo"
    zoo = build_zoo(zoo_dir, spec=ZooSpec.default(), log=log)
    bases = {m.key: m for m in zoo if m.role == "base"}
    wanted = args.models if args.models is not None else [*bases, "smollm2"]
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu needs CUDA")
    device = "cuda" if args.gpu else "cpu"

    loaders: dict[str, Callable[[str], LoadedModel]] = {}
    for key in wanted:
        if key == "smollm2":
            folder = smollm2_folder(CACHE)
            loaders[SMOLLM_KEY] = lambda d, f=folder: load_causal_lm(
                SMOLLM_KEY, f, device=device, dtype=d
            )
        else:
            entry = bases[key] if key in bases else next(m for m in zoo if m.key == key)
            loaders[key] = lambda d, e=entry: load_causal_lm(
                e.key, zoo_dir / e.path, device=device, dtype=d
            )
    if args.gpu:
        for key, shape in GPU_CONFIGS.items():
            loaders[key] = lambda d, k=key, s=shape: random_llama(k, s, d)

    runs: list[Run] = []
    for key, load in loaders.items():
        dtypes = args.dtypes if not key.startswith("random/") else ["bfloat16"]
        runs += bench_model(key, load, texts, dtypes, args, log)
    result: dict = {"machine": machine(), "n_texts": len(texts), "runs": [asdict(r) for r in runs]}
    if args.precision_texts and not args.gpu:
        precision_texts = build_corpus("embedded", args.precision_texts)["text"].to_list()
        result["precision"] = precision_study(zoo_dir, zoo, precision_texts, log)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)
    print()
    print(f"machine: {result['machine']}")
    print(table(runs))
    if "precision" in result:
        print("precision (bf16 vs float32 on the zoo):", json.dumps(result["precision"], indent=1))
    print(f"-> {args.out}")


def random_llama(key: str, shape: dict, dtype: str) -> LoadedModel:
    """A random-initialised Llama of the given shape with SmolLM2's tokenizer, on CUDA."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder(CACHE))
    tokenizer.model_max_length = 1 << 60
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        num_key_value_heads=None,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **shape,
    )
    torch_dtype = DTYPES[dtype]
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch_dtype).eval()
    return LoadedModel(
        key,
        model,
        tokenizer,
        "random",
        sum(p.numel() for p in model.parameters()),
        2048,
        torch_dtype,
        torch.device("cuda"),
    )


if __name__ == "__main__":
    main()
