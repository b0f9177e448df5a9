"""The automation conditions the loaded code location runs, against those its decorators show."""

import ast

import dagster as dg
import pytest

from modelmap_assets.automation import conditions
from modelmap_assets.automation.conditions import (
    EAGER,
    coordinates_condition,
    reports_condition,
)
from modelmap_assets.definitions import ASSETS, defs


def decorated() -> dict[dg.AssetKey, dg.AutomationCondition | None]:
    return {key: c for a in ASSETS for key, c in a.automation_conditions_by_key.items()}


def loaded(monkeypatch, refresh: str | None) -> dict[dg.AssetKey, dg.AutomationCondition | None]:
    """Each asset's condition in the Definitions Dagster loads with `MODELMAP_MAP_REFRESH`."""
    if refresh is None:
        monkeypatch.delenv("MODELMAP_MAP_REFRESH", raising=False)
    else:
        monkeypatch.setenv("MODELMAP_MAP_REFRESH", refresh)
    graph = defs().resolve_asset_graph()
    return {key: graph.get(key).automation_condition for key in decorated()}


def changed(after: dict) -> set[str]:
    return {k.to_user_string() for k, c in decorated().items() if after[k] != c}


def test_the_decorators_show_the_conditions_that_run_by_default(monkeypatch):
    running = loaded(monkeypatch, None)
    assert running == decorated()
    labels = {k.to_user_string(): c.get_label() for k, c in running.items() if c is not None}
    assert labels["coordinates"] == "new scores, at most once per '0 * * * *'"
    assert labels["regression_report"] == labels["leakage_report"] == "refresh with the map"


def test_eager_changes_only_the_map_and_the_score_reports(monkeypatch):
    running = loaded(monkeypatch, EAGER)
    assert changed(running) == {"coordinates", "regression_report", "leakage_report"}
    assert running[dg.AssetKey("coordinates")] == coordinates_condition(EAGER)
    report = running[dg.AssetKey("regression_report")]
    assert report == reports_condition(EAGER)
    assert report.get_label() == "refresh after the map"


def test_another_schedule_changes_only_the_condition_of_coordinates(monkeypatch):
    running = loaded(monkeypatch, "*/5 * * * *")
    assert changed(running) == {"coordinates"}
    assert "*/5 * * * *" in running[dg.AssetKey("coordinates")].get_label()


@pytest.mark.parametrize("schedule", [EAGER, "0 * * * *", "*/5 * * * *"])
def test_conditions_are_built_alike_each_time(schedule):
    # `with_schedule` finds the conditions to replace by equality with the default's.
    assert coordinates_condition(schedule) == coordinates_condition(schedule)
    assert reports_condition(schedule) == reports_condition(schedule)


def test_the_conditions_module_imports_no_asset_module():
    tree = ast.parse(open(conditions.__file__).read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported == ["dagster"]
