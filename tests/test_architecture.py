"""The layer map of docs/architecture.md holds in the source: every module of srn_hf is in exactly one layer, its
imports point only to its own layer or a lower one, and no module imports one that imports it back.

Imports are read from the source (the `ast` of every file, imports inside functions included), not from a run.
"""

import ast
import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "srn_hf"
LAYER_ROW = re.compile(r"^\| \*\*(?P<layer>[a-z ]+)\*\* \| (?P<modules>.+?) \|", re.MULTILINE)


def layer_map() -> dict[str, int]:
    """`{module: layer index}` from the table of docs/architecture.md (rows top to bottom: core first)."""
    text = (REPOSITORY / "docs" / "architecture.md").read_text(encoding="utf-8")
    layers = {}
    for index, row in enumerate(LAYER_ROW.finditer(text)):
        for module in re.findall(r"`(srn_hf[\w.]*)`", row["modules"]):
            assert module not in layers, f"{module} is in two layers of docs/architecture.md"
            layers[module] = index
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The srn_hf modules that `path` imports anywhere in its source (absolute or relative imports)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `from srn_hf.data import x` -> srn_hf.data
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def test_every_module_is_in_one_layer_of_the_map():
    layers, graph = layer_map(), import_graph()
    assert set(graph) - set(layers) == set(), "modules missing from docs/architecture.md's layer map"
    assert set(layers) - set(graph) == set(), "the layer map names modules that do not exist"


def test_imports_point_only_downward():
    layers, graph = layer_map(), import_graph()
    upward = sorted(
        f"{module} (layer {layers[module]}) imports {target} (layer {layers[target]})"
        for module, targets in graph.items()
        for target in targets
        if module != "srn_hf" and target.startswith("srn_hf.") and layers[target] > layers[module]
    )
    assert upward == []


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    cycles, visiting, done = [], [], set()

    def visit(module: str) -> None:
        visiting.append(module)
        for target in sorted(graph[module]):
            if target in visiting:
                cycles.append(" -> ".join([*visiting[visiting.index(target) :], target]))
            elif target not in done:
                visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done and module != "srn_hf":  # the package's __init__ gathers the public API
            visit(module)
    assert cycles == []


@pytest.mark.parametrize("module", ["srn_hf.hub", "srn_hf.cli", "srn_hf.app"])
def test_a_front_end_is_imported_by_no_core_or_service_module(module):
    layers, graph = layer_map(), import_graph()
    importers = sorted(
        name for name, targets in graph.items() if module in targets and layers.get(name, 0) < layers[module]
    )
    assert importers == []


def test_no_test_file_imports_another_or_the_conftest():
    """The tests share plain helpers through tests/helpers.py and fixtures through conftest.py, never by importing a
    test file (or conftest, which pytest alone loads)."""
    imports = []
    for path in sorted((REPOSITORY / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            imports += [
                f"{path.relative_to(REPOSITORY)}: {name}"
                for name in names
                if name.split(".")[-1].startswith(("test_", "conftest"))
            ]
    assert imports == []
