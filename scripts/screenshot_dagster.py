"""Screenshots of the Dagster UI over a running webserver (`make ui`), for docs/.

    python scripts/screenshot_dagster.py [--url http://127.0.0.1:3000]

Debian's `chromium`, driven by Playwright, renders the asset graph, the `likelihood` asset
with its `models` partitions, and `model_map` with the map in its metadata.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from workshop.browser import open_page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    with open_page() as page:

        def shot(path: str, name: str, ready: str) -> None:
            page.goto(args.url + path)
            page.wait_for_timeout(5_000)
            skip = page.get_by_role("button", name="Skip")
            if skip.count() and skip.first.is_visible():  # the first-visit community dialog
                skip.first.click()
            page.get_by_text(ready).first.wait_for(timeout=90_000)
            page.wait_for_timeout(3_000)
            page.screenshot(path=str(args.out / name))
            print(f"{args.url}{path} -> {args.out / name}")

        shot("/asset-groups", "dagster_asset_graph.png", "regression_report")
        shot("/assets/likelihood", "dagster_likelihood.png", "likelihood")
        shot("/assets/model_map", "dagster_model_map.png", "model_map")
        page.get_by_text("[Show Markdown]").first.click()  # the map, from the metadata
        page.wait_for_timeout(3_000)
        page.screenshot(path=str(args.out / "dagster_map_metadata.png"))
        print(f"model_map metadata -> {args.out / 'dagster_map_metadata.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
