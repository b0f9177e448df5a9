"""`lineage_report`: declared base models checked against the map.

Its automation condition, `eager_refresh`, is the same on every schedule: it follows
`coordinates` (`modelmap_assets.automation.conditions`).
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from modelmap.reports import lineage
from modelmap.storage import write_parquet, write_text
from modelmap_assets.automation.conditions import eager_refresh
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import declared_bases_in_index, log_some
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

#: Columns of the lineage table shown in the UI.
SHOWN = (
    "model",
    "declared_base",
    "verdict",
    "declared_base_rank",
    "two_kl_bits_per_byte",
    "two_kl_bits_per_byte_low",
    "two_kl_bits_per_byte_high",
    "nearest",
    "nearest_two_kl_bits_per_byte",
)


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


@dg.asset(
    deps=[coordinates], automation_condition=eager_refresh, kinds={"numpy"}, group_name="modelmap"
)
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
        declared_bases_in_index(index),
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
    write_text(report.findings() + "\n", out / "findings.txt")
    log_some(context.log, [f"lineage: {report.texts[k]}" for k in report.flagged], "findings.txt")
    files = ("lineage.parquet", "declared_pairs.parquet", "findings.txt")
    mlflow.log_run(
        "lineage_report",
        params={"K": len(keys), **meta},
        metrics={"n_flagged": len(report.flagged), "band_bits_per_byte": report.band_bits_per_byte},
        tags={"modelmap.asset": "lineage_report", "flagged": ",".join(report.flagged)[:5000]},
        artifacts={"report": [png, *(out / name for name in files)]},
        context=context,
    )
    return dg.MaterializeResult(metadata=_metadata(report, len(keys), out))


def _metadata(report: lineage.LineageReport, n_models: int, folder: Path) -> dict:
    """What the UI shows of a lineage report written in ``folder``."""
    return {
        "K": n_models,
        "flagged": dg.MetadataValue.json(report.flagged),
        "n_flagged": len(report.flagged),
        "verdicts": dg.MetadataValue.json(report.verdict_counts()),
        "band_bits_per_byte": report.band_bits_per_byte,
        "band_source": report.band_source,
        "interval_level": lineage.INTERVAL_LEVEL,
        "findings": dg.MetadataValue.md(
            "\n\n".join(f"**{k}**: {report.texts[k]}" for k in report.flagged)
            or "No model flagged."
        ),
        "table": dg.MetadataValue.md(md_table(report.table.select(SHOWN).sort("verdict", "model"))),
        "plot": dg.MetadataValue.md(png_md(folder / "lineage.png", "lineage check")),
        "path": dg.MetadataValue.path(str(folder)),
    }
