"""Model keys that could escape the storage folder are refused; writes are atomic."""

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time

import polars as pl
import pyarrow.parquet as pq
import pytest

from modelmap.storage import (
    InvalidModelKey,
    key_to_filename,
    path_inside,
    read_parquet_metadata,
    validate_model_key,
    write_atomic,
    write_parquet,
)


@pytest.mark.parametrize(
    "key", ["org/name", "EleutherAI/pythia-160m", "zoo/llama-interp-0.4", "gpt2"]
)
def test_valid_keys(key):
    assert validate_model_key(key) == key
    assert "/" not in key_to_filename(key, ".parquet")


@pytest.mark.parametrize(
    "key",
    [
        "../etc/passwd",
        "org/../x",
        "a/b/c",
        "/abs/path",
        "org/na me",
        "org/a,b",
        "org/x\n",
        "org/\x00x",
        "",
        "org/",
        "-org/x",
        "org/x.",
        "a--b/c",
    ],
)
def test_invalid_keys_are_refused_with_the_key_named(key):
    with pytest.raises(InvalidModelKey, match="invalid model key"):
        validate_model_key(key)


def test_paths_never_leave_the_base(tmp_path):
    assert path_inside(tmp_path, "likelihood", "a.parquet").parent == tmp_path / "likelihood"
    with pytest.raises(InvalidModelKey, match="escapes"):
        path_inside(tmp_path, "..", "x")


def test_failed_write_leaves_neither_partial_nor_temporary_file(tmp_path):
    final = tmp_path / "out.parquet"

    def boom(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(final, boom)
    assert list(tmp_path.iterdir()) == []


def test_parquet_carries_its_metadata(tmp_path):
    path = write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "x.parquet", {"corpus_hash": "h"})
    assert read_parquet_metadata(path) == {"corpus_hash": "h"}
    assert pl.read_parquet(path)["a"].to_list() == [1]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from modelmap.storage import write_atomic

def half_then_killed(tmp):
    tmp.write_bytes(b"half a file")
    os.kill(os.getpid(), signal.SIGKILL)

write_atomic(Path(sys.argv[1]), half_then_killed)
"""


def test_a_killed_writer_leaves_no_file_and_its_temporary_is_swept(tmp_path):
    final = tmp_path / "likelihood" / "org--m.parquet"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(final)])
    assert proc.returncode == -signal.SIGKILL
    assert not final.exists()
    (left,) = final.parent.iterdir()  # the killed writer's temporary file, nothing else
    # A live writer's temporary file and another host's are not touched.
    live = final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}.x.tmp"
    other_host = final.parent / f".{final.name}.elsewhere.1.x.tmp"
    live.write_bytes(b"")
    other_host.write_bytes(b"")

    write_parquet(pl.DataFrame({"a": [1, 2]}), final)
    assert pl.read_parquet(final)["a"].to_list() == [1, 2]
    assert not left.exists()
    assert sorted(final.parent.iterdir()) == sorted([final, live, other_host])


def _write_repeatedly(final, writer: int, until: float) -> None:
    df = pl.DataFrame({"writer": [writer] * 200_000, "i": range(200_000)})
    write_parquet(df, final, {"writer": writer})  # at least once, however slow the start
    while time.time() < until:
        write_parquet(df, final, {"writer": writer})


def test_two_writers_of_one_file_never_leave_it_partial_or_mixed(tmp_path):
    """Two processes rewrite the same partition file while a reader reads it: every read is
    one writer's complete table with that writer's metadata."""
    final = tmp_path / "org--m.parquet"
    write_parquet(pl.DataFrame({"writer": [0] * 200_000, "i": range(200_000)}), final)
    until = time.time() + 3
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_write_repeatedly, args=(final, w, until)) for w in (1, 2)]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        with open(final, "rb") as f:  # one open file: data and metadata of the same version
            table = pq.read_table(f)
        (writer,) = set(table["writer"].to_pylist())
        assert table.num_rows == 200_000
        meta = json.loads((table.schema.metadata or {}).get(b"modelmap", b"{}"))
        assert meta == ({"writer": writer} if writer else {})
        seen.add(writer)
    for w in writers:
        w.join()
        assert w.exitcode == 0
    # Which versions the reader catches depends on the machine's load; that it only ever
    # catches whole ones does not.
    assert seen <= {0, 1, 2} and pl.read_parquet(final)["writer"][0] in (1, 2)
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


UMASK_WRITER = """
import os, stat, sys
from pathlib import Path
import numpy as np
import polars as pl
from modelmap.storage import write_npy, write_parquet, write_text

os.umask(int(sys.argv[2], 8))
folder = Path(sys.argv[1])
paths = [
    write_text("x", folder / "a.txt"),
    write_parquet(pl.DataFrame({"a": [1]}), folder / "b.parquet"),
    write_npy(np.zeros(3), folder / "c.npy"),
]
print(" ".join(oct(stat.S_IMODE(p.stat().st_mode)) for p in paths))
"""


@pytest.mark.parametrize(("umask", "mode"), [("022", "0o644"), ("027", "0o640"), ("077", "0o600")])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    """In a subprocess, so that this process's umask is left as it is."""
    proc = subprocess.run(
        [sys.executable, "-c", UMASK_WRITER, str(tmp_path), umask],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split() == [mode] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.parquet", "c.npy"]
