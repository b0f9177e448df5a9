"""The shape of the code base: imports one way, stand-ins a leaf, Dagster internals in one place,
a thin Dagster layer. Read from the source files (the AST), so nothing here imports the product.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("modelmap", "modelmap_assets", "resources", "workshop")
PRODUCT = ("modelmap", "modelmap_assets", "resources")
#: The one module allowed to import Dagster's private modules (`dagster._...`).
WORKAROUNDS = "modelmap_assets.instance.workarounds"
MAX_LINES = 400  # per file of the code location
MAX_ASSET_BODY = 60  # lines of an asset function's body, its docstring aside


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported_names(path: Path, name: str) -> list[str]:
    """Every module named by an import anywhere in the file (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.append(base)
            names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def project_graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(target: str) -> str | None:
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph = {}
    for name, path in mods.items():
        targets = {resolve(t) for t in imported_names(path, name)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from modelmap_assets.cli import main\n")
    assert "modelmap_assets.cli.main" in imported_names(path, "x.m")
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_among_the_projects_modules():
    assert cycles(project_graph()) == []


def test_the_product_never_imports_the_workshop():
    offenders = [
        f"{name} imports {target}"
        for name, path in modules().items()
        if name.split(".")[0] in PRODUCT
        for target in imported_names(path, name)
        if target == "workshop" or target.startswith("workshop.")
    ]
    assert offenders == []


def test_the_workshop_is_not_installed_with_the_product():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("workshop") for pattern in include)


def private_dagster_uses(path: Path) -> list[str]:
    """`dagster._...` reached without an import statement: a private attribute of `dagster`
    (or `dg`), or a module name given to `import_module` / `__import__`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("dagster", "dg")
            and node.attr.startswith("_")
        ):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(
            ("import_module", "__import__")
        ):
            found += [
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("dagster._")
            ]
    return found


def test_private_uses_are_seen_without_an_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import importlib\nimportlib.import_module('dagster._x')\ndg._core\n")
    assert private_dagster_uses(path) == ["dagster._x", "dg._core"]


def test_dagster_internals_are_used_in_one_module_only():
    offenders = [
        f"{name} uses {target}"
        for name, path in modules().items()
        if name != WORKAROUNDS
        for target in [*imported_names(path, name), *private_dagster_uses(path)]
        if target.startswith(("dagster._", "dg._"))
    ]
    assert offenders == []


def asset_bodies(path: Path) -> dict[str, int]:
    """Lines of each asset function's body in `path`, the docstring left out."""
    bodies = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        decorators = [ast.unparse(d) for d in node.decorator_list]
        if not any(d.split("(")[0].endswith(("asset", "multi_asset")) for d in decorators):
            continue
        body = node.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        bodies[node.name] = node.end_lineno - body[0].lineno + 1 if body else 0
    return bodies


def test_the_code_location_is_thin():
    too_long = {}
    for path in sorted((ROOT / "modelmap_assets").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            too_long[where] = lines
        for asset, body in asset_bodies(path).items():
            if body > MAX_ASSET_BODY:
                too_long[f"{where}:{asset}"] = body
    assert too_long == {}
