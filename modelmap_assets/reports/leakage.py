"""`leakage_report`: models whose likelihood on the corpus is higher than their scores explain."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.reports import leakage, leakage_evidence, lineage
from modelmap.reports.benchmarks import (
    primary_mean,
    targets,
)
from modelmap.storage import write_parquet
from modelmap_assets.geometry.coordinates import TWINS_FILE, read_coordinates, read_graph
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import (
    SCORES_AND_MAP,
    all_scores,
    declared_bases_in_index,
    log_some,
    refresh_after_map,
)
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


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
    deps=SCORES_AND_MAP,
    automation_condition=refresh_after_map,
    kinds={"scipy"},
    group_name="modelmap",
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
    target_map = targets(all_scores(storage, keys), keys)
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
        Q, keys, declared_bases_in_index(index), info["mean_bytes"], graph=graph
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
