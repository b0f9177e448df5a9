"""`leakage_report`: models whose likelihood on the corpus is higher than their scores explain.

Its automation condition is the default schedule's (`reports_condition()`): it refreshes with
the map. With `MODELMAP_MAP_REFRESH=eager` the code location gives it
`reports_condition("eager")` instead (`modelmap_assets.automation.conditions`).
"""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.reports import leakage, leakage_evidence
from modelmap.reports.benchmarks import targets
from modelmap.reports.leakage_screen import LeakageScreen, screen_for_leakage
from modelmap.storage import write_parquet
from modelmap_assets.automation.conditions import reports_condition
from modelmap_assets.geometry.coordinates import TWINS_FILE, read_coordinates, read_graph
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import (
    SCORES_AND_MAP,
    all_scores,
    declared_bases_in_index,
    log_some,
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
    automation_condition=reports_condition(),
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
    keys = index["key"].to_list()
    corpus_df, _ = storage.read_corpus()
    twin_loglik, twin_bytes, twin_domains = _twin_matrix(context, storage, info)
    result = screen_for_leakage(
        keys,
        Q,
        np.load(storage.current_version_dir("coordinates") / "L_raw.npy", mmap_mode="r"),
        corpus_df["n_bytes"].to_numpy(),
        corpus_df["domain"].to_numpy(),
        loglik_per_byte=index["mean_loglik_nats"].to_numpy() / info["mean_bytes"],
        targets=targets(all_scores(storage, keys), keys),
        declared=declared_bases_in_index(index),
        mean_bytes=info["mean_bytes"],
        graph=read_graph(storage),
        twin_loglik=twin_loglik,
        twin_bytes=twin_bytes,
        twin_domains=twin_domains,
        z_threshold=config.z_threshold,
        support_z=config.support_z,
        max_relatives=config.max_relatives,
        map_relatives=config.map_relatives,
    )
    if result.paper is None:
        context.log.warning("too few models with benchmark scores for the paper's rule")
    out = storage.asset_dir("leakage_report")
    meta, artifacts = _write(result, config, info["corpus_hash"], index["family"].to_list(), out)
    log_some(
        context.log, result.table.filter(pl.col("flagged"))["evidence"].to_list(), "screen.parquet"
    )
    paper = result.paper
    mlflow.log_run(
        "leakage_report",
        params={"K": len(keys), **meta},
        metrics={
            "n_flagged": len(result.flagged),
            "n_flagged_paper_rule": len(paper.flagged) if paper is not None else 0,
            **({"slope": paper.slope, "scale": paper.scale} if paper is not None else {}),
        },
        tags={"modelmap.asset": "leakage_report", "flagged": ",".join(result.flagged)[:5000]},
        artifacts={"report": artifacts},
        context=context,
    )
    return dg.MaterializeResult(metadata=_metadata(result, config, out))


def _write(
    result: LeakageScreen,
    config: LeakageConfig,
    corpus_hash: str,
    families: list[str],
    out: Path,
) -> tuple[dict, list[Path]]:
    """Write the report's files in ``out``: the paper's rule (`leakage.parquet`, its plot)
    when it ran, the combined screen, the gain per domain and the statistics' plot. Returns
    the parameters the screen ran with (also in each file's metadata) and the files."""
    meta = {"corpus_hash": corpus_hash}
    artifacts = []
    if result.paper is not None:
        meta["benchmark"] = result.benchmark
        write_parquet(result.paper.table, out / "leakage.parquet", meta)
        png = leakage.leakage_png(result.paper, out / "leakage.png", families=families)
        artifacts += [png, out / "leakage.parquet"]
    meta.update(n_twins=result.n_twins, z_threshold=config.z_threshold, support_z=config.support_z)
    write_parquet(result.table, out / "screen.parquet", meta)
    write_parquet(result.domain_gain(), out / "domain_gain.parquet", meta)
    stats_png = leakage_evidence.statistics_png(
        result.table, out / "statistics.png", z_threshold=config.z_threshold
    )
    artifacts += [stats_png, out / "screen.parquet", out / "domain_gain.parquet"]
    return meta, artifacts


def _metadata(result: LeakageScreen, config: LeakageConfig, folder: Path) -> dict:
    """What the UI shows of a leakage report written in ``folder``."""
    table, paper = result.table, result.paper
    shown = table.select(
        "model", "paper_z", "relatives_gain", "relatives_z", "twin_gap", "twin_z", "verdict"
    )
    metadata = {
        "flagged": dg.MetadataValue.json(result.flagged),
        "n_flagged": len(result.flagged),
        "flagged_by_paper_rule": dg.MetadataValue.json(paper.flagged if paper else []),
        "z_threshold": config.z_threshold,
        "n_twins": result.n_twins,
        "statistics": dg.MetadataValue.md(md_table(shown)),
        "evidence": dg.MetadataValue.md(
            "\n\n".join(table.filter(pl.col("flagged"))["evidence"]) or "No model flagged."
        ),
        "plot_statistics": dg.MetadataValue.md(
            png_md(folder / "statistics.png", "leakage statistics")
        ),
        "path": dg.MetadataValue.path(str(folder)),
    }
    if paper is not None:
        metadata["benchmark"] = result.benchmark
        metadata["plot"] = dg.MetadataValue.md(png_md(folder / "leakage.png", "paper's rule"))
    return metadata
