"""Split documents into UTF-8-safe chunks and sample them, as in Oyama et al. (ACL 2025).

The paper splits each Pile document into consecutive chunks of at most 1,024 UTF-8 bytes
without cutting a multi-byte character, keeps chunks longer than 256 bytes, then with seed 42
samples 40,000 chunks and keeps the first 10,000. All sizes here are UTF-8 byte counts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# The longest UTF-8 encoding of one character; a smaller chunk size could not always advance.
_MAX_CHAR_BYTES = 4


@dataclass(frozen=True)
class Document:
    """A source document: ``text`` belongs to ``domain``; ``doc_id`` names it (may be empty)."""

    text: str
    domain: str
    doc_id: str = ""


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: chunk ``chunk_index`` (0-based) of document ``doc_index``.

    ``doc_index`` is the document's 0-based position in the iterable given to
    ``chunk_documents``; ``chunk_index`` counts all chunks of that document, dropped ones too,
    so it is the chunk's position in ``split_utf8(document.text)``.
    """

    text: str
    domain: str
    doc_index: int
    chunk_index: int
    doc_id: str = ""

    @property
    def n_bytes(self) -> int:
        """Length of ``text`` in UTF-8 bytes."""
        return len(self.text.encode("utf-8"))


def _is_continuation(byte: int) -> bool:
    """True for a UTF-8 continuation byte (0b10xxxxxx), i.e. not the start of a character."""
    return byte & 0xC0 == 0x80


def split_utf8(text: str, max_bytes: int = 1024) -> list[str]:
    """Split ``text`` into consecutive chunks of at most ``max_bytes`` UTF-8 bytes.

    Greedy: each chunk ends at the last character boundary at or before ``max_bytes`` bytes
    from its start, so no multi-byte character is cut and ``"".join(chunks) == text``. Every
    chunk but the last is within 3 bytes of ``max_bytes``. An empty text gives ``[]``.
    """
    if max_bytes < _MAX_CHAR_BYTES:
        raise ValueError(
            f"max_bytes must be >= {_MAX_CHAR_BYTES} (one UTF-8 character), got {max_bytes}"
        )
    raw = text.encode("utf-8")
    chunks: list[str] = []
    start = 0
    while start < len(raw):
        end = min(start + max_bytes, len(raw))
        # raw[end] is the first byte of the next chunk: back off until it starts a character.
        while end < len(raw) and _is_continuation(raw[end]):
            end -= 1
        chunks.append(raw[start:end].decode("utf-8"))
        start = end
    return chunks


def chunk_documents(
    docs: Iterable[Document], max_bytes: int = 1024, min_bytes: int = 256
) -> list[Chunk]:
    """Split every document with ``split_utf8`` and keep chunks of more than ``min_bytes``.

    "More than": a chunk of exactly ``min_bytes`` bytes is dropped (the paper keeps chunks
    "longer than 256 bytes"). Chunks come in document order, then chunk order.
    """
    kept: list[Chunk] = []
    for doc_index, doc in enumerate(docs):
        for chunk_index, piece in enumerate(split_utf8(doc.text, max_bytes)):
            if len(piece.encode("utf-8")) > min_bytes:
                kept.append(Chunk(piece, doc.domain, doc_index, chunk_index, doc.doc_id))
    return kept


def sample_chunks(chunks: Sequence[T], n: int, seed: int = 42, pool: int = 40_000) -> list[T]:
    """The paper's sample: ``random.Random(seed).sample(chunks, min(pool, len(chunks)))[:n]``.

    Drawing a pool first and then taking a prefix (rather than sampling ``n`` directly) is what
    makes the result match the paper's 10k-of-40k selection for the same seed and input.
    Raises ``ValueError`` when fewer than ``n`` chunks are available.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    available = min(pool, len(chunks))
    if n > available:
        raise ValueError(
            f"asked for {n} texts but only {available} are available "
            f"({len(chunks)} chunks, pool {pool})"
        )
    return random.Random(seed).sample(list(chunks), available)[:n]
