"""Where files live and how they are written: atomically, and never outside the storage folder.

Every output is written to a temporary name in its final folder and renamed into place, so a
killed process leaves either the previous file or the new one, never a partial file, and two
processes writing the same file leave one complete version (the last renamed). The temporary
name carries the writer's host and pid; the next write of the same file removes temporary
files that a process of this host left behind when it was killed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

_META_KEY = "modelmap"

# A model key is a Hub repo id `org/name` (or a bare `name`): each part starts with a letter or
# digit and holds only letters, digits, '.', '_' and '-' (the Hub's own rule, minus '--').
_KEY_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_KEY_RE = re.compile(rf"^(?:{_KEY_PART}/)?{_KEY_PART}$")


class InvalidModelKey(ValueError):
    """A partition key that is not a valid model id."""


def validate_model_key(key: str) -> str:
    """Return `key` if it is a valid `org/name` model id, else raise `InvalidModelKey`.

    Refuses path traversal (`..`), absolute paths, commas, spaces and control characters, so a
    file path derived from a key can never leave the storage folder.
    """
    if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
        raise InvalidModelKey(
            f"invalid model key {key!r}: expected a Hub repo id 'org/name' made of letters, "
            "digits, '.', '_' and '-' (no spaces, commas, control characters or path parts)"
        )
    if ".." in key or key.endswith((".", "-")) or "--" in key:
        raise InvalidModelKey(
            f"invalid model key {key!r}: '..', '--' and a trailing '.'/'-' are refused"
        )
    return key


def key_to_filename(key: str, suffix: str) -> str:
    """A flat, reversible file name for a model key: `org/name` -> `org--name<suffix>`."""
    return validate_model_key(key).replace("/", "--") + suffix


def filename_to_key(name: str, suffix: str) -> str:
    return name.removesuffix(suffix).replace("--", "/")


def path_inside(base: Path, *parts: str) -> Path:
    """Join `parts` under `base` and refuse any result that escapes `base`."""
    base = Path(base).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise InvalidModelKey(f"path {path} escapes the storage folder {base}")
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete temporary files of `final` whose writer (a process of this host) is gone."""
    host, removed = socket.gethostname(), []
    for tmp in final.parent.glob(f".{glob_escape(final.name)}.*.tmp"):
        writer = tmp.name[len(final.name) + 2 :].rsplit(".", 3)  # host, pid, random, "tmp"
        if len(writer) != 4 or writer[0] != host or not writer[1].isdigit():
            continue
        if not pid_alive(int(writer[1])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path next to `final`; rename it onto `final` if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    prefix = f".{final.name}.{socket.gethostname()}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(final: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `final`."""
    with atomic_path(final) as tmp:
        write(tmp)
    return Path(final)


def write_parquet(df: pl.DataFrame, final: Path, metadata: dict | None = None) -> Path:
    """Write `df` as Parquet; `metadata` (JSON-able) travels in the file's schema metadata."""
    table = df.to_arrow()
    if metadata is not None:
        table = table.replace_schema_metadata({_META_KEY: json.dumps(metadata, sort_keys=True)})
    return write_atomic(final, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_parquet_metadata(path: Path) -> dict:
    """The metadata dict stored by `write_parquet` (empty if none)."""
    raw = pq.read_schema(path).metadata or {}
    value = raw.get(_META_KEY.encode())
    return json.loads(value) if value else {}


def write_text(text: str, final: Path) -> Path:
    return write_atomic(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_npy(array: np.ndarray, final: Path) -> Path:
    """Save an array as .npy (memory-mappable with `np.load(path, mmap_mode="r")`)."""

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomic(final, _save)
