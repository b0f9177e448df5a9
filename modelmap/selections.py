"""The text selection file: which corpus texts a model scored on a budget reads, and weights.

``<root>/text_selection/selections/<selection_hash>.parquet``, one row per selected text:

=========== ======= ==================================================================
column      type    meaning
=========== ======= ==================================================================
text_id     Int64   the corpus text
count       Int64   times the text was drawn (LS draws with replacement)
probability Float64 its sampling probability p_s
weight      Float64 ``count / (n_draws p_s)``: corpus texts it stands for (sum ~ N)
=========== ======= ==================================================================

Metadata: ``corpus_hash``, ``selection_hash``, ``sampler``, ``n_texts``, ``n_draws``, ``N``,
the target and the n each sampler needed. ``CURRENT.json`` names the selection a budget run
scores on; older selections stay, so a file scored on one is still placed with its weights.
"""

import json
from pathlib import Path

import polars as pl

from modelmap.storage import read_parquet_metadata, write_parquet, write_text


def selection_folder(root: Path) -> Path:
    return Path(root) / "text_selection"


def write_selection(root: Path, df: pl.DataFrame, metadata: dict, make_current: bool = True):
    folder = selection_folder(root)
    path = write_parquet(
        df, folder / "selections" / f"{metadata['selection_hash']}.parquet", metadata
    )
    if make_current:
        write_text(
            json.dumps({"selection_hash": metadata["selection_hash"]}), folder / "CURRENT.json"
        )
    return path


def read_selection(root: Path, selection_hash: str | None = None) -> tuple[pl.DataFrame, dict]:
    """(rows sorted by text_id, metadata) of a selection: the current one by default."""
    folder = selection_folder(root)
    if selection_hash is None:
        pointer = folder / "CURRENT.json"
        if not pointer.exists():
            raise FileNotFoundError(
                f"no text selection under {folder}: materialize `text_selection` first"
            )
        selection_hash = json.loads(pointer.read_text())["selection_hash"]
    path = folder / "selections" / f"{selection_hash}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"text selection {selection_hash[:12]} is not in {path.parent}")
    return pl.read_parquet(path).sort("text_id"), read_parquet_metadata(path)
