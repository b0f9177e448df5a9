"""Asset metadata a person reads in the UI: Markdown tables and embedded PNG plots."""

import base64
from pathlib import Path

import dagster as dg
import polars as pl

from modelmap.geometry.neighbours import DEFAULT_NEIGHBOURS, Placement


def png_md(path: Path, alt: str) -> str:
    """Markdown that shows the PNG inline in the Dagster UI (a data URI)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


def md_table(df: pl.DataFrame, max_rows: int = 200) -> str:
    """A Markdown table of the first `max_rows` rows."""
    head = "| " + " | ".join(df.columns) + " |\n| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.head(max_rows).rows()]
    more = [f"\n({df.height - max_rows} more rows)"] if df.height > max_rows else []
    return "\n".join([head, *rows, *more])


def placement_metadata(placed: Placement) -> dict:
    """A placed model's neighbours and map position as `likelihood` metadata (its partition's
    page in the UI): placed_among, placement_s, nearest_neighbours (a Markdown table of the
    nearest ten), nearest_model, nearest_two_kl_bits_per_byte, map_x, map_y."""
    rows = placed.neighbours.head(DEFAULT_NEIGHBOURS).iter_rows(named=True)
    table = "| rank | neighbour | 2KL (bits/byte) | 2KL (nats) |\n| --- | --- | --- | --- |\n"
    table += "\n".join(
        f"| {r['rank']} | {r['neighbour']} | {r['two_kl_bits_per_byte']:.4f} "
        f"| {r['two_kl_nats']:.3f} |"
        for r in rows
    )
    meta = {
        "placed_among": placed.among,
        "placement_s": round(placed.seconds, 3),
        "nearest_neighbours": dg.MetadataValue.md(table),
    }
    if placed.neighbours.height:
        meta["nearest_model"] = placed.neighbours["neighbour"][0]
        meta["nearest_two_kl_bits_per_byte"] = float(placed.neighbours["two_kl_bits_per_byte"][0])
    if placed.x is not None:
        meta["map_x"], meta["map_y"] = float(placed.x), float(placed.y)
    return meta
