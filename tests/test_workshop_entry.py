"""The workshop is a leaf: the product reaches it through one lazy entry, the workshop uses the
product's public entry points alone, and the product's defaults name no stand-in folder."""

import ast
import sys
from pathlib import Path

import dagster as dg
import pytest

from modelmap_assets.cli import workshop_entry
from modelmap_assets.cli.main import main
from resources.models import ModelSourceResource

REPO = Path(__file__).resolve().parents[1]
#: What the workshop may import of the product: the science library, the definitions and the
#: command line's functions.
PUBLIC = ("modelmap", "modelmap_assets.definitions", "modelmap_assets.cli")


def product_imports(path: Path) -> list[str]:
    """Modules of the product (modelmap*, resources) that `path` imports, inside functions too."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] in ("modelmap", "modelmap_assets", "resources")]


def test_the_workshop_imports_public_entry_points_only():
    private = {
        f"{path.name} imports {name}"
        for path in sorted((REPO / "workshop").glob("*.py"))
        for name in product_imports(path)
        if not any(name == p or name.startswith(f"{p}.") for p in PUBLIC)
    }
    assert private == set()


def test_without_the_workshop_the_command_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("MODELMAP_CACHE", str(tmp_path / "cache"))
    for name in ("workshop", "workshop.commands"):  # not importable
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(workshop_entry, "CHECKOUT", tmp_path)  # an installed product
    with pytest.raises(SystemExit) as exit_:
        main(["zoo", "--small"])
    message = str(exit_.value)
    assert message.startswith("modelmap zoo: needs a source checkout") and "\n" not in message


def test_the_entry_loads_the_workshop_commands():
    commands = workshop_entry.workshop_commands("demo")
    assert commands.__name__ == "workshop.commands"
    assert Path(commands.__file__).resolve() == REPO / "workshop" / "commands.py"
    assert commands.smollm_keys(no_smollm=True, smollm_family=True) == ()
    assert commands.smollm_keys(no_smollm=False, smollm_family=False) == ("smollm2/135m-instruct",)
    assert len(commands.smollm_keys(no_smollm=False, smollm_family=True)) == 4


def test_the_default_local_models_folder_is_neutral(tmp_path):
    source = ModelSourceResource(cache_dir=str(tmp_path))
    assert source.folders == [tmp_path / "local"]
    assert ModelSourceResource(cache_dir=str(tmp_path), local_dirs="").folders == []


@pytest.mark.slow
def test_modelmap_zoo_trains_into_the_local_models_folder(tmp_path, monkeypatch, capsys):
    """`modelmap zoo --small` trains where the model source looks by default, registers the
    models, and `modelmap backfill zoo` reads the same registry."""
    from workshop.commands import zoo_keys

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELMAP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MODELMAP_LOCAL_MODELS", raising=False)
    (tmp_path / "home").mkdir()
    assert main(["zoo", "--small"]) == 0
    assert f"in {tmp_path / 'cache' / 'local'};" in capsys.readouterr().out
    keys = zoo_keys()
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_dynamic_partitions("models")) == set(keys)
    source = ModelSourceResource(cache_dir=str(tmp_path / "cache"))
    for key in keys:
        entry = source.describe(key)
        assert Path(entry["path"]).is_relative_to(tmp_path / "cache" / "local"), entry
        assert (Path(entry["path"]) / "config.json").is_file()
