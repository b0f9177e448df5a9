"""Screenshots of the MLflow UI over modelmap's store, with headless Chromium (for docs/).

    python scripts/screenshot_mlflow.py [--uri sqlite:///dagster_home/mlflow/mlflow.db]

Starts `mlflow ui` on a free loopback port, waits until it answers, and has Debian's
`chromium` render the experiment's run list and the registered predictor to PNG files.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


def screenshot(url: str, out: Path, size: str = "1600,1000", budget_ms: int = 20_000) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                "chromium",
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    print(f"{url} -> {out}")


def main() -> int:
    home = Path(os.environ.get("DAGSTER_HOME", REPO / "dagster_home"))
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uri", default=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--experiment-id", default="1")
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            args.uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/health")
        screenshot(f"{base}/#/experiments/{args.experiment_id}", args.out / "mlflow_runs.png")
        screenshot(
            f"{base}/#/models/modelmap-benchmark-predictor", args.out / "mlflow_registry.png"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
