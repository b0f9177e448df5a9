"""`lineage_report`: declared base models checked against the map."""

import dagster as dg
import polars as pl
from pydantic import Field

from modelmap.reports import lineage
from modelmap.storage import write_parquet, write_text
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, read_graph, refresh
from modelmap_assets.metadata import md_table, png_md
from modelmap_assets.reports.shared import declared_bases_in_index, log_some
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


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
