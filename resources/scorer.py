"""The scorer: loads a causal LM on a device and computes text log-likelihoods."""

import resource
import sys
from collections.abc import Callable, Sequence

import dagster as dg
import torch
from pydantic import Field

from modelmap.scoring.engine import Progress, ScoreResult, score_texts
from modelmap.scoring.loading import LoadedModel, load_causal_lm


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class ScorerResource(dg.ConfigurableResource):
    """Scoring settings: device (auto/cpu/cuda), dtype, batch token budget, windows."""

    device: str = Field(
        default="auto", description="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:1`"
    )
    # One default for every way of running (make, the CLI, the webserver, tests): bfloat16.
    # Measured on the zoo: per-text log-likelihoods differ from float32 by <4e-4 relative and
    # 2KL by <0.05%, and scoring is ~1.5-2x faster on CPUs with AVX-512 BF16. A model that
    # scores NaN/inf in bfloat16 is retried in float32.
    dtype: str = Field(
        default="bfloat16",
        description="weights and activations: `bfloat16`, `float32` (CPUs without bf16 "
        "support), `float16`, `auto` (the checkpoint's)",
    )
    token_budget: int | None = Field(
        default=None,
        description="padded tokens per scoring batch; none: 2,048 on CPU, 16,384 on GPU",
    )
    head_chunk_tokens: int = 4_096
    stride: int | None = None  # sliding-window stride; default half the context
    max_context: int | None = None  # cap on the model's context length
    progress_every_s: float = 10.0
    prefetch: bool | None = Field(
        default=None,
        description="load a batch's next model while the current one scores; none: on CUDA "
        "only (on a CPU the load competes with scoring for the cores: `modelmap.scoring."
        "prefetch`)",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Import the model-loading libraries when the run starts, not inside the scoring step:
        a run that waits for the `gpu` slot pays them while the batch before it scores."""
        import transformers

        transformers.AutoModelForCausalLM, transformers.AutoTokenizer  # noqa: B018

    def loads_ahead(self) -> int:
        """Models a batch loads in advance: 1 with prefetching, else 0 (each in turn)."""
        if self.prefetch is not None:
            return int(self.prefetch)
        if self.device == "auto":
            return int(torch.cuda.is_available())
        return int(self.device.startswith("cuda"))

    def load(
        self,
        key: str,
        path: str,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
    ) -> LoadedModel:
        """Load a model folder on this scorer's device, in its dtype unless `dtype` is given."""
        return load_causal_lm(
            key,
            path,
            revision=revision,
            device=self.device,
            dtype=dtype or self.dtype,
            trust_remote_code=trust_remote_code,
            max_context=self.max_context,
        )

    def score(
        self, loaded: LoadedModel, texts: Sequence[str], log: Callable[[str], None] = print
    ) -> ScoreResult:
        if loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(loaded.device)
        last = [0.0]

        def report(p: Progress) -> None:
            # One line every `progress_every_s` seconds, and at the end of a call that logged
            # before; not one per batch. A shorter call logs nothing: its caller reports the
            # model's tokens/s once (each log line is an event written to the run's storage,
            # and a batch of small models would write two per model for nothing).
            done = p.windows_done == p.windows_total
            if p.elapsed_s - last[0] >= self.progress_every_s or (done and last[0] > 0):
                last[0] = p.elapsed_s
                log(f"{loaded.key}: {p}")

        return score_texts(
            loaded.model,
            loaded.tokenizer,
            texts,
            context=loaded.context_length,
            stride=self.stride,
            token_budget=self.token_budget,
            head_chunk_tokens=self.head_chunk_tokens,
            name=loaded.key,
            progress=report,
        )
