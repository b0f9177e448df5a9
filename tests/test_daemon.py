"""`modelmap-daemon`: Dagster's daemon with modelmap's backfill interval (fast tier; the
platform tests run it for real, and `test_platform_batch.py` times a backfill's pickup)."""

import subprocess
import sys

import dagster._daemon.backfill as backfill
import dagster._daemon.controller as controller
import pytest

from modelmap_assets.instance import daemon
from resources.settings import interval_setting


def test_the_backfill_loop_reads_the_interval_that_is_set(monkeypatch):
    monkeypatch.setattr(controller, daemon.CONSTANT, 30)  # restored after the test
    assert daemon.set_backfill_interval(4) is True
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 4


def test_a_dagster_without_the_constant_is_left_alone(monkeypatch):
    def loop(*args, **kwargs):  # a backfill loop that reads no such constant
        yield None

    monkeypatch.setattr(controller, daemon.CONSTANT, 30)
    monkeypatch.setattr(backfill, "execute_backfill_iteration_loop", loop)
    with pytest.warns(UserWarning, match="MODELMAP_BACKFILL_SECONDS is ignored"):
        assert daemon.set_backfill_interval(4) is False
    assert controller.DEFAULT_DAEMON_INTERVAL_SECONDS == 30


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
    probe = "import sys, modelmap_assets.instance.daemon; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
