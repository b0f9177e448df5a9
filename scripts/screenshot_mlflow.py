"""Screenshots of the MLflow UI over modelmap's store, with headless Chromium (for docs/).

    python scripts/screenshot_mlflow.py [--uri sqlite:///dagster_home/mlflow/mlflow.db]

Starts `mlflow ui` on a free loopback port, waits until it answers, and has Debian's
`chromium` (driven by Playwright) render the experiment's runs and the registered predictor.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from workshop.browser import open_page
from workshop.localhttp import free_port, wait_until_up


def screenshots(base: str, experiment_id: str, out: Path) -> None:
    """Runs table (model-training view), one scoring run, and the registered predictor."""
    with open_page() as page:

        def shot(url: str, name: str, ready: str) -> None:
            page.goto(url)
            page.get_by_text(ready).first.wait_for(timeout=60_000)
            page.wait_for_timeout(2_000)
            for label in ("Got it", "Close"):  # tours and the assistant panel
                for button in page.get_by_role("button", name=label).all():
                    if button.is_visible():
                        button.click()
            page.keyboard.press("Escape")
            page.wait_for_timeout(1_000)
            page.screenshot(path=str(out / name))
            print(f"{url} -> {out / name}")

        page.goto(f"{base}/#/experiments/{experiment_id}")
        toggle = page.get_by_text("Model training")
        if toggle.count():
            toggle.first.click()
        shot(f"{base}/#/experiments/{experiment_id}/runs", "mlflow_runs.png", "likelihood")
        run = page.get_by_role("link", name="likelihood zoo/llama-base").first
        run.wait_for(timeout=30_000)
        run_url = run.evaluate("a => a.href")
        shot(run_url, "mlflow_run.png", "tokens_per_s")
        shot(f"{base}/#/models/modelmap-benchmark-predictor", "mlflow_registry.png", "Version")


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
        screenshots(base, args.experiment_id, args.out)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
