"""A fresh local platform for tests, benchmarks and the demo: DAGSTER_HOME, data, models,
corpus, and the code server, daemon and webserver as a deployment runs them.

`prepare()` lays out a DAGSTER_HOME with the committed instance file (SQLite `dagster.yaml`,
or it with `storage.postgres.yaml` layered on), builds the small zoo as the local models and
materializes a corpus; `local_platform(env, logs)` then runs one code server, the daemon and
the webserver. (`make ui` is the development loop: there the daemon and the webserver each
load `workspace.yaml` themselves, so the daemon picks up edited code within a minute.)
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from modelmap_assets.cli.main import materialize_corpus
from modelmap_assets.definitions import build_resources
from workshop.localhttp import free_port, port_open, wait_until_up
from workshop.zoo import ZooModel, ZooSpec, build_zoo

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Dagster's daemon with modelmap's backfill interval (modelmap_assets/instance/daemon.py).
DAEMON = "modelmap-daemon"
CODE_SERVER = "dagster"  # `dagster code-server start`: its process starts every run
LOCATION = "modelmap_assets.definitions"  # the code location's name, as in workspace.yaml


class LocalPlatform:
    """One code server, `modelmap-daemon` and `dagster-webserver` on loopback, each in its own
    process group so that stopping one also stops what it started (run workers).

    The daemon and the webserver share the code server, as in a deployment (docs/deploy.md):
    the code location is imported once, and the daemon's workspace refresh (every 60 s) asks
    that server for the definitions again instead of starting a new server process, which
    imported torch and the code location (about 4 s of CPU) beside the scoring runs every
    minute. The UI's "Reload" reloads it."""

    def __init__(self, env: Mapping[str, str], log_dir: Path, port: int | None = None):
        self.env = dict(env)
        self.log_dir = log_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.code_port = free_port()  # the code server's, kept across a restart
        self.groups: list[int] = []  # every process group started, stopped daemons' included

    @property
    def workspace(self) -> Path:
        """The workspace of the daemon and the webserver: the code server of this platform."""
        return self.log_dir / "workspace.yaml"

    def _start(self, name: str, args: list[str], workspace: bool = True) -> None:
        log = (self.log_dir / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [str(BIN / name), *args, *(["-w", str(self.workspace)] if workspace else [])],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(self.procs[name].pid)

    def start_code_server(self) -> None:
        """Start the code server (`wait_for_code_server` waits until it serves)."""
        self._start(
            CODE_SERVER,
            ["code-server", "start", "-m", LOCATION, "-d", str(REPO), "--location-name", LOCATION]
            + ["-h", "127.0.0.1", "-p", str(self.code_port)],
            workspace=False,
        )
        self.workspace.write_text(
            "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
            f"      port: {self.code_port}\n      location_name: {LOCATION}\n"
        )

    def start_daemon(self) -> None:
        if CODE_SERVER not in self.procs:  # stopped with the daemon's machine
            self.start_code_server()
        wait_for_code_server(self.code_port, self.procs[CODE_SERVER])
        self._start(DAEMON, ["run"])

    def start(self, wait: bool = True) -> None:
        """Start the code server, then the daemon and the webserver once it serves; with
        `wait=False` only the code server, and `wait_until_up` starts the others (the caller
        does other work while the code location loads)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.start_code_server()
        if wait:
            self.wait_until_up()

    def wait_until_up(self) -> None:
        if "dagster-webserver" not in self.procs:
            self.start_daemon()
            self._start("dagster-webserver", ["-h", "127.0.0.1", "-p", str(self.port)])
        wait_until_up(f"{self.url}/server_info")

    def private_code_servers(self) -> list[int]:
        """Pids of code servers that the daemon or the webserver started for themselves
        (none while both use the shared one); Linux only (/proc)."""
        parents = {self.procs[n].pid for n in (DAEMON, "dagster-webserver") if n in self.procs}
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            if ppid in parents and b"api grpc" in cmdline:
                found.append(int(stat.parent.name))
        return found

    def stop_daemon(self, sig: int = signal.SIGTERM, whole_group: bool = False) -> None:
        """Stop the daemon: alone (runs already started go on), or with the code server and
        the runs' processes (`whole_group`, as when the machine they share dies; `start_daemon`
        then starts the code server again, on the same port)."""
        proc = self.procs.pop(DAEMON)
        if whole_group:
            _signal_group(proc.pid, sig)
            server = self.procs.pop(CODE_SERVER)
            _signal_group(server.pid, sig)
            server.wait(timeout=60)
        else:
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


def wait_for_code_server(port: int, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    """Wait until the code server on `port` serves, then check it with `dagster api
    grpc-health-check`. `dagster code-server start` loads the code location before it opens
    its port, so a port that accepts connections is a loaded code location (or one that failed
    to load, which the UI then shows with its error)."""
    deadline = time.time() + timeout_s
    while not port_open(port):
        if proc.poll() is not None:
            raise RuntimeError(f"the code server exited ({proc.returncode}); see dagster.log")
        if time.time() > deadline:
            raise TimeoutError(f"the code server on port {port} did not load in {timeout_s:.0f} s")
        time.sleep(0.5)
    check = subprocess.run(
        [str(BIN / CODE_SERVER), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise RuntimeError(f"the code server on port {port} is not serving: {check.stdout}")


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


@dataclass
class PreparedPlatform:
    root: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    zoo: list[ZooModel]

    @property
    def data(self) -> Path:
        return Path(self.env["MODELMAP_DATA"])

    @property
    def models_dir(self) -> Path:
        return Path(self.env["MODELMAP_LOCAL_MODELS"])

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def copy_batch(self, n: int, prefix: str = "batch/m") -> list[str]:
        """`n` model keys `<prefix>NN`, each a copy of a small-zoo model folder (copies, not
        links: the storage guard refuses paths that resolve outside the models folder)."""
        keys = []
        for i in range(n):
            key = f"{prefix}{i:02d}"
            source = self.zoo[i % len(self.zoo)].local_path(self.models_dir)
            shutil.copytree(source, self.models_dir / key)
            keys.append(key)
        return keys


def prepare(
    root: Path,
    *,
    postgres: bool = False,
    n_texts: int = 40,
    extra_env: Mapping[str, str] | None = None,
) -> PreparedPlatform:
    """A platform in `root`: the committed dagster.yaml as DAGSTER_HOME's (PostgreSQL storage
    layered on it when `postgres`), the small zoo as the local models, a corpus of `n_texts`
    materialized. `extra_env` adds or overrides variables (MODELMAP_PG_* for PostgreSQL,
    MODELMAP_MLFLOW, ...)."""
    home = root / "dagster_home"
    home.mkdir(parents=True)
    layers = ["dagster.yaml", *(["storage.postgres.yaml"] if postgres else [])]
    instance_yaml = "".join((REPO / "dagster_home" / name).read_text() for name in layers)
    (home / "dagster.yaml").write_text(instance_yaml)
    zoo_dir = root / "models"
    zoo = build_zoo(zoo_dir, spec=ZooSpec.small(), log=lambda s: None)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MODELMAP_DATA": str(root / "data"),
        "MODELMAP_CACHE": str(root / "cache"),
        "MODELMAP_LOCAL_MODELS": str(zoo_dir),
        "MODELMAP_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        # Tests watch the map follow each batch; the product default is hourly. They list
        # the Hub and evaluate automation every few seconds (product defaults 60 s and 30 s).
        "MODELMAP_MAP_REFRESH": "eager",
        "MODELMAP_HUB_POLL_SECONDS": "5",
        "MODELMAP_AUTOMATION_SECONDS": "5",
        **(extra_env or {}),
    }
    # The instance file reads MODELMAP_PG_* from this process's environment as well.
    os.environ.update({k: v for k, v in env.items() if k.startswith("MODELMAP_PG_")})
    instance = dg.DagsterInstance.from_config(str(home))
    materialize_corpus(instance, build_resources(env), {"n_texts": n_texts})
    return PreparedPlatform(root=root, env=env, instance=instance, zoo=zoo)
