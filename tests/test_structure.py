"""The house's floors (docs/internals.md, "The rooms"): every module imports only rooms below its
own, or its own package's modules, and no imports go round in a circle, lazy ones included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "ipcmagic"
#: each room's floor: a room imports rooms on lower floors, and modules of its own package
FLOORS = {
    "base": 0,
    "version": 0,
    "cluster": 1,
    "torchrun": 1,
    "engine": 1,
    "controller": 1,
    "plain_client": 1,
    "kernel": 1,
    "magics": 2,
    "__main__": 3,
    "__init__": 3,
}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__``)."""
    named = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        named[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return named


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in it, at the top or in a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    # a module's own packages are imported before it, by Python, whatever it says
    return {module for module in found if module in known and not f"{name}.".startswith(f"{module}.")}


def room(module: str) -> str:
    return "__init__" if module == "ipcmagic" else module.split(".")[1]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_floor():
    assert {room(module) for module in modules()} == set(FLOORS)


def test_no_room_imports_one_above_it_or_beside_it():
    wrong = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if room(target) != room(module) and FLOORS[room(target)] >= FLOORS[room(module)]
    ]
    assert wrong == []


def test_no_import_circle():
    edges, circles, done = graph(), [], set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            circles.append(" -> ".join([*path[path.index(module) :], module]))
        elif module not in done:
            for target in sorted(edges[module]):
                visit(target, [*path, module])
            done.add(module)

    for module in sorted(edges):
        visit(module, [])
    assert circles == []


def test_the_check_sees_an_upward_import(tmp_path):
    """The check reads relative imports in functions as the package does (it can fail)."""
    known = {"ipcmagic.base.slurm": tmp_path / "slurm.py", "ipcmagic.magics": PACKAGE / "magics.py"}
    known["ipcmagic.base.slurm"].write_text("def f():\n    from ..magics import IPClusterMagics\n")
    assert imports("ipcmagic.base.slurm", known["ipcmagic.base.slurm"], known) == {"ipcmagic.magics"}
