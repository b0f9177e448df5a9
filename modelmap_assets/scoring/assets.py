"""The `likelihood` asset: a model's log-likelihood of every corpus text (one partition per
model; one run may score a batch of models, see `modelmap_assets.scoring.batches`)."""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.neighbours import PlacementError, place
from modelmap.likelihoods import (
    SPLIT_TWIN,
    TEXT_SET_ALL,
    TEXT_SET_BUDGET,
    likelihood_frame,
)
from modelmap.scoring.engine import ScoringError
from modelmap.scoring.loading import LoadedModel, ModelLoadError
from modelmap.scoring.prefetch import Prefetched
from modelmap.scoring.scorer import ModelFiles, ModelScores, peak_memory_mb
from modelmap.selections import read_selection
from modelmap.storage import InvalidModelKey, validate_model_key
from modelmap_assets.corpus.assets import corpus
from modelmap_assets.metadata import placement_metadata
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.batches import BATCH_POLICY, BatchFailures, requested_revisions
from modelmap_assets.scoring.checks import CHECKS, LIKELIHOOD, likelihood_checks
from modelmap_assets.scoring.scored import scorer_settings
from modelmap_assets.tags import REVISION_TAG
from resources.hub import HubResource
from resources.mlflow import MlflowResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource

# Dagster's tag for an asset event's data version (a model's revision and the corpus hash).
DATA_VERSION_TAG = "dagster/data_version"

# Errors that are the model's fault (or its files'): they fail its partition with a clear message.
MODEL_ERRORS = (InvalidModelKey, ModelLoadError, ScoringError, FileNotFoundError)


def model_failure(key: str, exc: Exception) -> dg.Failure:
    """A clear, model-named failure in the UI; other partitions and the map go on."""
    message = str(exc)
    if not message.startswith(f"model {key}"):
        message = f"model {key}: {message}"
    return dg.Failure(description=message)


def requested_revision(context: dg.AssetExecutionContext, key: str) -> str | None:
    """The Hub sha the run must score for `key`, if the run pins one (else main)."""
    pinned = requested_revisions(context.run.tags).get(key)
    if pinned is None and context.run.tags.get("dagster/partition") == key:
        pinned = context.run.tags.get(REVISION_TAG)  # the tag of a single-model run
    return pinned


def model_files(
    context: dg.AssetExecutionContext,
    key: str,
    model_source: ModelSourceResource,
    hub: HubResource,
) -> ModelFiles:
    """Model `key`'s files: a Hub model downloaded at exactly the sha the sensor saw (the
    run's tags), else at main; a local model's folder."""
    validate_model_key(key)
    info = model_source.describe(key)
    folder, sha = info["path"], None
    trust = hub.trusts_remote_code(key)
    if folder is None:
        folder, sha, card = hub.fetch(key, requested_revision(context, key))
        info.update(card)
    return ModelFiles(key, folder, sha, trust, info)


def prefetched_models(
    context: dg.AssetExecutionContext,
    keys: list[str],
    scorer: ScorerResource,
    model_source: ModelSourceResource,
    hub: HubResource,
) -> Iterator[Prefetched[str, tuple[ModelFiles, LoadedModel]]]:
    """The run's models in order, each (its files, the loaded model); on CUDA the next one
    loads while the caller scores the current (`Scorer.in_turn`)."""
    return scorer.scorer().in_turn(keys, lambda key: model_files(context, key, model_source, hub))


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


@dg.multi_asset(
    name="likelihood",
    specs=[
        dg.AssetSpec(
            LIKELIHOOD,
            deps=[corpus],
            partitions_def=models_partitions,
            # Each model's materialization is reported by the step itself (see batches.py).
            skippable=True,
            kinds={"pytorch", "polars"},
            group_name="modelmap",
            description="Sum of token log-probabilities (nats) of each corpus text, per model.",
        )
    ],
    check_specs=[dg.AssetCheckSpec(name, asset=LIKELIHOOD) for name in CHECKS],
    # Check results are reported per model as events too, so their outputs must be optional.
    can_subset=True,
    pool="gpu",
    # Before `benchmark_scores` for the `gpu` slot, in a run and across runs: scores first.
    op_tags={"dagster/priority": "1"},
    backfill_policy=BATCH_POLICY,
)
def likelihood(
    context: dg.AssetExecutionContext,
    config: LikelihoodConfig,
    scorer: ScorerResource,
    storage: StorageResource,
    model_source: ModelSourceResource,
    hub: HubResource,
    mlflow: MlflowResource,
) -> Iterator:
    """Sum of token log-probabilities (nats) of each corpus text under each model of the run
    (one model, or a batch whose next model loads while the current one is scored), or of the
    texts of the text budget only, with `text_set: budget`."""
    keys = list(context.partition_keys)
    corpus_now = read_corpus_or_fail(storage)
    texts, corpus_meta = corpus_now
    texts, scoring_meta = _texts_to_score(
        storage, config.text_set, texts, corpus_meta["corpus_hash"]
    )
    # What a later run compares to skip the model (`modelmap_assets.scoring.scored`).
    scoring_meta |= scorer_settings(scorer)
    twins = storage.read_twins(corpus_meta["corpus_hash"])
    corpus_texts = texts["text"].to_list()
    # Held-out twins (leakage screen only) are scored too, never part of L.
    twin_texts = None if twins is None else twins[0]["text"].to_list()
    failures = BatchFailures(keys)
    for job in prefetched_models(context, keys, scorer, model_source, hub):
        key, started_at = job.item, time.time() - job.wait_s
        try:
            files, loaded = job.get()
            scores = scorer.scorer().score_model(
                files, loaded, corpus_texts, twin_texts, context.log.info, context.log.warning
            )
        except MODEL_ERRORS as exc:
            failures.add(key, model_failure(key, exc), context.log)
            continue
        frames, meta = likelihood_file(files, scores, texts, twins, corpus_meta, scoring_meta)
        yield from record_likelihood(
            context,
            storage,
            mlflow,
            meta,
            frames,
            None if config.text_set == TEXT_SET_ALL else texts["text_id"].to_list(),
            corpus_now,
            started_at,
        )
    failures.raise_if_any()


def likelihood_file(
    files: ModelFiles,
    scores: ModelScores,
    texts: pl.DataFrame,
    twins: tuple[pl.DataFrame, dict] | None,
    corpus_meta: dict,
    scoring_meta: dict,
) -> tuple[list[pl.DataFrame], dict]:
    """One model's likelihood file: its frames (corpus rows, then twin rows) and metadata."""
    loaded, result = scores.loaded, scores.corpus
    frames = [likelihood_frame(texts["text_id"], result.loglik_nats, result.n_tokens)]
    twin_meta = {}
    if scores.twins is not None:
        frames.append(
            likelihood_frame(
                twins[0]["text_id"], scores.twins.loglik_nats, scores.twins.n_tokens, SPLIT_TWIN
            )
        )
        twin_meta = {"twins_hash": twins[1]["twins_hash"], "twin_wall_s": scores.twins.wall_s}
    meta = {
        "key": files.key,
        "family": files.info.get("family"),
        "base_models": _base_models(files.info),
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
        **scoring_meta,
    }
    return frames, meta


def record_likelihood(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    mlflow: MlflowResource,
    meta: dict,
    frames: list[pl.DataFrame],
    expected_ids: list[int] | None,
    corpus_now: tuple[pl.DataFrame, dict],
    started_at: float,
) -> Iterator:
    """Write one model's file and log it to MLflow; its materialization and checks as events
    of its own partition."""
    key, df = meta["key"], frames[0]
    path = storage.write_likelihood(key, pl.concat(frames), meta)
    context.log.info(
        f"{key}: {meta['input_tokens']:,} tokens in {meta['wall_s']:.1f} s "
        f"({meta['tokens_per_s']:,.0f} tokens/s), mean log-likelihood "
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
    # Neighbours and map position now, without waiting for the next full refresh.
    placed = placement_of(storage, key, context.log)
    version = f"{meta['revision'][:16]}-{meta['corpus_hash'][:16]}" + (
        f"-budget-{meta['selection_hash'][:12]}" if "selection_hash" in meta else ""
    )
    yield dg.AssetMaterialization(
        asset_key=LIKELIHOOD,
        partition=key,
        metadata={
            **{k: v for k, v in meta.items() if k not in ("key",)},
            **placed,
            "mlflow_run_id": run_id or "",
            "n_texts": df.height,
            "path": dg.MetadataValue.path(str(path)),
        },
        tags={DATA_VERSION_TAG: version},
    )
    yield from likelihood_checks(storage, key, meta["corpus_hash"], expected_ids, corpus_now)


def placement_of(storage: StorageResource, key: str, log) -> dict:
    """The placement metadata of a just-scored model (`placement_metadata`); {} (logged) when
    it cannot be placed. Never fails the scoring run: the scores are written and the map will
    include the model at its next refresh anyway."""
    try:
        placed = place(storage.root, key)
    except PlacementError as exc:
        log.info(f"{key}: not placed yet: {exc}")
        return {}
    except Exception as exc:  # a placement bug must not lose a scored model
        log.warning(f"{key}: placement failed ({type(exc).__name__}: {exc})")
        return {}
    meta = placement_metadata(placed)
    where = "" if placed.x is None else f", map position ({placed.x:.2f}, {placed.y:.2f})"
    log.info(
        f"{key}: placed among {placed.among} models in {placed.seconds:.2f} s; nearest "
        f"{meta.get('nearest_model', '-')}{where}"
    )
    return meta
