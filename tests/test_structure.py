"""worker/ is a stack of stage packages (worker/__init__.py lists them): each imports only from the ones
below it, and no module of worker/ imports itself back through others. Every import counts, also those
inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import worker

ROOT = Path(worker.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The worker modules a file imports (a package's __init__ for `from worker.pkg import module`: the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("worker.") and name in MODULES}


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}
GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # worker/__init__.py
    if parts[1] in ("job", "segment_job"):
        return len(worker.LAYERS)  # the two kinds of job, each on one page, above every stage
    return worker.LAYERS.index(parts[1])


def test_every_package_is_a_declared_layer_with_a_docstring():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages == set(worker.LAYERS)
    for name in worker.LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / name / "__init__.py").read_text()))
        assert doc and "imports" in doc.lower(), \
            f"worker/{name}/__init__.py should say what it owns and what it may import"
    assert {path.name for path in ROOT.glob("*.py")} == {"__init__.py", "job.py", "segment_job.py"}


def test_imports_only_go_down_the_stack():
    upward = [f"{source} imports {target}" for source, targets in GRAPH.items() for target in targets
              if layer(target) > layer(source)]
    assert upward == []


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    """The graph is read from real files: a planted cycle and an upward import are found."""
    saved = dict(GRAPH)
    try:
        GRAPH["worker.request.errors"] = {"worker.request.settings"}
        GRAPH["worker.request.settings"] = {"worker.request.errors"}
        GRAPH["worker.planning.plan"] = GRAPH["worker.planning.plan"] | {"worker.render.segments"}
        cycle = "worker.request.errors -> worker.request.settings -> worker.request.errors"
        with pytest.raises(AssertionError, match=cycle):
            test_no_import_cycles()
        with pytest.raises(AssertionError, match="worker.planning.plan imports worker.render.segments"):
            test_imports_only_go_down_the_stack()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def top_level_imports(folder: Path) -> dict[str, set[str]]:
    """Each file's imported top-level packages, every import counted (as above)."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT.parent))] = names
    return found


def test_benchmarks_and_sample_media_import_nothing_from_tests():
    """The tests may use benchmarks' and media_samples' code, never the other way round (the media factories
    live in media_samples/, shared by both)."""
    offenders = [f"{path} imports tests" for folder in ("benchmarks", "media_samples", "local_platform")
                 for path, names in top_level_imports(ROOT.parent / folder).items() if "tests" in names]
    assert offenders == []
