"""What the report assets share: the scores of every model, their dependencies, a capped log,
the declared bases in the map's model index."""

import dagster as dg
import polars as pl

from modelmap.reports.benchmarks import SCORE_COLUMNS, empty_scores
from modelmap_assets.geometry.coordinates import coordinates
from modelmap_assets.scoring.benchmarks import benchmark_scores
from resources.storage import StorageResource


def all_scores(storage: StorageResource, keys: list[str]) -> pl.DataFrame:
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


#: Flagged models logged one line each, at most; the rest are counted (each line is an event
#: written to the instance's storage: thousands of them at K = 10,000 took minutes).
MAX_LOGGED_FINDINGS = 20


def log_some(log, lines: list[str], where: str) -> None:
    """Warn with the first `MAX_LOGGED_FINDINGS` lines and say where the others are."""
    for line in lines[:MAX_LOGGED_FINDINGS]:
        log.warning(line)
    if len(lines) > MAX_LOGGED_FINDINGS:
        log.warning(f"... and {len(lines) - MAX_LOGGED_FINDINGS} more flagged: see {where}")


SCORES_AND_MAP = [
    coordinates,
    dg.AssetDep(benchmark_scores, partition_mapping=dg.AllPartitionMapping()),
]


def declared_bases_in_index(index: pl.DataFrame) -> dict[str, list[str]]:
    """Model key -> declared base models, from the map's model index (card or registry)."""
    if "base_models" not in index.columns:
        return {}
    return {
        k: [b for b in (v or "").split(",") if b]
        for k, v in zip(index["key"], index["base_models"], strict=True)
    }
