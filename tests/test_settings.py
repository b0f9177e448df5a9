"""One settings reader: resource fields bound to environment variables, nothing read at import."""

import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import pytest

from resources.settings import (
    SETTINGS,
    Setting,
    build_resources,
    resource_classes,
    resource_config,
)

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_is_a_documented_field():
    for setting in SETTINGS:
        for resource, field in setting.targets:
            info = resource_classes()[resource].model_fields[field]
            assert info.description, f"{setting.variable}: {resource}.{field} has no description"


def test_settings_page_table_is_generated_from_the_fields():
    spec = importlib.util.spec_from_file_location(
        "settings_table", REPO / "scripts/settings_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (REPO / "docs/settings.md").read_text()
    assert module.replace_in(page) == page, "run: python scripts/settings_table.py"
    for setting in SETTINGS:
        assert f"`{setting.variable}`" in page


def test_set_variables_are_bound_as_env_vars_and_resolved_when_a_run_starts(monkeypatch):
    monkeypatch.setenv("MODELMAP_DTYPE", "float32")
    monkeypatch.setenv("MODELMAP_HUB_MAX_PER_TICK", "7")
    monkeypatch.setenv("MODELMAP_HUB_DENY", "spam/*,junk/*")
    monkeypatch.delenv("MODELMAP_DEVICE", raising=False)
    config = resource_config()
    assert config["scorer"]["dtype"] == dg.EnvVar("MODELMAP_DTYPE")
    assert "device" not in config["scorer"]  # not set: the field's default
    hub = build_resources()["hub"].process_config_and_initialize()
    assert hub.max_models_per_tick == 7
    assert hub.deny_list == ["spam/*", "junk/*"]
    scorer = build_resources()["scorer"].process_config_and_initialize()
    assert (scorer.dtype, scorer.device) == ("float32", "auto")


def test_one_dtype_default_with_or_without_make():
    assert build_resources({})["scorer"].dtype == "bfloat16"
    makefile = (REPO / "Makefile").read_text()
    assert "MODELMAP_DTYPE" not in makefile


def test_a_mapping_gives_plain_values_but_secrets_stay_bound(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    resources = build_resources({"MODELMAP_TOKEN_BUDGET": "4096", "HF_TOKEN": "x"})
    assert resources["scorer"].token_budget == 4096
    assert isinstance(resources["hub"].token, dg.EnvVar)
    assert "hf_secret" not in repr(resources["hub"].model_dump())


def test_an_old_name_still_works_with_a_warning():
    renamed = (Setting("MODELMAP_NEW_DEVICE", (("scorer", "device"),), old_names=("OLD_DEVICE",)),)
    with pytest.warns(FutureWarning, match="OLD_DEVICE is renamed MODELMAP_NEW_DEVICE"):
        config = resource_config({"OLD_DEVICE": "cpu"}, settings=renamed)
    assert config["scorer"]["device"] == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = {"OLD_DEVICE": "cpu", "MODELMAP_NEW_DEVICE": "cuda"}
        assert resource_config(both, settings=renamed)["scorer"]["device"] == "cuda"


def test_a_retired_setting_warns_what_replaces_it():
    with pytest.warns(FutureWarning, match="hub_models_sensor"):
        resource_config({"MODELMAP_HUB_SENSOR": "on"})


def test_definitions_load():
    """The smoke test of the wiring (what `dg check defs` does): every asset, job, sensor
    and resource of the code location resolves."""
    from modelmap_assets.definitions import defs

    dg.Definitions.validate_loadable(defs())


# Reads of os.environ (and os.getenv, putenv) made by this project's modules while importing.
_PROBE = r"""
import importlib, os, pkgutil, sys
roots = tuple(os.path.join(sys.argv[1], p) for p in ("modelmap", "modelmap_assets", "resources"))
seen = []
def caller():
    f = sys._getframe(3)  # caller -> _note -> __getitem__ -> the reader
    while f and f.f_code.co_filename.endswith(("os.py", "_collections_abc.py", "os>", "_abc>")):
        f = f.f_back
    return f
class Watched(type(os.environ)):
    def __getitem__(self, key):
        self._note("read", key); return super().__getitem__(key)
    def __setitem__(self, key, value):
        self._note("set", key); super().__setitem__(key, value)
    def __delitem__(self, key):
        self._note("delete", key); super().__delitem__(key)
    def _note(self, what, key):
        f = caller()
        if f is not None and f.f_code.co_filename.startswith(roots):
            seen.append(f"{f.f_code.co_filename}:{f.f_lineno} {what}s {key}")
os.environ.__class__ = Watched
import logging
# (mlflow configures its own "mlflow" logger when imported; the filter is ours)
handlers = {n: list(logging.getLogger(n).filters) for n in ("mlflow.pyfunc",)}
for pkg in ("modelmap", "modelmap_assets", "resources"):
    module = importlib.import_module(pkg)
    for info in pkgutil.walk_packages(module.__path__, pkg + "."):
        importlib.import_module(info.name)
after = {n: list(logging.getLogger(n).filters) for n in handlers}
if after != handlers:
    seen.append(f"logging changed at import: {handlers} -> {after}")
print("\n".join(seen))
"""


@pytest.mark.slow
def test_no_module_reads_the_environment_or_changes_global_state_at_import():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", out.stdout


def test_sensor_intervals_are_settings_and_bad_values_are_refused(monkeypatch):
    from modelmap_assets.definitions import defs
    from resources.settings import interval_setting

    assert interval_setting("MODELMAP_HUB_POLL_SECONDS", {}) == 60
    assert interval_setting("MODELMAP_AUTOMATION_SECONDS", {}) == 30
    for bad in ("0", "-5", "1.5", "soon"):
        with pytest.raises(ValueError, match="MODELMAP_HUB_POLL_SECONDS.*whole number of seconds"):
            interval_setting("MODELMAP_HUB_POLL_SECONDS", {"MODELMAP_HUB_POLL_SECONDS": bad})
    monkeypatch.setenv("MODELMAP_HUB_POLL_SECONDS", "7")
    monkeypatch.setenv("MODELMAP_AUTOMATION_SECONDS", "9")
    repo = defs().get_repository_def()
    assert repo.get_sensor_def("hub_models_sensor").minimum_interval_seconds == 7
    assert repo.get_sensor_def("modelmap_automation").minimum_interval_seconds == 9
