"""The scorer resource: the settings of `modelmap.scoring.scorer.Scorer`, bound from the
environment (`MODELMAP_DEVICE`, `MODELMAP_DTYPE`, `MODELMAP_TOKEN_BUDGET`)."""

import dataclasses
from collections.abc import Callable, Sequence

import dagster as dg
from pydantic import Field

from modelmap.scoring.engine import ScoreResult
from modelmap.scoring.loading import LoadedModel
from modelmap.scoring.scorer import Scorer


class ScorerResource(dg.ConfigurableResource):
    """Scoring settings: device (auto/cpu/cuda), dtype, batch token budget, windows."""

    device: str = Field(
        default=Scorer.device, description="`auto` (CUDA if present), `cpu`, `cuda`, `cuda:1`"
    )
    # One default for every way of running (make, the CLI, the webserver, tests); a model that
    # scores NaN/inf in bfloat16 is retried in float32 (`Scorer.score_model`).
    dtype: str = Field(
        default=Scorer.dtype,
        description="weights and activations: `bfloat16`, `float32` (CPUs without bf16 "
        "support), `float16`, `auto` (the checkpoint's)",
    )
    token_budget: int | None = Field(
        default=Scorer.token_budget,
        description="padded tokens per scoring batch; none: 2,048 on CPU, 16,384 on GPU",
    )
    head_chunk_tokens: int = Scorer.head_chunk_tokens
    stride: int | None = Scorer.stride  # sliding-window stride; default half the context
    max_context: int | None = Scorer.max_context  # cap on the model's context length
    progress_every_s: float = Scorer.progress_every_s
    prefetch: bool | None = Field(
        default=Scorer.prefetch,
        description="load a batch's next model while the current one scores; none: on CUDA "
        "only (on a CPU the load competes with scoring for the cores: `modelmap.scoring."
        "prefetch`)",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Import the model-loading libraries when the run starts, not inside the scoring step:
        a run that waits for the `gpu` slot pays them while the batch before it scores."""
        import transformers

        transformers.AutoModelForCausalLM, transformers.AutoTokenizer  # noqa: B018

    def scorer(self) -> Scorer:
        """The scorer these settings describe."""
        return Scorer(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Scorer)})

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
        return self.scorer().load(
            key, path, revision=revision, trust_remote_code=trust_remote_code, dtype=dtype
        )

    def score(
        self, loaded: LoadedModel, texts: Sequence[str], log: Callable[[str], None] = print
    ) -> ScoreResult:
        """Log-likelihood (nats) of each text under `loaded` (`Scorer.score`)."""
        return self.scorer().score(loaded, texts, log=log)
