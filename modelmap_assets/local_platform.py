"""The webserver and the daemon as `make ui` starts them, for tests and benchmarks."""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from modelmap.localhttp import free_port, wait_until_up

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class LocalPlatform:
    """`dagster-daemon` and `dagster-webserver` on loopback, each in its own process group so
    that stopping one also stops what it started (code servers, run workers)."""

    def __init__(self, env: Mapping[str, str], log_dir: Path):
        self.env = dict(env)
        self.log_dir = log_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.groups: list[int] = []  # every process group started, stopped daemons' included

    def _start(self, name: str, args: list[str]) -> None:
        log = (self.log_dir / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [str(BIN / name), *args, "-w", "workspace.yaml"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(self.procs[name].pid)

    def start_daemon(self) -> None:
        self._start("dagster-daemon", ["run"])

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_daemon()
        self._start("dagster-webserver", ["-h", "127.0.0.1", "-p", str(self.port)])
        wait_until_up(f"{self.url}/server_info")

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        """Stop the daemon alone (its code server goes with it; runs already started go on)."""
        proc = self.procs.pop("dagster-daemon")
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def stop(self) -> None:
        for group in self.groups:
            _signal_group(group, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for group in self.groups:  # whatever is left: code servers, run workers
            _signal_group(group, signal.SIGKILL)
        self.procs.clear()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


@contextlib.contextmanager
def local_platform(env: Mapping[str, str], log_dir: Path) -> Iterator[LocalPlatform]:
    """Start the daemon and the webserver with `env` (which sets DAGSTER_HOME); stop both, and
    everything they started, on exit. Their output goes to `<log_dir>/<name>.log`."""
    platform = LocalPlatform(env, log_dir)
    try:
        platform.start()
        yield platform
    finally:
        platform.stop()


@contextlib.contextmanager
def running_platform(env: Mapping[str, str], log_dir: Path) -> Iterator[str]:
    """`local_platform`, yielding only the webserver's URL."""
    with local_platform(env, log_dir) as platform:
        yield platform.url
