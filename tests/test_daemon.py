"""`modelmap-daemon`: Dagster's daemon with modelmap's backfill interval (fast tier; the
interval itself is a workaround tested in `test_workarounds.py`, the platform tests run the
daemon for real, and `test_platform_batch.py` times a backfill's pickup)."""

import subprocess
import sys

import pytest

from resources.settings import interval_setting


def test_the_setting_defaults_to_5_s_and_refuses_bad_values():
    assert interval_setting("MODELMAP_BACKFILL_SECONDS", {}) == 5
    assert interval_setting("MODELMAP_BACKFILL_SECONDS", {"MODELMAP_BACKFILL_SECONDS": "2"}) == 2
    for bad in ("0", "1.5", "soon"):
        with pytest.raises(ValueError, match="MODELMAP_BACKFILL_SECONDS.*whole number"):
            interval_setting("MODELMAP_BACKFILL_SECONDS", {"MODELMAP_BACKFILL_SECONDS": bad})


def test_the_command_is_dagsters_daemon_without_torch():
    """`modelmap-daemon` answers as `dagster-daemon` and imports no model code (the daemon
    stays at Dagster's own ~100 MB)."""
    out = subprocess.run(
        [sys.executable, "-m", "modelmap_assets.instance.daemon", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Run any daemons configured on the DagsterInstance" in out.stdout
    assert "Dagster workaround backfill_interval on" in out.stderr  # one line, before Dagster's
    probe = "import sys, modelmap_assets.instance.daemon; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
