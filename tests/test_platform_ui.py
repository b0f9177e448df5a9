"""The Dagster UI in headless Chromium (Debian's package, driven by Playwright) against the
webserver and daemon on loopback: a user picks three of the six models in the asset catalog,
launches a backfill of their scores, and finds the refreshed map in `model_map`'s metadata.

Screenshots of each step are kept in `test-artifacts/ui/` (git-ignored).
"""

import os
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from dagster._core.execution.backfill import BulkActionStatus
from platformtools import describe, reports_read_the_final_map, wait_for, wait_until_idle

from modelmap_assets.cli.main import register, wait_for_refresh
from modelmap_assets.scoring.batches import RANGE_END_TAG, RANGE_START_TAG
from workshop.browser import open_page
from workshop.platform import local_platform, prepare

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("MODELMAP_TEST_ARTIFACTS", REPO / "test-artifacts")) / "ui"


@pytest.fixture
def platform(tmp_path):
    platform = prepare(tmp_path)
    register(platform.instance, [m.key for m in platform.zoo])  # six models, as the sensor would
    yield platform
    platform.instance.dispose()


@pytest.mark.slow
def test_backfill_three_models_from_the_ui_and_see_the_map(platform):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    instance = platform.instance
    chosen = ["zoo/gpt2-base", "zoo/llama-base", "zoo/llama-ft-bible"]
    assert set(chosen) < set(instance.get_dynamic_partitions("models"))
    with local_platform(platform.env, platform.logs) as servers, open_page() as page:

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))

        page.goto(f"{servers.url}/assets")
        page.get_by_test_id("checkbox-likelihood").wait_for(state="attached", timeout=120_000)
        shot("1-catalog")
        for asset in ("likelihood", "benchmark_scores"):
            page.locator("label", has=page.get_by_test_id(f"checkbox-{asset}")).click()
        page.get_by_role("button", name="Materialize selected").click()
        page.get_by_text("Select a partition or create one").first.click()
        for key in chosen:
            page.get_by_role("menuitem").filter(has=page.get_by_text(key, exact=True)).click()
        page.keyboard.press("Escape")
        page.get_by_text("3 partitions", exact=True).wait_for()
        page.wait_for_timeout(1_000)  # the menu's fade-out
        shot("2-launch-dialog")
        launched = time.time()
        page.get_by_role("button", name="Launch backfill").click()

        (request,) = wait_for(instance.get_backfills, 60, "the UI to launch a backfill")
        page.goto(f"{servers.url}/runs/b/{request.backfill_id}?tab=runs")
        done = wait_for(
            lambda: (
                (b := instance.get_backfill(request.backfill_id)).status.value != "REQUESTED" and b
            ),
            600,
            "the backfill to finish",
            every_s=2,
        )
        page.reload()
        page.get_by_text(request.backfill_id).first.wait_for(timeout=60_000)
        page.wait_for_timeout(3_000)
        shot("3-backfill")
        assert done.status == BulkActionStatus.COMPLETED_SUCCESS, done.status
        for asset in ("likelihood", "benchmark_scores"):  # the three chosen, not the other two
            assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(chosen)
        # The two neighbouring models share one run (the assets' backfill policy); the third,
        # not next to them in the partition order, gets a run (a range of one) of its own.
        runs = [r for r in instance.get_runs() if RANGE_START_TAG in r.tags]
        ranges = sorted((r.tags[RANGE_START_TAG], r.tags.get(RANGE_END_TAG)) for r in runs)
        assert ranges == [
            ("zoo/gpt2-base", "zoo/gpt2-base"),
            ("zoo/llama-base", "zoo/llama-ft-bible"),
        ], ranges
        # Declarative automation refreshes the map and the reports once the scores land; the
        # reports read the new Q (not before it exists).
        assert wait_for_refresh(instance, launched, timeout_s=300, poll_s=2) == []
        mapped = pl.read_parquet(platform.data / "model_map" / "map.parquet")
        assert sorted(mapped["key"]) == sorted(chosen)
        assert reports_read_the_final_map(instance) == []

        page.goto(f"{servers.url}/assets/model_map")
        page.get_by_text("[Show Markdown]").first.click()
        image = page.locator("img[src^='data:image/png']").first
        image.wait_for(timeout=60_000)
        assert image.evaluate("img => img.naturalWidth") > 200
        page.wait_for_timeout(1_000)  # the dialog's fade-in
        shot("4-map-metadata")
        wait_until_idle(instance)
        # The daemon and the webserver share the platform's code server: neither started one
        # of its own (with `workspace.yaml` each would, the daemon a new one every minute).
        assert servers.private_code_servers() == []
    failed = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert not failed, "\n\n".join(describe(instance, run) for run in failed)
    # dagster.yaml turns the "Join the Dagster community" dialog off (`nux`): none was shown.
