"""The project's import graph, read from the source (every import, lazy ones too): no module
imports a module that imports it back, and analysis/ imports no model runtime (no ray, no torch,
no textcraftor module but the stdlib-only atomic writer and the numpy-only bootstrap)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("textcraftor", "study", "analysis")


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Absolute names of everything ``module`` imports (``from a import b``: ``a.b``, and ``a``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: None if path.name == "__init__.py" else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports (a name resolves to its longest module prefix)."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        edges = set()
        for name in imported_names(module, path):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def test_no_module_imports_a_module_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 60 and "textcraftor.trainer" in graph["textcraftor.train"]
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        raise AssertionError(f"import circle: {' → '.join(error.args[1])}") from None
    assert set(order) == set(graph)


def test_the_graph_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        assert set(error.args[1]) == {"a", "b", "c"}
    else:
        raise AssertionError("no CycleError for a → b → c → a")


def test_analysis_imports_no_model_runtime():
    modules = project_modules()
    for module, path in modules.items():
        if not module.startswith("analysis"):
            continue
        for name in imported_names(module, path):
            top = name.split(".")[0]
            assert top not in ("ray", "torch", "diffusers", "transformers", "open_clip"), (
                module, name)
            assert top != "textcraftor" or name in (
                "textcraftor", "textcraftor.atomic", "textcraftor.atomic.write_text_atomic",
                ) or name.startswith("textcraftor.bootstrap"), (module, name)
            if top == "study":  # study modules analysis may read: plain data, no Ray, no torch
                assert name.split(".")[1] in ("objectives", "overhead", "summary", "tags"), (
                    module, name)


def test_the_bootstrap_analysis_reads_needs_only_numpy():
    modules = project_modules()
    tops = {name.split(".")[0] for name in imported_names("textcraftor.bootstrap",
                                                          modules["textcraftor.bootstrap"])}
    assert tops <= {"__future__", "math", "warnings", "collections", "dataclasses", "numpy"}, tops
