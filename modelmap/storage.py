"""Where files live and how they are written: atomically, and never outside the storage folder.

Every output is written to a temporary name in its final folder and renamed into place, so a
killed process leaves either the previous file or the new one, never a partial file, and two
processes writing the same file leave one complete version (the last renamed). The data is
fsynced before the rename and the folder after it, so a power cut leaves one of the two
versions too.

A temporary name is `.<name>.<host id>.<pid>.<random>.tmp`: the host id is 8 hex characters
of a hash of the host name (a fixed length, so a 255-byte file-name limit is never crossed for
a valid key; a name too long is shortened with a hash). The next write of the same file
removes temporaries that a dead process of this host left; temporaries of another host (a
shared volume), whose writer no one here can see, are removed only once older than
`STALE_AFTER_S` (24 h by default), when no writer can still be filling them.

An output's mode is 0o666 less the process's umask, as for any file `open` creates: with
umask 022 others can read it, with 027 only the group, with 077 only the owner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
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
    # The Hub's rule, per part: a part ending in '-' would also make the file name ambiguous
    # ('a-/b' and 'a/-b' both give 'a---b').
    if ".." in key or "--" in key or any(p.endswith((".", "-")) for p in key.split("/")):
        raise InvalidModelKey(
            f"invalid model key {key!r}: '..', '--' and a part ending in '.' or '-' are refused"
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


STALE_AFTER_S = 24 * 3600.0
_NAME_MAX = 255
_TMP_EXTRA = 1 + 1 + 8 + 1 + 10 + 1 + 8 + 4  # "." name "." host "." pid "." random ".tmp"


def host_id() -> str:
    """8 hex characters naming this host in temporary names (fixed length, any host name)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_stem(name: str) -> str:
    """`name`, or a shortened form with a hash when a temporary name would pass 255 bytes."""
    room = _NAME_MAX - _TMP_EXTRA
    if len(name.encode()) <= room:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[: room - 13].decode(errors="ignore") + "~" + digest


def remove_stale_temporaries(
    final: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None
) -> list[Path]:
    """Delete temporary files of `final` that no writer can still be filling: those of a dead
    process of this host, and any (another host's, an older naming's) older than
    `stale_after_s` seconds."""
    me, removed = host_id(), []
    now = time.time() if now is None else now
    for tmp in final.parent.glob(f".{glob_escape(temporary_stem(final.name))}.*.tmp"):
        writer = tmp.name[len(temporary_stem(final.name)) + 2 :].rsplit(".", 3)
        mine = len(writer) == 4 and writer[0] == me and writer[1].isdigit()
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:
            continue
        if (mine and not pid_alive(int(writer[1]))) or age > stale_after_s:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def fsync_path(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_temporary(final: Path) -> Path:
    """Create an empty temporary file next to `final` and return its path.

    The file is created as `open` creates one, mode 0o666 less the umask (and as a folder's
    default ACL says), so the output is shared as the umask says (`tempfile.mkstemp` would
    make it 0600 whatever the umask). The random part is 8 hex characters.
    """
    prefix = f".{temporary_stem(final.name)}.{host_id()}.{os.getpid()}."
    for _ in range(100):
        tmp = final.parent / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {final}")


@contextmanager
def atomic_path(final: Path):
    """Yield a temporary path next to `final`; fsync it and rename it onto `final` if the block
    succeeds (then fsync the folder, so the rename itself is durable)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp_path = create_temporary(final)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, final)
        fsync_path(final.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_atomic(final: Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `final`."""
    try:
        with atomic_path(final) as tmp:
            write(tmp)
    except OSError as exc:  # a full disk or a quota: say which file (the library may not)
        raise OSError(exc.errno, f"cannot write {final}: {exc.strerror or exc}") from exc
    return Path(final)


def write_parquet(df: pl.DataFrame, final: Path, metadata: dict | None = None) -> Path:
    """Write `df` as Parquet; `metadata` (JSON-able) travels in the file's schema metadata."""
    table = df.to_arrow()
    if metadata is not None:
        table = table.replace_schema_metadata({_META_KEY: json.dumps(metadata, sort_keys=True)})
    return write_atomic(final, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_parquet_metadata(path: Path) -> dict:
    """The metadata dict stored by `write_parquet` (empty if none)."""
    return parquet_metadata(pq.read_schema(path))


def parquet_metadata(schema) -> dict:
    """The metadata dict of `write_parquet` from a file's Arrow schema (empty if none)."""
    value = (schema.metadata or {}).get(_META_KEY.encode())
    return json.loads(value) if value else {}


def write_text(text: str, final: Path) -> Path:
    return write_atomic(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_npy(array: np.ndarray, final: Path) -> Path:
    """Save an array as .npy (memory-mappable with `np.load(path, mmap_mode="r")`)."""

    def _save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomic(final, _save)


def utf8_lines(path: Path, error: type[Exception]) -> Iterator[tuple[int, str]]:
    """(line number, text) for each non-blank line of a UTF-8 text file.

    A line that is not UTF-8 raises ``error`` naming the file, the line and the byte, so
    every JSONL reader of the project refuses bad bytes the same way.
    """
    with Path(path).open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(
                    f"{path}: line {lineno}: not UTF-8 ({err.reason} at byte {err.start} "
                    "of the line)"
                ) from err
            if line.strip():
                yield lineno, line
