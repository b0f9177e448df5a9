"""The webserver and the daemon as `make ui` starts them, for tests and benchmarks."""

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from modelmap.localhttp import free_port, wait_until_up

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@contextlib.contextmanager
def running_platform(env: Mapping[str, str], log_dir: Path) -> Iterator[str]:
    """Start `dagster-daemon` and `dagster-webserver` (loopback, a free port) with `env`
    (which sets DAGSTER_HOME); yield the webserver's URL; stop both on exit. Their output goes
    to `<log_dir>/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    try:
        for name, args in [
            ("dagster-daemon", ["run"]),
            ("dagster-webserver", ["-h", "127.0.0.1", "-p", str(port)]),
        ]:
            procs.append(
                subprocess.Popen(
                    [str(BIN / name), *args, "-w", "workspace.yaml"],
                    cwd=REPO,
                    env=dict(env),
                    stdout=(log_dir / f"{name}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/server_info")
        yield url
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
