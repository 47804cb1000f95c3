"""The house's floors: which sub-package may import which, and no circles.

Every ``densepure`` import in the package (module level or inside a function, ``import x`` or
``from x import y``) is read with :mod:`ast`. An import of a floor not in the importer's ALLOWED set,
or a cycle among modules, fails with the offending file and line, so arrows keep pointing down.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import densepure

PACKAGE = Path(densepure.__file__).parent

BASE = {"errors", "choices", "precision", "hashing", "validation", "__init__"}  # floor 0: every floor may use them (the root: __version__)
# floor -> the floors it may import (besides itself and BASE)
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "choices": set(),
    "precision": set(),
    "hashing": set(),
    "validation": set(),
    "stats": set(),
    "results": set(),
    "diffusion": set(),
    "noise": set(),
    "data": set(),
    "models": {"diffusion"},
    "artifacts": set(),
    "kernels": {"noise", "diffusion"},
    "engine": {"diffusion", "noise", "kernels", "models", "artifacts"},
    "export": {"models", "artifacts", "diffusion"},
    "certify": {"stats", "results", "engine", "diffusion", "noise", "models", "data", "kernels"},
    "serve": {"certify", "stats", "results", "engine", "diffusion", "noise", "models", "data", "kernels", "artifacts"},
    "distributed": {"certify", "stats", "results", "engine", "diffusion", "noise", "models", "data", "kernels", "artifacts"},
    "cli": {"certify", "stats", "results", "engine", "diffusion", "models", "data", "export", "artifacts",
            "serve", "distributed", "kernels"},
    "__init__": set(),
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported densepure module, line) for every import in ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "densepure"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] == "densepure":
                out.append((base, node.lineno))
    return out


def _graph() -> dict[str, list[tuple[str, int]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] = _imports(path, module)
    return graph


def test_every_floor_is_known():
    floors = {_floor(m) for m in _graph()}
    assert floors <= set(ALLOWED), f"add these floors to ALLOWED: {sorted(floors - set(ALLOWED))}"


def test_arrows_point_down():
    bad = []
    for module, imports in _graph().items():
        src = _floor(module)
        for target, line in imports:
            dst = _floor(target)
            if dst != src and dst not in BASE and dst not in ALLOWED[src]:
                bad.append(f"{module} (line {line}) imports {target}: {src} may not import {dst}")
    assert not bad, "\n".join(bad)


def test_no_module_cycles():
    graph = _graph()
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph.items():
        for target, _ in imports:
            # "from densepure.x import name" may name a submodule or an attribute: take the longest module
            while target not in graph and "." in target:
                target = target.rpartition(".")[0]
            if target != module and target in graph and not module.startswith(target + "."):
                edges[module].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_layer_checker_catches_an_upward_import(tmp_path):
    """The checker itself: an engine module importing certify is reported."""
    fake = tmp_path / "densepure" / "engine" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from densepure.certify.tasks import CertifyTask\n")
    (imported, line), = _imports(fake, "densepure.engine.bad")
    assert _floor(imported) == "certify" and line == 1
    assert "certify" not in ALLOWED[_floor("densepure.engine.bad")]
