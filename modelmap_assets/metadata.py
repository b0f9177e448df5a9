"""Asset metadata a person reads in the UI: Markdown tables and embedded PNG plots."""

import base64
from pathlib import Path

import polars as pl


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
