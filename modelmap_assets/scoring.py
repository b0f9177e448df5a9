"""The `likelihood` asset: one model's log-likelihood of every corpus text (one partition)."""

import time

import dagster as dg
import numpy as np
import polars as pl
import torch
from pydantic import Field

from modelmap.likelihoods import (
    SPLIT_TWIN,
    TEXT_SET_ALL,
    TEXT_SET_BUDGET,
    corpus_rows,
    likelihood_frame,
)
from modelmap.scoring.engine import ScoreResult, ScoringError
from modelmap.scoring.loading import LoadedModel, ModelLoadError
from modelmap.selections import read_selection
from modelmap.storage import InvalidModelKey, validate_model_key
from modelmap_assets.corpus import corpus
from modelmap_assets.partitions import models_partitions
from modelmap_assets.tags import REVISION_TAG
from resources.hub import HubResource
from resources.mlflow import MlflowResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource, peak_memory_mb
from resources.storage import StorageResource

# Errors that are the model's fault (or its files'): they fail its partition with a clear message.
MODEL_ERRORS = (InvalidModelKey, ModelLoadError, ScoringError, FileNotFoundError)


def model_failure(key: str, exc: Exception) -> dg.Failure:
    """A clear, model-named failure in the UI; other partitions and the map go on."""
    message = str(exc)
    if not message.startswith(f"model {key}"):
        message = f"model {key}: {message}"
    return dg.Failure(description=message)


def load_partition_model(
    context: dg.AssetExecutionContext,
    scorer: ScorerResource,
    model_source: ModelSourceResource,
    hub: HubResource,
) -> tuple[LoadedModel, dict, str, bool]:
    """The partition's model, loaded: (model, its description, its folder, trust_remote_code).

    A Hub model is downloaded at exactly the sha the sensor saw (the run's revision tag), else
    at main; a local model comes from its folder.
    """
    key = context.partition_key
    validate_model_key(key)
    info = model_source.describe(key)
    path, sha = info["path"], None
    trust = hub.trusts_remote_code(key)
    if path is None:
        path, sha, card = hub.fetch(key, context.run.tags.get(REVISION_TAG))
        info.update(card)
    return scorer.load(key, path, revision=sha, trust_remote_code=trust), info, path, trust


def read_corpus_or_fail(storage: StorageResource) -> tuple[pl.DataFrame, dict]:
    """The corpus; a missing one fails the step as the corpus's fault, not the model's."""
    try:
        return storage.read_corpus()
    except FileNotFoundError as exc:
        raise dg.Failure(description=str(exc)) from exc


def _base_models(info: dict) -> list[str]:
    """Declared base models: the Hub card's (a list) or a local registry's `base_model`."""
    if info.get("base_models") is not None:
        return list(info["base_models"])
    return [info["base_model"]] if info.get("base_model") else []


CHECKS = ("text_ids_match_corpus", "all_finite", "corpus_hash_current")


class LikelihoodConfig(dg.Config):
    text_set: str = Field(
        default=TEXT_SET_ALL,
        description="`all`: score every corpus text (the model enters Q and the map's "
        "embedding); `budget`: score only the texts of the current `text_selection` (the "
        "model is placed on the map from its partial row, with weighted distances)",
    )


def _texts_to_score(
    storage: StorageResource, text_set: str, texts: pl.DataFrame, corpus_hash: str
) -> tuple[pl.DataFrame, dict]:
    """The corpus rows to score and the file metadata that says which (text_set, selection)."""
    if text_set == TEXT_SET_ALL:
        return texts, {"text_set": TEXT_SET_ALL}
    if text_set != TEXT_SET_BUDGET:
        raise dg.Failure(description=f"text_set must be 'all' or 'budget', got {text_set!r}")
    selection, meta = read_selection(storage.root)
    if meta.get("corpus_hash") != corpus_hash:
        raise dg.Failure(
            description="the current text selection was drawn on another corpus "
            f"({str(meta.get('corpus_hash'))[:12]}): materialize `text_selection` again"
        )
    chosen = texts.filter(pl.col("text_id").is_in(selection["text_id"].implode()))
    return chosen, {
        "text_set": TEXT_SET_BUDGET,
        "selection_hash": meta["selection_hash"],
        "n_selected": chosen.height,
    }


def likelihood_checks(
    storage: StorageResource, key: str, scored_on: str, expected_ids: list[int] | None = None
) -> list:
    """Checks of the written file against the corpus as it is now (read back from disk);
    a budget file is checked against its selection's text ids (`expected_ids`)."""
    corpus_df, corpus_meta = storage.read_corpus()
    written = corpus_rows(storage.likelihood_path(key))
    wanted = corpus_df["text_id"].to_list() if expected_ids is None else expected_ids
    same_ids = written["text_id"].to_list() == wanted
    n_bad = int((~np.isfinite(written["loglik"].to_numpy())).sum())
    current = corpus_meta["corpus_hash"]
    return [
        dg.AssetCheckResult(
            check_name="text_ids_match_corpus",
            passed=same_ids,
            metadata={"n_rows": written.height, "n_expected": len(wanted)},
        ),
        dg.AssetCheckResult(check_name="all_finite", passed=n_bad == 0, metadata={"n_bad": n_bad}),
        dg.AssetCheckResult(
            check_name="corpus_hash_current",
            passed=scored_on == current,
            metadata={"scored_on": scored_on, "current": current},
        ),
    ]


@dg.asset(
    partitions_def=models_partitions,
    deps=[corpus],
    pool="gpu",
    kinds={"pytorch", "polars"},
    group_name="modelmap",
    check_specs=[dg.AssetCheckSpec(name, asset="likelihood") for name in CHECKS],
)
def likelihood(
    context: dg.AssetExecutionContext,
    config: LikelihoodConfig,
    scorer: ScorerResource,
    storage: StorageResource,
    model_source: ModelSourceResource,
    hub: HubResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Sum of token log-probabilities (nats) of each corpus text under one model (or of the
    texts of the text budget only, with `text_set: budget`)."""
    key, started_at = context.partition_key, time.time()
    texts, corpus_meta = read_corpus_or_fail(storage)
    texts, text_set_meta = _texts_to_score(
        storage, config.text_set, texts, corpus_meta["corpus_hash"]
    )
    try:
        loaded, info, path, trust = load_partition_model(context, scorer, model_source, hub)
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
        # Held-out twins (leakage screen only): a separate call, so the corpus rows are the
        # same as without them.
        twins = storage.read_twins(corpus_meta["corpus_hash"])
        twin_result = None
        if twins is not None:
            twin_result = scorer.score(loaded, twins[0]["text"].to_list(), log=context.log.info)
    except MODEL_ERRORS as exc:
        raise model_failure(key, exc) from exc

    frames = [likelihood_frame(texts["text_id"], result.loglik_nats, result.n_tokens)]
    twin_meta = {}
    if twin_result is not None:
        frames.append(
            likelihood_frame(
                twins[0]["text_id"], twin_result.loglik_nats, twin_result.n_tokens, SPLIT_TWIN
            )
        )
        twin_meta = {"twins_hash": twins[1]["twins_hash"], "twin_wall_s": twin_result.wall_s}
    meta = {
        "key": key,
        "family": info.get("family"),
        "base_models": _base_models(info),
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
        **twin_meta,
        **text_set_meta,
    }
    df = frames[0]
    path = storage.write_likelihood(key, pl.concat(frames), meta)
    context.log.info(
        f"{key}: {result.input_tokens:,} tokens in {result.wall_s:.1f} s "
        f"({result.tokens_per_s:,.0f} tokens/s), mean log-likelihood "
        f"{meta['mean_loglik_nats']:.2f} nats"
    )
    metrics = ("tokens_per_s", "wall_s", "peak_mem_mb", "mean_loglik_nats", "input_tokens")
    run_id = mlflow.log_run(
        f"likelihood {key}",
        params={k: v for k, v in meta.items() if k not in metrics} | {"n_texts": df.height},
        metrics={k: meta[k] for k in metrics},
        tags={"modelmap.asset": "likelihood", "modelmap.model": key},
        context=context,
        started_at=started_at,
    )
    return dg.MaterializeResult(
        check_results=likelihood_checks(
            storage,
            key,
            meta["corpus_hash"],
            None if config.text_set == TEXT_SET_ALL else texts["text_id"].to_list(),
        ),
        metadata={
            **{k: v for k, v in meta.items() if k not in ("key",)},
            "mlflow_run_id": run_id or "",
            "n_texts": df.height,
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(
            f"{loaded.revision[:16]}-{corpus_meta['corpus_hash'][:16]}"
            + (f"-budget-{meta['selection_hash'][:12]}" if "selection_hash" in meta else "")
        ),
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
