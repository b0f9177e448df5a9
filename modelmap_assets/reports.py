"""Benchmark assets: `benchmark_scores` (one model), `regression_report`, `leakage_report`."""

import time
from collections.abc import Iterator

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.placement import Centring
from modelmap.reports import leakage, leakage_evidence, lineage, regression
from modelmap.reports.benchmarks import (
    SCORE_COLUMNS,
    SUITE_TASKS,
    BenchmarkFileError,
    ScoresFile,
    empty_scores,
    match_models,
    primary_mean,
    targets,
)
from modelmap.reports.predictor import ScorePredictor
from modelmap.reports.tasks import TaskError, evaluate_tasks, tasks_hash
from modelmap.scoring.engine import default_token_budget
from modelmap.storage import write_parquet, write_text
from modelmap_assets.geometry.assets import (
    CENTRING_FILE,
    TWINS_FILE,
    coordinates,
    read_coordinates,
    read_graph,
    refresh,
)
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.partitions import models_partitions
from modelmap_assets.runs import others_in_progress
from modelmap_assets.scoring.assets import MODEL_ERRORS, model_failure, prefetched_models
from modelmap_assets.scoring.batches import BATCH_POLICY, BatchFailures
from resources.benchmarks import BenchmarkResource
from resources.hub import HubResource
from resources.mlflow import MlflowResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource


@dg.multi_asset(
    name="benchmark_scores",
    specs=[
        dg.AssetSpec(
            "benchmark_scores",
            partitions_def=models_partitions,
            # Each model's materialization is reported by the step itself (see batches.py).
            skippable=True,
            kinds={"pytorch", "polars"},
            group_name="modelmap",
            description="A model's benchmark scores (%): published, or measured on the tasks.",
        )
    ],
    pool="gpu",
    backfill_policy=BATCH_POLICY,
)
def benchmark_scores(
    context: dg.AssetExecutionContext,
    benchmarks: BenchmarkResource,
    scorer: ScorerResource,
    storage: StorageResource,
    model_source: ModelSourceResource,
    hub: HubResource,
    mlflow: MlflowResource,
) -> Iterator[dg.AssetMaterialization]:
    """Each model's benchmark scores (%): published ones from the scores file, and for a model
    the file does not list, its accuracy on the multiple-choice tasks, measured here (the next
    model of a batch loads while the current one is measured)."""
    keys = list(context.partition_keys)
    failures = BatchFailures(keys)
    try:
        file = benchmarks.scores_file_read()
    except BenchmarkFileError as exc:
        for key in keys:
            failures.add(key, dg.Failure(description=f"model {key}: {exc}"), context.log)
        failures.raise_if_any()
    every = file.scores if file else empty_scores()
    listed = {key: every.filter(pl.col("model") == key) for key in keys}
    measure = [
        k for k in keys if benchmarks.should_measure(listed_in_file=not listed[k].is_empty())
    ]
    loads = prefetched_models(context, measure, scorer, model_source, hub) if measure else None
    tasks = None
    for key in keys:
        started_at = time.time()
        parts, meta = [listed[key]], {"key": key, "n_published": listed[key].height}
        if file is not None:
            meta.update(_file_match_metadata(context, file, key))
        if key in measure:
            job = next(loads)
            started_at -= job.wait_s
            try:
                tasks = tasks or benchmarks.tasks()
                loaded, *_ = job.get()
                results = evaluate_tasks(
                    loaded.model,
                    loaded.tokenizer,
                    tasks,
                    context=loaded.context_length,
                    token_budget=scorer.token_budget or default_token_budget(loaded.device),
                    log=lambda s, key=key: context.log.info(f"{key}: {s}"),
                )
            except (*MODEL_ERRORS, TaskError) as exc:
                failures.add(key, model_failure(key, exc), context.log)
                continue
            finally:
                del job
            parts.append(
                pl.DataFrame(
                    [
                        (key, r.task, SUITE_TASKS, r.accuracy, "measured", r.n_items)
                        for r in results
                    ],
                    schema=listed[key].schema,
                    orient="row",
                )
            )
            tokens, seconds = sum(r.n_tokens for r in results), sum(r.seconds for r in results)
            meta.update(
                tasks_hash=tasks_hash(tasks),
                revision=loaded.revision,
                dtype=str(loaded.dtype).removeprefix("torch."),
                tokens_per_s=tokens / max(seconds, 1e-9),
                wall_s=seconds,
            )
            del loaded
        yield record_scores(context, storage, mlflow, key, pl.concat(parts), meta, started_at)
    failures.raise_if_any()


def record_scores(
    context: dg.AssetExecutionContext,
    storage: StorageResource,
    mlflow: MlflowResource,
    key: str,
    scores: pl.DataFrame,
    meta: dict,
    started_at: float,
) -> dg.AssetMaterialization:
    """Write model `key`'s scores and log them to MLflow; its materialization event."""
    scores = scores.select(SCORE_COLUMNS)
    path = write_parquet(scores, storage.benchmark_path(key), meta)
    values = {f"score/{b}": s for b, s in zip(scores["benchmark"], scores["score"], strict=True)}
    mlflow.log_run(
        f"benchmark_scores {key}",
        params={k: v for k, v in meta.items() if k not in ("tokens_per_s", "wall_s")},
        metrics={**values, **{k: meta[k] for k in ("tokens_per_s", "wall_s") if k in meta}},
        tags={"modelmap.asset": "benchmark_scores", "modelmap.model": key},
        context=context,
        started_at=started_at,
    )
    return dg.AssetMaterialization(
        asset_key="benchmark_scores",
        partition=key,
        metadata={
            **{k: v for k, v in meta.items() if k != "key"},
            "scores": dg.MetadataValue.md(md_table(scores.drop("model"))),
            "path": dg.MetadataValue.path(str(path)),
        },
    )


def _all_scores(storage: StorageResource, keys: list[str]) -> pl.DataFrame:
    """Every model's benchmark scores in one table: one polars query over all the files (it
    reads them in parallel: 0.8 s at K = 10,000, against 20 s for a query per file), or one
    file at a time when their schemas differ."""
    paths = [p for p in storage.model_files("benchmark_scores", keys).values() if p.exists()]
    if not paths:
        return empty_scores()
    try:
        return pl.scan_parquet(paths).select(SCORE_COLUMNS).collect()
    except pl.exceptions.PolarsError:
        frames = [pl.read_parquet(p).select(SCORE_COLUMNS) for p in paths]
        return pl.concat(frames, how="vertical_relaxed")


def _file_match_metadata(context: dg.AssetExecutionContext, file: ScoresFile, key: str) -> dict:
    """Say which of the file's ids match no registered model, and which of them look like
    this model (case, spaces, a missing organisation), so a typo is never silent."""
    registered = context.instance.get_dynamic_partitions(models_partitions.name)
    match = match_models(file.models, registered)
    mine = sorted(m for m, k in match.near_misses.items() if k == key)
    if mine:
        context.log.warning(
            f"{key}: the scores file has no row for {key!r} but has {mine} (ids are matched "
            "exactly: fix the file to use its scores)"
        )
    if file.ignored_columns:
        context.log.info(
            f"{key}: scores file columns without numbers, ignored: {file.ignored_columns}"
        )
    return {
        "file_models_unregistered": len(match.unmatched),
        "file_near_misses": ", ".join(f"{m!r} -> {k}" for m, k in match.near_misses.items()),
        "file_ignored_columns": ", ".join(file.ignored_columns),
    }


#: Flagged models logged one line each, at most; the rest are counted (each line is an event
#: written to the instance's storage: thousands of them at K = 10,000 took minutes).
MAX_LOGGED_FINDINGS = 20


def log_some(log, lines: list[str], where: str) -> None:
    """Warn with the first `MAX_LOGGED_FINDINGS` lines and say where the others are."""
    for line in lines[:MAX_LOGGED_FINDINGS]:
        log.warning(line)
    if len(lines) > MAX_LOGGED_FINDINGS:
        log.warning(f"... and {len(lines) - MAX_LOGGED_FINDINGS} more flagged: see {where}")


_deps = [coordinates, dg.AssetDep(benchmark_scores, partition_mapping=dg.AllPartitionMapping())]

# The reports read Q from `coordinates` as well as the scores. New scores usually come with new
# log-likelihoods, so wait while the map's own inputs are still in progress (a run or a
# backfill) and while no map exists and none is requested in this tick: a report never reads
# a missing Q or one about to be replaced, and it refreshes in the same run as the map.
_coordinates_pending = dg.AutomationCondition.any_deps_match(
    (dg.AutomationCondition.missing() & ~dg.AutomationCondition.will_be_requested())
    | dg.AutomationCondition.any_deps_in_progress()
).allow(dg.AssetSelection.assets(coordinates))
refresh_after_map = (refresh & ~_coordinates_pending).with_label("refresh after the map")


@dg.asset(
    deps=_deps, automation_condition=refresh_after_map, kinds={"sklearn"}, group_name="modelmap"
)
def regression_report(
    context: dg.AssetExecutionContext, storage: StorageResource, mlflow: MlflowResource
) -> dg.MaterializeResult:
    """Ridge regression from Q to each benchmark and to each suite's mean (the paper's
    RidgeCV, 5-fold CV and CV grouped by family), against the mean-log-likelihood baseline;
    predicted scores for models without one; the fitted predictor in the MLflow registry."""
    index, Q, info = read_coordinates(storage)
    keys, families = index["key"].to_list(), index["family"].to_list()
    target_map = targets(_all_scores(storage, keys), keys)
    target_map = {k: y for k, y in target_map.items() if np.isfinite(y).sum() >= 4}
    if not target_map:
        context.log.warning("no benchmark has scores for 4 models or more yet: nothing to fit")
        return dg.MaterializeResult(metadata={"K": len(keys), "targets": 0})
    # Q in its singular basis once, for every RidgeCV fit (exact up to 512 models or texts,
    # the top 512 components above: see `modelmap.reports.regression`).
    reduction = regression.reduce_rows(Q)
    report = regression.evaluate(
        Q, index["mean_loglik_nats"].to_numpy(), target_map, families, keys, reduction=reduction
    )
    fitted = regression.fit(Q, target_map, reduction=reduction)
    predicted = regression.predict_missing(Q, target_map, fitted, keys)

    out = storage.new_version_dir("regression_report", others_in_progress(context))
    meta = {"corpus_hash": info["corpus_hash"], "K": len(keys)}
    write_parquet(report.table, out / "table.parquet", meta)
    write_parquet(report.predictions, out / "predictions.parquet", meta)
    write_parquet(predicted, out / "predicted_missing.parquet", meta)
    regression.scatter_png(report.predictions, report.table, out / "scatter.png")
    folder = storage.current_version_dir("coordinates")
    # The map's own fitted centring (clip value, column means): the predictor centres a new
    # model's row exactly as the map and the placement do.
    centring = Centring.load(folder / CENTRING_FILE)
    predictor = ScorePredictor(
        text_ids=pl.read_parquet(storage.corpus_path, columns=["text_id"])["text_id"].to_list(),
        clip_value=centring.clip_value,
        col_means=centring.col_means,
        targets=fitted.targets,
        coef=fitted.coef,
        intercept=fitted.intercept,
        corpus_hash=info["corpus_hash"],
    )
    predictor.save(out / "predictor.npz")
    final = storage.publish_version("regression_report", out)
    scatter = final / "scatter.png"

    table = report.table
    q_kfold = table.filter((pl.col("features") == "Q") & (pl.col("cv") == "kfold"))
    metrics = {
        f"{m}/{r['target']}/{r['features']}/{r['cv']}": r[m]
        for r in table.iter_rows(named=True)
        for m in ("pearson_r", "spearman_rho", "rmse")
    }
    run_id, version = mlflow.register_predictor(
        predictor,
        run_name="regression_report",
        params={"K": len(keys), "N": Q.shape[1], "corpus_hash": info["corpus_hash"]},
        metrics=metrics,
        tags={"modelmap.asset": "regression_report"},
        artifacts={
            "report": [
                final / "scatter.png",
                final / "table.parquet",
                final / "predictions.parquet",
                final / "predicted_missing.parquet",
            ]
        },
        context=context,
    ) or (None, None)
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "targets": len(target_map),
            "table": dg.MetadataValue.md(md_table(table)),
            "pearson_r_kfold": dg.MetadataValue.json(
                dict(zip(q_kfold["target"], q_kfold["pearson_r"], strict=True))
            ),
            "skipped": dg.MetadataValue.json(report.skipped),
            "predicted_missing": predicted.height,
            "scatter": dg.MetadataValue.md(png_md(scatter, "predicted against measured")),
            "mlflow_run_id": run_id or "",
            "registered_model_version": version or "",
            "path": dg.MetadataValue.path(str(final)),
        }
    )


class LeakageConfig(dg.Config):
    z_threshold: float = Field(
        default=leakage.DEFAULT_Z_THRESHOLD, description="robust z above which a statistic flags"
    )
    support_z: float = Field(
        default=leakage_evidence.DEFAULT_SUPPORT_Z,
        description="twin-gap z the gain against relatives needs to count (with twins)",
    )
    max_relatives: int = Field(
        default=leakage_evidence.DEFAULT_MAX_RELATIVES,
        description="lineage members (nearest first) in a model's reference",
    )
    map_relatives: int = Field(
        default=leakage_evidence.DEFAULT_MAP_RELATIVES,
        description="nearest models on the map used as reference without a confirmed lineage",
    )


def _twin_matrix(context, storage: StorageResource, info: dict):
    """(K x M twin log-likelihoods with NaN rows for models scored without these twins,
    twin bytes, twin domains) as `coordinates` gathered them next to L, or (None, None, None)
    without twins."""
    twins = storage.read_twins(info["corpus_hash"])
    if twins is None:
        return None, None, None
    df, meta = twins
    path = storage.current_version_dir("coordinates") / TWINS_FILE
    if info.get("twins_hash") != meta["twins_hash"] or not path.exists():
        context.log.warning(
            "the twin texts changed after `coordinates` was built: the twin statistic waits "
            "for its next refresh"
        )
        return None, None, None
    T = np.load(path, mmap_mode="r")
    return np.asarray(T, dtype=np.float64), df["n_bytes"].to_numpy(), df["domain"].to_numpy()


@dg.asset(
    deps=_deps, automation_condition=refresh_after_map, kinds={"scipy"}, group_name="modelmap"
)
def leakage_report(
    context: dg.AssetExecutionContext,
    config: LeakageConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Models that probably saw the corpus texts: the paper's rule (corpus likelihood far above
    what benchmark scores explain) combined with the gain against their relatives and the gain
    on the corpus over unseen twin texts (rules in `modelmap.reports.leakage_evidence`)."""
    index, Q, info = read_coordinates(storage)
    keys, families = index["key"].to_list(), index["family"].to_list()
    out = storage.asset_dir("leakage_report")
    meta = {"corpus_hash": info["corpus_hash"]}
    artifacts = []

    # 1. The paper's rule, when enough models have benchmark scores.
    target_map = targets(_all_scores(storage, keys), keys)
    name = primary_mean(target_map) or max(
        target_map, key=lambda k: np.isfinite(target_map[k]).sum(), default=None
    )
    paper = None
    if name is None or np.isfinite(target_map[name]).sum() < leakage.MIN_MODELS:
        context.log.warning("too few models with benchmark scores for the paper's rule")
    else:
        meta["benchmark"] = name
        per_byte = index["mean_loglik_nats"].to_numpy() / info["mean_bytes"]
        paper = leakage.screen(keys, per_byte, target_map[name], z_threshold=config.z_threshold)
        write_parquet(paper.table, out / "leakage.parquet", meta)
        artifacts += [
            leakage.leakage_png(paper, out / "leakage.png", families=families),
            out / "leakage.parquet",
        ]

    # 2. Evidence against relatives (confirmed lineage, else the map) and unseen twins.
    corpus_df, _ = storage.read_corpus()
    folder = storage.current_version_dir("coordinates")
    L = np.load(folder / "L_raw.npy", mmap_mode="r")
    graph = read_graph(storage)
    lineage_check = lineage.check_lineage(
        Q, keys, declared_bases(index), info["mean_bytes"], graph=graph
    )
    links = [
        (r["model"], r["declared_base"])
        for r in lineage_check.pairs.filter(pl.col("within_band")).iter_rows(named=True)
    ]
    relatives, sources = leakage_evidence.choose_relatives(
        Q,
        keys,
        links,
        max_relatives=config.max_relatives,
        map_relatives=config.map_relatives,
        graph=graph,
    )
    T, twin_bytes, twin_domains = _twin_matrix(context, storage, info)
    evidence = leakage_evidence.gather_evidence(
        keys,
        np.asarray(L, dtype=np.float64),
        corpus_df["n_bytes"].to_numpy(),
        corpus_df["domain"].to_numpy(),
        relatives,
        twin_loglik=T,
        twin_bytes=twin_bytes,
        twin_domains=twin_domains,
        relatives_source=sources,
    )
    table = leakage_evidence.combine(
        paper.table if paper is not None else None,
        evidence,
        z_threshold=config.z_threshold,
        support_z=config.support_z,
    )
    flagged = table.filter(pl.col("flagged"))["model"].to_list()
    n_twins = 0 if T is None else T.shape[1]
    meta.update(n_twins=n_twins, z_threshold=config.z_threshold, support_z=config.support_z)
    write_parquet(table, out / "screen.parquet", meta)
    domain_gain = pl.DataFrame(
        {"model": keys, **{d: evidence.domain_gain[:, j] for j, d in enumerate(evidence.domains)}}
    )
    write_parquet(domain_gain, out / "domain_gain.parquet", meta)
    stats_png = leakage_evidence.statistics_png(
        table, out / "statistics.png", z_threshold=config.z_threshold
    )
    artifacts += [stats_png, out / "screen.parquet", out / "domain_gain.parquet"]
    log_some(context.log, table.filter(pl.col("flagged"))["evidence"].to_list(), "screen.parquet")
    mlflow.log_run(
        "leakage_report",
        params={"K": len(keys), **meta},
        metrics={
            "n_flagged": len(flagged),
            "n_flagged_paper_rule": len(paper.flagged) if paper is not None else 0,
            **({"slope": paper.slope, "scale": paper.scale} if paper is not None else {}),
        },
        tags={"modelmap.asset": "leakage_report", "flagged": ",".join(flagged)[:5000]},
        artifacts={"report": artifacts},
        context=context,
    )
    shown = table.select(
        "model", "paper_z", "relatives_gain", "relatives_z", "twin_gap", "twin_z", "verdict"
    )
    metadata = {
        "flagged": dg.MetadataValue.json(flagged),
        "n_flagged": len(flagged),
        "flagged_by_paper_rule": dg.MetadataValue.json(paper.flagged if paper else []),
        "z_threshold": config.z_threshold,
        "n_twins": n_twins,
        "statistics": dg.MetadataValue.md(md_table(shown)),
        "evidence": dg.MetadataValue.md(
            "\n\n".join(table.filter(pl.col("flagged"))["evidence"]) or "No model flagged."
        ),
        "plot_statistics": dg.MetadataValue.md(png_md(stats_png, "leakage statistics")),
        "path": dg.MetadataValue.path(str(out)),
    }
    if paper is not None:
        metadata["benchmark"] = name
        metadata["plot"] = dg.MetadataValue.md(png_md(out / "leakage.png", "paper's rule"))
    return dg.MaterializeResult(metadata=metadata)


class LineageConfig(dg.Config):
    band_bits_per_byte: float | None = Field(
        default=None,
        description="fine-tune band: the largest 2KL (bits/byte) between a fine-tune and its "
        "base; null: measured on the map from the declared pairs it supports",
    )
    neighbours: int = Field(
        default=lineage.DEFAULT_NEIGHBOURS,
        description="nearest models listed per model; the declared base is ranked among them",
    )


def declared_bases(index: pl.DataFrame) -> dict[str, list[str]]:
    """Model key -> declared base models, from the map's model index (card or registry)."""
    if "base_models" not in index.columns:
        return {}
    return {
        k: [b for b in (v or "").split(",") if b]
        for k, v in zip(index["key"], index["base_models"], strict=True)
    }


@dg.asset(deps=[coordinates], automation_condition=refresh, kinds={"numpy"}, group_name="modelmap")
def lineage_report(
    context: dg.AssetExecutionContext,
    config: LineageConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Is each model's declared base model (card `base_model:`) the one the map shows?

    Per model: the declared base's rank among its nearest models and the 2KL to it, its nearest
    model, and a verdict (confirmed, declared base far, undeclared relative, base not scored,
    ...; the rule is in `modelmap.reports.lineage`), with a short text for each flagged model.
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    report = lineage.check_lineage(
        Q,
        keys,
        declared_bases(index),
        info["mean_bytes"],
        band_bits_per_byte=config.band_bits_per_byte,
        neighbours=config.neighbours,
        graph=read_graph(storage),
    )
    out = storage.asset_dir("lineage_report")
    meta = {
        "corpus_hash": info["corpus_hash"],
        "band_bits_per_byte": report.band_bits_per_byte,
        "band_source": report.band_source,
    }
    write_parquet(report.table, out / "lineage.parquet", meta)
    write_parquet(report.pairs, out / "declared_pairs.parquet", meta)
    png = lineage.lineage_png(report, out / "lineage.png")
    findings = "\n\n".join(
        f"{k}: {report.table.filter(pl.col('model') == k)['verdict'][0]}. {report.texts[k]}"
        for k in report.flagged
    )
    write_text((findings or "No model flagged.") + "\n", out / "findings.txt")
    log_some(context.log, [f"lineage: {report.texts[k]}" for k in report.flagged], "findings.txt")
    counts = report.table.group_by("verdict").len().sort("verdict")
    verdicts = dict(zip(counts["verdict"].to_list(), counts["len"].to_list(), strict=True))
    mlflow.log_run(
        "lineage_report",
        params={"K": len(keys), **meta},
        metrics={"n_flagged": len(report.flagged), "band_bits_per_byte": report.band_bits_per_byte},
        tags={"modelmap.asset": "lineage_report", "flagged": ",".join(report.flagged)[:5000]},
        artifacts={
            "report": [
                png,
                out / "lineage.parquet",
                out / "declared_pairs.parquet",
                out / "findings.txt",
            ]
        },
        context=context,
    )
    shown = report.table.select(
        "model",
        "declared_base",
        "verdict",
        "declared_base_rank",
        "two_kl_bits_per_byte",
        "two_kl_bits_per_byte_low",
        "two_kl_bits_per_byte_high",
        "nearest",
        "nearest_two_kl_bits_per_byte",
    ).sort("verdict", "model")
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "flagged": dg.MetadataValue.json(report.flagged),
            "n_flagged": len(report.flagged),
            "verdicts": dg.MetadataValue.json(verdicts),
            "band_bits_per_byte": report.band_bits_per_byte,
            "band_source": report.band_source,
            "interval_level": lineage.INTERVAL_LEVEL,
            "findings": dg.MetadataValue.md(
                "\n\n".join(f"**{k}**: {report.texts[k]}" for k in report.flagged)
                or "No model flagged."
            ),
            "table": dg.MetadataValue.md(md_table(shown)),
            "plot": dg.MetadataValue.md(png_md(png, "lineage check")),
            "path": dg.MetadataValue.path(str(out)),
        }
    )
