"""One model's likelihood file: the single format for full, budget, twin and imported scores.

A likelihood file (``data/likelihood/<org>--<name>.parquet``) holds one row per scored text:

=========== ======= ==========================================================================
column      type    meaning
=========== ======= ==========================================================================
text_id     Int64   the text's id in its split (``corpus.parquet`` or ``twins.parquet``)
loglik      Float64 log-likelihood of the text, nats (first-token rule of the README)
n_tokens    Int32   tokens scored; null where unknown (imported rows)
split       Utf8    ``corpus`` (a text of L and Q) or ``twin`` (a held-out twin text)
=========== ======= ==========================================================================

Rows are sorted by (split, text_id). Files written before the ``split`` column existed hold
corpus rows only and read as such. The file's metadata (`modelmap.storage.write_parquet`)
says where the rows come from and which texts they cover:

- ``corpus_hash``: the corpus the rows were scored on (as before).
- ``origin``: ``scored`` (by this platform) or ``imported`` (a published matrix, with
  ``import_file`` and ``import_sha256``).
- ``text_set``: ``all`` (every corpus text) or ``budget`` (only the texts of a
  ``text_selection``, whose version is ``selection_hash``).
- ``n_corpus_rows``, ``n_twin_rows``; ``twins_hash`` when twin rows are present.
- ``revision`` (the model's Hub sha, or a hash of a local folder's files), and the scoring
  settings the scores depend on (``scorer_dtype``, ``scorer_stride``,
  ``scorer_max_context``): with the fields above, what `is_current` compares.

Readers take corpus rows with `corpus_rows` (twins never enter L or Q), and a model enters
the full matrix only when `is_full` says its corpus rows are every corpus text. A run skips a
model whose file `is_current` for what it would score.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq

from modelmap.storage import parquet_metadata, read_parquet_metadata, write_parquet

SPLIT_CORPUS = "corpus"
SPLIT_TWIN = "twin"
TEXT_SET_ALL = "all"
TEXT_SET_BUDGET = "budget"
ORIGIN_SCORED = "scored"
ORIGIN_IMPORTED = "imported"

SCHEMA = {"text_id": pl.Int64, "loglik": pl.Float64, "n_tokens": pl.Int32, "split": pl.Utf8}


def likelihood_frame(
    text_ids, loglik_nats, n_tokens=None, split: str = SPLIT_CORPUS
) -> pl.DataFrame:
    """Rows of one split in the file's schema (``n_tokens=None``: unknown, stored as null)."""
    text_ids = np.asarray(text_ids, dtype=np.int64)
    loglik = np.asarray(loglik_nats, dtype=np.float64)
    if text_ids.shape != loglik.shape:
        raise ValueError(f"{len(text_ids)} text ids but {len(loglik)} log-likelihoods")
    if n_tokens is None:
        tokens = pl.Series("n_tokens", [None] * len(text_ids), dtype=pl.Int32)
    else:
        tokens = pl.Series("n_tokens", np.asarray(n_tokens), dtype=pl.Int32)
    return pl.DataFrame(
        {
            "text_id": text_ids,
            "loglik": loglik,
            "n_tokens": tokens,
            "split": pl.Series("split", [split] * len(text_ids), dtype=pl.Utf8),
        },
        schema=SCHEMA,
    )


def write_likelihood_file(path: Path, frames: list[pl.DataFrame], metadata: dict) -> Path:
    """Write the rows of every split with the format's bookkeeping added to `metadata`."""
    df = pl.concat(frames).sort("split", "text_id") if frames else pl.DataFrame(schema=SCHEMA)
    n_corpus = df.filter(pl.col("split") == SPLIT_CORPUS).height
    meta = {
        "origin": ORIGIN_SCORED,
        "text_set": TEXT_SET_ALL,
        **metadata,
        "n_corpus_rows": n_corpus,
        "n_twin_rows": df.height - n_corpus,
    }
    return write_parquet(df, path, meta)


def _with_split(df: pl.DataFrame) -> pl.DataFrame:
    if "split" in df.columns:
        return df
    return df.with_columns(pl.lit(SPLIT_CORPUS).alias("split"))


def read_rows(path: Path, split: str = SPLIT_CORPUS, columns=("text_id", "loglik")):
    """The rows of one split, sorted by text id, with only `columns`."""
    df = _with_split(pl.read_parquet(path))
    return df.filter(pl.col("split") == split).sort("text_id").select(list(columns))


def corpus_rows(path: Path, columns=("text_id", "loglik")) -> pl.DataFrame:
    return read_rows(path, SPLIT_CORPUS, columns)


def twin_rows(path: Path, columns=("text_id", "loglik")) -> pl.DataFrame:
    return read_rows(path, SPLIT_TWIN, columns)


@dataclass(frozen=True)
class Scores:
    """One file read whole: its metadata (`read_metadata`'s) and, per split present, the
    text ids (int64, ascending) and log-likelihoods (float64, nats) of its rows."""

    meta: dict
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def rows(self, split: str = SPLIT_CORPUS) -> tuple[np.ndarray, np.ndarray]:
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64))
        return self.splits.get(split, empty)


def read_scores(path: Path) -> Scores:
    """Metadata and rows of one file in a single read, for readers of every model's file
    (`coordinates`): about 1 ms per 10,000-row file, against ~2 ms for `read_metadata` then
    `corpus_rows` (a query each)."""
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    columns = [c for c in ("text_id", "loglik", "split") if c in schema.names]
    table = pf.read(columns=columns, use_threads=False)
    text_id = table.column("text_id").to_numpy().astype(np.int64, copy=False)
    loglik = table.column("loglik").to_numpy().astype(np.float64, copy=False)
    if "split" in columns:
        split = table.column("split")
        names = pc.unique(split).to_pylist()
        masks = {name: pc.equal(split, name).to_numpy(zero_copy_only=False) for name in names}
    else:
        masks = {SPLIT_CORPUS: np.ones(len(text_id), dtype=bool)}
    splits = {}
    for name, mask in masks.items():
        ids, values = text_id[mask], loglik[mask]
        if len(ids) > 1 and not (ids[1:] >= ids[:-1]).all():
            order = np.argsort(ids, kind="stable")
            ids, values = ids[order], values[order]
        splits[name] = (ids, values)
    return Scores(_with_defaults(parquet_metadata(schema)), splits)


def read_metadata(path: Path) -> dict:
    """The file's metadata with the format's defaults for files written before it."""
    return _with_defaults(read_parquet_metadata(path))


def _with_defaults(meta: dict) -> dict:
    meta.setdefault("origin", ORIGIN_SCORED)
    meta.setdefault("text_set", TEXT_SET_ALL)
    meta.setdefault("n_twin_rows", 0)
    return meta


def is_full(meta: dict) -> bool:
    """Whether the file's corpus rows cover every corpus text (it can enter L and Q)."""
    return meta.get("text_set", TEXT_SET_ALL) == TEXT_SET_ALL


def is_current(path: Path, revision: str | None, corpus_hash: str | None, settings: dict) -> bool:
    """Whether the likelihood file at `path` holds what scoring would write again: scored
    here (not imported) at model `revision` on corpus `corpus_hash`, with every key of
    `settings` recorded at the same value; a key the file does not record reads as None
    (``twins_hash: None``: no twin rows, ``selection_hash: None``: no text budget).

    An unknown `revision` or `corpus_hash` (None), or a missing or unreadable file, is not
    current: when in doubt, score.
    """
    if revision is None or corpus_hash is None:
        return False
    try:
        meta = read_metadata(path)
    except (OSError, ValueError):
        return False
    if meta.get("origin") != ORIGIN_SCORED:
        return False
    if meta.get("revision") != revision or meta.get("corpus_hash") != corpus_hash:
        return False
    return all(meta.get(key) == value for key, value in settings.items())
