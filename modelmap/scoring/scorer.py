"""The scorer: a device, a dtype and the batch settings; it loads models and scores texts.

One model's scores come from one sequence (`Scorer.score_model`): score the corpus texts in
the scorer's dtype; if half precision gives a NaN or infinite log-likelihood
(`ScoringError`), load the model again in float32 and score once more; then score the
held-out twin texts, if any, with the model that gave the corpus scores. A run's models come
in order from `Scorer.in_turn`, the next one loading while the current one is scored where
that pays (`Scorer.loads_ahead`, `modelmap.scoring.prefetch`).
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from modelmap.scoring.engine import (
    Progress,
    ScoreResult,
    ScoringError,
    default_token_budget,
    score_texts,
)
from modelmap.scoring.loading import LoadedModel, load_causal_lm, resolve_device
from modelmap.scoring.prefetch import Prefetched, prefetched

Log = Callable[[str], None]


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set size (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@dataclass(frozen=True)
class ModelFiles:
    """A model ready to load: its folder, the revision it was fetched at (a Hub sha; None for a
    local folder, hashed when loaded), whether its own code may run, and what its source says
    about it (``info``: family, declared base models, the Hub card's fields)."""

    key: str
    folder: str
    revision: str | None = None
    trust_remote_code: bool = False
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelScores:
    """One model's scores: ``loaded`` is the model that gave them (float32 after a retry);
    ``twins`` the held-out twin texts' scores, None when there are none."""

    loaded: LoadedModel
    corpus: ScoreResult
    twins: ScoreResult | None = None


@dataclass(frozen=True)
class Scorer:
    """Where and how models are scored.

    Attributes:
        device: ``auto`` (CUDA if present), ``cpu``, ``cuda``, ``cuda:1``
            (`modelmap.scoring.loading.resolve_device`).
        dtype: ``bfloat16``, ``float32``, ``float16`` or ``auto`` (the checkpoint's).
        token_budget: padded tokens per batch; None: `default_token_budget` of the device.
        head_chunk_tokens: rows of hidden states per output-layer chunk.
        stride: sliding-window stride; None: half the context.
        max_context: cap on the model's context length.
        progress_every_s: seconds between two progress lines of one scoring call.
        prefetch: load the next model while the current one is scored; None: on CUDA only.
    """

    device: str = "auto"
    # Per-text log-likelihoods in bfloat16 differ from float32 by <4e-4 relative on the zoo
    # and 2KL by <0.05%, and scoring is ~1.5-2x faster on CPUs with AVX-512 BF16.
    dtype: str = "bfloat16"
    token_budget: int | None = None
    head_chunk_tokens: int = 4_096
    stride: int | None = None
    max_context: int | None = None
    progress_every_s: float = 10.0
    prefetch: bool | None = None

    def loads_ahead(self) -> int:
        """Models a run loads in advance: 1 with prefetching, else 0 (each in turn)."""
        if self.prefetch is not None:
            return int(self.prefetch)
        return int(resolve_device(self.device).type == "cuda")

    def batch_token_budget(self, device: torch.device) -> int:
        """Padded tokens per batch on `device`."""
        return self.token_budget or default_token_budget(device)

    def load(
        self,
        key: str,
        folder: str,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        dtype: str | None = None,
    ) -> LoadedModel:
        """Load a model folder on this scorer's device, in its dtype unless `dtype` is given."""
        return load_causal_lm(
            key,
            folder,
            revision=revision,
            device=self.device,
            dtype=dtype or self.dtype,
            trust_remote_code=trust_remote_code,
            max_context=self.max_context,
        )

    def load_files(self, files: ModelFiles, dtype: str | None = None) -> LoadedModel:
        return self.load(
            files.key,
            files.folder,
            revision=files.revision,
            trust_remote_code=files.trust_remote_code,
            dtype=dtype,
        )

    def score(self, loaded: LoadedModel, texts: Sequence[str], log: Log = print) -> ScoreResult:
        """Log-likelihood (nats) of each text under `loaded`; raises `ScoringError` when one
        is NaN or infinite."""
        if loaded.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(loaded.device)
        last = [0.0]

        def report(p: Progress) -> None:
            # One line every `progress_every_s` seconds, and at the end of a call that logged
            # before; not one per batch (each log line of a run is an event in its storage).
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

    def score_model(
        self,
        files: ModelFiles,
        loaded: LoadedModel,
        texts: Sequence[str],
        twin_texts: Sequence[str] | None = None,
        log: Log = print,
        warn: Log = print,
    ) -> ModelScores:
        """Score `texts` (and `twin_texts`) under `loaded`, once more in float32 if half
        precision gave a non-finite log-likelihood. Raises `ScoringError` when float32 does
        too, and `ModelLoadError` when the float32 copy cannot be loaded."""
        log(
            f"{loaded.key}: {loaded.n_params:,} parameters, revision {loaded.revision[:12]}, "
            f"{loaded.dtype} on {loaded.device}, context {loaded.context_length}; "
            f"scoring {len(texts)} texts"
        )
        try:
            corpus = self.score(loaded, texts, log=log)
        except ScoringError as exc:
            if loaded.dtype == torch.float32:
                raise
            warn(f"{exc}; retrying once in float32 instead of {loaded.dtype}")
            loaded = self.load(
                files.key,
                files.folder,
                revision=loaded.revision,
                trust_remote_code=files.trust_remote_code,
                dtype="float32",
            )
            try:
                corpus = self.score(loaded, texts, log=log)
            except ScoringError as again:
                raise ScoringError(f"{again} (also after a retry in float32)") from again
        # The twins in a call of their own, so the corpus scores are the same without them.
        twins = None if twin_texts is None else self.score(loaded, twin_texts, log=log)
        return ModelScores(loaded, corpus, twins)

    def in_turn(
        self, keys: Iterable[str], locate: Callable[[str], ModelFiles]
    ) -> Iterator[Prefetched[str, tuple[ModelFiles, LoadedModel]]]:
        """Each key's files (`locate`) and loaded model, in order; a key whose files or model
        cannot be had carries its error (`Prefetched.get` raises it), the others go on."""

        def load(key: str) -> tuple[ModelFiles, LoadedModel]:
            files = locate(key)
            return files, self.load_files(files)

        return prefetched(keys, load, ahead=self.loads_ahead())
