"""The import graph of `ups` and `ray_jobs`: no cycles, every module on a floor, no import side effects.

`lint-imports` (make check) enforces that imports point down the layers of pyproject.toml's
[tool.importlinter]; a layers contract does not forbid cycles among the modules of one floor, so
this test does, over every import grimp sees: top-level ones, those inside functions and those
under TYPE_CHECKING (a cycle there is still a cycle in the design, and one refactor away from an
ImportError). It also checks that every module is placed on a floor, so a new module cannot slip
past the contract by not being named in it, and that importing a module changes no environment
variable (Ray reads some once, at its own import: a module that set one would change how every
later Ray of the process behaves, depending on import order).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import grimp

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _graph() -> grimp.ImportGraph:
    sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy
    try:
        return grimp.build_graph("ups", "ray_jobs", include_external_packages=False, cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
            if len(component) > 1 or v in graph.find_modules_directly_imported_by(v):
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    shown = []
    for component in cycles:
        a, b = component[0], component[-1]
        there = graph.find_shortest_chain(importer=a, imported=b) or (a,)
        back = graph.find_shortest_chain(importer=b, imported=a) or (b,)
        shown.append(f"{len(component)} modules, e.g. {' -> '.join(there)} -> {' -> '.join(back[1:])}")
    assert not cycles, "import cycles:\n" + "\n".join(shown)


def test_cycle_finder_sees_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    """The check above is only as good as the graph: a cycle closed by an import inside a function,
    or by one under TYPE_CHECKING, must be found."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("def f():\n    from cyc import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyc import a\n")
    (pkg / "d.py").write_text("from cyc import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("cyc", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert _cycles(graph) == [["cyc.a", "cyc.b", "cyc.c"]]


def _layer_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return [name.strip("() ") for layer in layers for name in re.split(r"[|:]", layer)]


def test_every_module_is_on_a_floor() -> None:
    placed = _layer_modules()

    def on_a_floor(module: str) -> bool:
        return any(
            module == p or module.startswith(p + ".") or p.startswith(module + ".")  # in, under, or a package above
            for p in placed
        )

    assert [m for m in sorted(_graph().modules) if not on_a_floor(m)] == []


IMPORT_ALL = """
import importlib, os, pkgutil, sys
import ray  # what importing Ray itself sets (RAY_CLIENT_MODE) is Ray's, not ours
before = dict(os.environ)
import ups, ray_jobs
for pkg in (ups, ray_jobs):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
        changed = sorted(k for k in before.keys() | os.environ.keys() if before.get(k) != os.environ.get(k))
        if changed:
            sys.exit(f"importing {m.name} set {', '.join(changed)}")
"""


def test_importing_a_module_sets_no_environment_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}  # unset: a setdefault shows
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, (r.stderr or r.stdout).strip()[-1000:]
