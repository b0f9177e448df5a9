"""The `likelihood` asset: one model's log-likelihood of every corpus text (one partition)."""

import dagster as dg
import numpy as np
import polars as pl
import torch

from modelmap.loading import LoadedModel, ModelLoadError
from modelmap.scoring import ScoreResult, ScoringError
from modelmap.storage import InvalidModelKey, validate_model_key
from modelmap_assets.corpus import corpus
from modelmap_assets.partitions import models_partitions
from modelmap_assets.tags import REVISION_TAG
from resources.hub import HubResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource, peak_memory_mb
from resources.storage import StorageResource


@dg.asset(
    partitions_def=models_partitions,
    deps=[corpus],
    pool="gpu",
    kinds={"pytorch", "polars"},
    group_name="modelmap",
)
def likelihood(
    context: dg.AssetExecutionContext,
    scorer: ScorerResource,
    storage: StorageResource,
    model_source: ModelSourceResource,
    hub: HubResource,
) -> dg.MaterializeResult:
    """Sum of token log-probabilities (nats) of each corpus text under one model."""
    key = context.partition_key
    try:
        validate_model_key(key)
        info = model_source.describe(key)
        texts, corpus_meta = storage.read_corpus()
        path, sha = info["path"], None
        trust = hub.trusts_remote_code(key)
        if path is None:
            # A Hub model: download exactly the sha the sensor saw (its run tag), else main.
            path, sha, info["family"] = hub.fetch(key, context.run.tags.get(REVISION_TAG))
        loaded = scorer.load(key, path, revision=sha, trust_remote_code=trust)
        context.log.info(
            f"{key}: {loaded.n_params:,} parameters, revision {loaded.revision[:12]}, "
            f"{loaded.dtype} on {loaded.device}, context {loaded.context_length}; "
            f"scoring {texts.height} texts"
        )
        try:
            result = scorer.score(loaded, texts["text"].to_list(), log=context.log.info)
        except ScoringError as exc:
            if loaded.dtype == torch.float32:
                raise
            loaded, result = _retry_in_float32(context, scorer, loaded, path, trust, texts, exc)
    except (InvalidModelKey, ModelLoadError, ScoringError, FileNotFoundError) as exc:
        # A clear, model-named failure in the UI; other partitions and the map go on.
        message = str(exc)
        if not message.startswith(f"model {key}"):
            message = f"model {key}: {message}"
        raise dg.Failure(description=message) from exc

    df = pl.DataFrame(
        {
            "text_id": texts["text_id"],
            "loglik": result.loglik_nats,
            "n_tokens": result.n_tokens,
        }
    )
    meta = {
        "key": key,
        "family": info.get("family"),
        "revision": loaded.revision,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "n_params": loaded.n_params,
        "context_length": loaded.context_length,
        "tokens_per_s": result.tokens_per_s,
        "wall_s": result.wall_s,
        "peak_mem_mb": peak_memory_mb(loaded.device),
        "corpus_hash": corpus_meta["corpus_hash"],
        "mean_loglik_nats": float(np.mean(result.loglik_nats)),
        "input_tokens": result.input_tokens,
    }
    path = storage.write_likelihood(key, df, meta)
    context.log.info(
        f"{key}: {result.input_tokens:,} tokens in {result.wall_s:.1f} s "
        f"({result.tokens_per_s:,.0f} tokens/s), mean log-likelihood "
        f"{meta['mean_loglik_nats']:.2f} nats"
    )
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in meta.items() if k not in ("key",)},
            "n_texts": df.height,
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(f"{loaded.revision[:16]}-{corpus_meta['corpus_hash'][:16]}"),
    )


def _retry_in_float32(
    context: dg.AssetExecutionContext,
    scorer: ScorerResource,
    loaded: LoadedModel,
    path: str,
    trust: bool,
    texts: pl.DataFrame,
    error: ScoringError,
) -> tuple[LoadedModel, ScoreResult]:
    """Score once more in float32 (half precision can overflow to inf/NaN)."""
    context.log.warning(f"{error}; retrying once in float32 instead of {loaded.dtype}")
    loaded = scorer.load(
        loaded.key, path, revision=loaded.revision, trust_remote_code=trust, dtype="float32"
    )
    try:
        result = scorer.score(loaded, texts["text"].to_list(), log=context.log.info)
    except ScoringError as again:
        raise ScoringError(f"{again} (also after a retry in float32)") from again
    return loaded, result
