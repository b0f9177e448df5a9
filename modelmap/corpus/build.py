"""The text corpus that every model is scored on: loaders, the corpus table and its hash.

Three sources give the same table (``text_id``, ``text``, ``domain``, ``n_bytes``):

- ``"jsonl"``: the paper's published ``texts-10k-pile.jsonl`` (already chunks; first n kept);
- ``"folder"``: a folder of text files, chunked and sampled like the paper did with the Pile;
- ``"embedded"``: the committed default, ``modelmap/corpus/data/embedded_documents.jsonl.gz``
  (real text from seven domains, built by ``scripts/build_embedded_corpus.py``).

Embedded documents are split by a hash of their ``doc_id`` into a ``"corpus"`` half (scored),
a ``"train"`` part (for training the small demo models) and a ``"heldout"`` part (the
measured benchmark tasks), so no scored text is trained on and no task text is seen by either.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl

from modelmap.corpus.chunking import Chunk, Document, chunk_documents, sample_chunks
from modelmap.storage import utf8_lines

EMBEDDED_PATH = Path(__file__).resolve().parent / "data" / "embedded_documents.jsonl.gz"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
SOURCES = ("embedded", "jsonl", "folder")
# Bumped when the hashed byte layout changes, so old and new hashes can never collide.
_HASH_TAG = b"modelmap-corpus-v1\n"

Split = Literal["corpus", "train", "heldout", "all"]
SPLITS = ("corpus", "train", "heldout", "all")


class CorpusError(ValueError):
    """Bad corpus input; the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class CorpusText:
    """One text to score. ``origin`` says where it came from (file, line, doc and chunk)."""

    text: str
    domain: str
    origin: str = ""


# ---------------------------------------------------------------- the paper's JSONL


MAX_TEXT_BYTES = 1 << 20  # a longer "text" is a document that was never chunked


def load_pile_jsonl(
    path: str | Path, n: int | None = None, max_text_bytes: int = MAX_TEXT_BYTES
) -> list[CorpusText]:
    """Read the first ``n`` texts (all if None) of a ``texts-10k-pile.jsonl``-shaped file.

    One JSON object per line with at least ``text`` and ``pile_set_name`` (the paper's file also
    has ``pile_idx``, ``chunk_idx``, ``index``, used only for ``origin``). The lines are already
    chunks, so nothing is re-chunked; blank lines are skipped. Refused with the file and line:
    bytes that are not UTF-8, a text that is empty, holds a lone surrogate (``"\\ud800"``),
    is longer than ``max_text_bytes`` UTF-8 bytes, or repeats an earlier text (two equal
    texts would be two identical coordinates of every model).
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    out: list[CorpusText] = []
    first_line: dict[str, int] = {}
    lines = utf8_lines(path, CorpusError) if n is None or n > 0 else iter(())
    for lineno, line in lines:
        where = f"{path}: line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{where}: bad JSON ({err.msg})") from err
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}: expected a JSON object")
        for field in ("text", "pile_set_name"):
            if not isinstance(obj.get(field), str):
                raise CorpusError(f"{where}: missing or non-string field {field!r}")
            try:
                obj[field].encode("utf-8")
            except UnicodeEncodeError as err:
                raise CorpusError(
                    f"{where}: field {field!r} holds a lone surrogate ({err.reason} at "
                    f"character {err.start}); it has no UTF-8 form"
                ) from err
        text = obj["text"]
        if not text.strip():
            raise CorpusError(f"{where}: empty text")
        n_bytes = len(text.encode("utf-8"))
        if n_bytes > max_text_bytes:
            raise CorpusError(
                f"{where}: text of {n_bytes:,} bytes, more than {max_text_bytes:,} "
                "(the lines must be chunks, not whole documents)"
            )
        if text in first_line:
            raise CorpusError(f"{where}: the same text as line {first_line[text]}")
        first_line[text] = lineno
        origin = f"{path.name}:{lineno}"
        if "pile_idx" in obj and "chunk_idx" in obj:
            origin += f" pile_idx={obj['pile_idx']} chunk_idx={obj['chunk_idx']}"
        out.append(CorpusText(text, obj["pile_set_name"], origin))
        if n is not None and len(out) >= n:
            break  # before reading the next line: what follows the first n is never read
    if n is not None and len(out) < n:
        raise CorpusError(f"{path}: asked for {n} texts but the file has only {len(out)}")
    return out


# ---------------------------------------------------------------- a folder of text files


def read_text_folder(path: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> list[Document]:
    """Every text file under ``path`` (recursively) as a document, sorted by relative path.

    The domain is the first-level subfolder's name, or the file's stem for files lying directly
    in ``path``. Hidden files and folders (``.name``) are skipped. Files must be UTF-8.
    """
    root = Path(path)
    if not root.is_dir():
        raise CorpusError(f"{root}: no such folder")
    docs: list[Document] = []
    # Sorting by the POSIX relative path makes the order, hence the sample, machine-independent.
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    for file in files:
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise CorpusError(f"{file}: not UTF-8 text ({err.reason} at byte {err.start})") from err
        domain = rel.parts[0] if len(rel.parts) > 1 else file.stem
        docs.append(Document(text, domain, rel.as_posix()))
    if not docs:
        raise CorpusError(f"{root}: no text files ({', '.join(suffixes)}) found")
    return docs


def _chunks_to_texts(chunks: list[Chunk]) -> list[CorpusText]:
    return [CorpusText(c.text, c.domain, f"{c.doc_id}#{c.chunk_index}") for c in chunks]


def _sample(
    docs: list[Document], n: int, where: str, seed: int, max_bytes: int, min_bytes: int, pool: int
) -> list[CorpusText]:
    """Chunk ``docs``, then sample ``n`` chunks; a too-small input names ``where``."""
    chunks = chunk_documents(docs, max_bytes=max_bytes, min_bytes=min_bytes)
    try:
        return _chunks_to_texts(sample_chunks(chunks, n, seed=seed, pool=pool))
    except ValueError as err:
        raise CorpusError(
            f"{where}: {len(docs)} documents give {len(chunks)} usable chunks of "
            f"{min_bytes + 1}..{max_bytes} bytes; {err}"
        ) from err


def load_text_folder(
    path: str | Path,
    n: int,
    seed: int = 42,
    max_bytes: int = 1024,
    min_bytes: int = 256,
    pool: int = 40_000,
    suffixes: tuple[str, ...] = TEXT_SUFFIXES,
) -> list[CorpusText]:
    """``n`` chunks sampled the paper's way from the text files under ``path``."""
    docs = read_text_folder(path, suffixes)
    return _sample(docs, n, str(path), seed, max_bytes, min_bytes, pool)


# ---------------------------------------------------------------- the embedded default


def doc_split(doc_id: str) -> Literal["corpus", "train", "heldout"]:
    """Which part a document belongs to, from d = sha256(doc_id): d[0] < 128 -> "corpus";
    otherwise d[1] < 64 -> "heldout" (an eighth of all documents), else "train".

    Decided per document (not per chunk) so the scored corpus, the training text and the task
    text never share a document; stable because it depends on nothing but the id.
    """
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    if digest[0] < 128:
        return "corpus"
    return "heldout" if digest[1] < 64 else "train"


def load_embedded_documents(
    split: Split = "corpus", path: str | Path | None = None
) -> list[Document]:
    """The committed default documents of ``split`` (one of ``SPLITS``), in file order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path) if path is not None else EMBEDDED_PATH
    if not path.is_file():
        raise CorpusError(
            f"{path}: embedded corpus file missing (run scripts/build_embedded_corpus.py)"
        )
    docs: list[Document] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                obj = json.loads(line)
                doc = Document(obj["text"], obj["domain"], obj["doc_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CorpusError(f"{path}: line {lineno}: bad document record ({err})") from err
            if split == "all" or doc_split(doc.doc_id) == split:
                docs.append(doc)
    return docs


def load_embedded(
    n: int, seed: int = 42, max_bytes: int = 1024, min_bytes: int = 256, pool: int = 40_000
) -> list[CorpusText]:
    """``n`` chunks sampled the paper's way from the embedded "corpus" split."""
    docs = load_embedded_documents("corpus")
    return _sample(docs, n, f"{EMBEDDED_PATH} (corpus split)", seed, max_bytes, min_bytes, pool)


# ---------------------------------------------------------------- the corpus table


def to_frame(texts: list[CorpusText]) -> pl.DataFrame:
    """The corpus table: ``text_id`` (Int64, 0..N-1 in order), ``text``, ``domain``, ``n_bytes``."""
    return pl.DataFrame(
        {
            "text_id": list(range(len(texts))),
            "text": [t.text for t in texts],
            "domain": [t.domain for t in texts],
            "n_bytes": [len(t.text.encode("utf-8")) for t in texts],
        },
        schema={"text_id": pl.Int64, "text": pl.Utf8, "domain": pl.Utf8, "n_bytes": pl.Int64},
    )


def build_corpus(
    source: str,
    n_texts: int,
    path: str | Path | None = None,
    seed: int = 42,
    max_bytes: int = 1024,
    min_bytes: int = 256,
    pool: int = 40_000,
) -> pl.DataFrame:
    """Build the N-text corpus table from ``source`` ("embedded", "jsonl" or "folder").

    ``path`` is the JSONL file or the folder (unused for "embedded"). "jsonl" keeps the file's
    first ``n_texts`` lines as they are; the others chunk to ``max_bytes``, keep chunks over
    ``min_bytes`` and sample with ``seed`` from a pool of ``pool`` (the paper: 1024, 256, 42,
    40,000). Same inputs give the same table, hence the same ``corpus_hash``.
    """
    if n_texts < 1:
        raise ValueError(f"n_texts must be >= 1, got {n_texts}")
    if source == "embedded":
        texts = load_embedded(n_texts, seed, max_bytes, min_bytes, pool)
    elif source in ("jsonl", "folder"):
        if path is None:
            raise ValueError(f"source {source!r} needs a path")
        if source == "jsonl":
            texts = load_pile_jsonl(path, n_texts)
        else:
            texts = load_text_folder(path, n_texts, seed, max_bytes, min_bytes, pool)
    else:
        raise ValueError(f"unknown corpus source {source!r}; expected one of {SOURCES}")
    return to_frame(texts)


# ---------------------------------------------------------------- unseen twins


def default_n_twins(n_texts: int) -> int:
    """Twin texts set aside by default: a tenth of N, at least 100 (scoring cost +10% or more)."""
    return max(100, n_texts // 10)


def build_twins(
    source: str,
    n_texts: int,
    n_twins: int,
    path: str | Path | None = None,
    seed: int = 42,
    max_bytes: int = 1024,
    min_bytes: int = 256,
    pool: int = 40_000,
) -> pl.DataFrame:
    """Held-out *twins* of the corpus: texts from the same sources that no model should have
    seen, chunked like the corpus, never part of L or Q (the leakage screen compares a model's
    gain on the corpus texts with its gain on these).

    - "embedded": chunks of the "heldout" documents (the split no scored text and no zoo
      training text comes from), sampled with ``seed``;
    - "folder": the chunks that follow the corpus in the same seeded sample, from documents
      none of whose chunks is in the corpus;
    - "jsonl": the lines after the first ``n_texts``, from Pile documents (``pile_idx``) none
      of whose chunks is in the corpus.

    Returns at most ``n_twins`` texts in the corpus table's schema (fewer, possibly none, when
    the source has no more); the corpus itself is unchanged.
    """
    if n_twins < 0:
        raise ValueError(f"n_twins must be >= 0, got {n_twins}")
    if n_twins == 0:
        return to_frame([])
    if source == "embedded":
        docs = load_embedded_documents("heldout")
        chunks = chunk_documents(docs, max_bytes=max_bytes, min_bytes=min_bytes)
        picked = sample_chunks(chunks, min(n_twins, min(pool, len(chunks))), seed=seed, pool=pool)
        return to_frame(_chunks_to_texts(picked))
    if path is None:
        raise ValueError(f"source {source!r} needs a path")
    if source == "folder":
        chunks = chunk_documents(read_text_folder(path), max_bytes=max_bytes, min_bytes=min_bytes)
        ordered = sample_chunks(chunks, min(pool, len(chunks)), seed=seed, pool=pool)
        seen = {c.doc_id for c in ordered[:n_texts]}
        rest = [c for c in ordered[n_texts:] if c.doc_id not in seen]
        return to_frame(_chunks_to_texts(rest[:n_twins]))
    if source == "jsonl":
        texts = load_pile_jsonl(path)
        seen = {_pile_doc(t) for t in texts[:n_texts]} - {None}
        rest = [t for t in texts[n_texts:] if _pile_doc(t) is None or _pile_doc(t) not in seen]
        return to_frame(rest[:n_twins])
    raise ValueError(f"unknown corpus source {source!r}; expected one of {SOURCES}")


def _pile_doc(text: CorpusText) -> str | None:
    """The Pile document a JSONL line was cut from (``pile_idx`` in its origin), if known."""
    for part in text.origin.split():
        if part.startswith("pile_idx="):
            return part.removeprefix("pile_idx=")
    return None


def corpus_hash(df: pl.DataFrame) -> str:
    """sha256 hex digest of the corpus content: its ``text_id`` and ``text`` columns.

    Rows are taken in ``text_id`` order; each contributes its id as a signed 64-bit
    little-endian integer, the UTF-8 byte length of its text as an unsigned 64-bit little-endian
    integer, then the UTF-8 bytes. Length prefixes make the encoding unambiguous, and nothing
    depends on platform, polars version or Parquet layout.
    """
    h = hashlib.sha256(_HASH_TAG)
    ordered = df.select("text_id", "text").sort("text_id")
    for text_id, text in ordered.iter_rows():
        raw = text.encode("utf-8")
        h.update(struct.pack("<qQ", text_id, len(raw)))
        h.update(raw)
    return h.hexdigest()
