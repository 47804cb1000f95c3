"""The house's floors: which sub-package may import which, and no circles.

The allowed imports are the table of ``docs/architecture.md`` (its one source). Every ``densepure``
import in the package (module level or inside a function, ``import x``, ``from x import y`` and
``from densepure.pkg import submodule``) is read with :mod:`ast`. A test fails on an import of a floor
the table does not allow, on a permission no import uses, on a cycle in the table, and on a cycle
among modules, naming the offending file and line.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import densepure

PACKAGE = Path(densepure.__file__).parent
DOC = PACKAGE.parent / "docs" / "architecture.md"
BASE = {"errors", "choices", "precision", "hashing", "validation", "paths", "lazy", "__init__"}  # floor 0 (the root: __version__)


def allowed_table(text: str) -> dict[str, set[str]]:
    """floor -> the floors it may import, from the doc's table rows ``| `floor` | what | a, b |``."""
    table: dict[str, set[str]] = {"__init__": set()}
    for line in text.splitlines():
        row = re.fullmatch(r"\|\s*`(\w+)`\s*\|.*\|\s*([\w, -]+?)\s*\|", line.strip())
        if row:
            floor, imports = row.groups()
            table[floor] = set() if imports.strip() == "-" else {f.strip() for f in imports.split(",")}
    return table


ALLOWED = allowed_table(DOC.read_text(encoding="utf-8"))


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str, modules: set[str] = frozenset()) -> list[tuple[str, int]]:
    """(imported densepure module, line) for every import in ``path``, relative ones resolved; in
    ``from pkg import name`` the name is the module imported when ``pkg.name`` is one of ``modules``."""
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
            if base.split(".")[0] != "densepure":
                continue
            named = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            out += [(m, node.lineno) for m in named] or [(base, node.lineno)]
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, list[tuple[str, int]]]:
    """module -> its densepure imports (module, line), for every module under ``root``."""
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    return {module: _imports(path, module, modules) for module, path in paths.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` (node -> successors) as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def module_edges(graph: dict[str, list[tuple[str, int]]]) -> dict[str, set[str]]:
    """module -> the modules it imports (``from x import name`` of a non-module name counts as ``x``)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph.items():
        for target, _ in imports:
            while target not in graph and "." in target:
                target = target.rpartition(".")[0]
            if target != module and target in graph and not module.startswith(target + "."):
                edges[module].add(target)
    return edges


def floor_edges(graph: dict[str, list[tuple[str, int]]]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph.items():
        for target, _ in imports:
            if _floor(target) != _floor(module) and _floor(target) not in BASE:
                used[_floor(module)].add(_floor(target))
    return used


def test_every_floor_is_in_the_table():
    floors = {_floor(m) for m in import_graph()}
    assert floors <= set(ALLOWED) | BASE, f"add these floors to docs/architecture.md: {sorted(floors - set(ALLOWED))}"
    assert set(ALLOWED) - BASE <= floors, f"the table names floors that do not exist: {sorted(set(ALLOWED) - floors)}"


def test_arrows_point_down():
    bad = []
    for module, imports in import_graph().items():
        src = _floor(module)
        for target, line in imports:
            dst = _floor(target)
            if dst != src and dst not in BASE and dst not in ALLOWED.get(src, set()):
                bad.append(f"{module} (line {line}) imports {target}: {src} may not import {dst}")
    assert not bad, "\n".join(bad)


def test_the_table_is_as_tight_as_the_code():
    used = floor_edges(import_graph())
    loose = {floor: sorted(allowed - used[floor]) for floor, allowed in ALLOWED.items() if allowed - used[floor]}
    assert not loose, f"docs/architecture.md allows imports no module makes (remove them): {loose}"


def test_the_table_has_no_cycle():
    cycle = find_cycle({floor: set(allowed) for floor, allowed in ALLOWED.items()})
    assert cycle is None, "the floors' table allows a cycle: " + " -> ".join(cycle)


def test_no_module_cycles():
    cycle = find_cycle(module_edges(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_floor_zero_imports_no_floor():
    for module, imports in import_graph().items():
        if _floor(module) in BASE - {"__init__"}:
            assert all(_floor(t) in BASE for t, _ in imports), f"{module} imports above floor 0"


# -- the checker itself ------------------------------------------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "densepure"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_checker_catches_an_upward_import(tmp_path):
    """An engine module importing certify is an arrow up."""
    fake = tmp_path / "densepure" / "engine" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from densepure.certify.tasks import CertifyTask\n")
    (imported, line), = _imports(fake, "densepure.engine.bad")
    assert _floor(imported) == "certify" and line == 1
    assert "certify" not in ALLOWED[_floor("densepure.engine.bad")]


def test_the_checker_sees_cycles_written_as_submodule_imports(tmp_path):
    """``from densepure.pkg import submodule`` names the submodule: a cycle through it is found."""
    root = _package(tmp_path, {"a/__init__.py": "", "a/one.py": "from densepure.b import two\n",
                               "b/__init__.py": "", "b/two.py": "from densepure.a import one\n"})
    graph = import_graph(root)
    assert graph["densepure.a.one"] == [("densepure.b.two", 1)]
    assert find_cycle(module_edges(graph)) is not None
    # the same files importing a non-module name of the package: no cycle
    root = _package(tmp_path / "other", {"a/__init__.py": "X = 1\n", "a/one.py": "from densepure.b import Y\n",
                                         "b/__init__.py": "Y = 2\n", "b/two.py": "from densepure.a import X\n"})
    assert find_cycle(module_edges(import_graph(root))) is None


def test_the_checker_refuses_a_two_way_permission():
    """A table that lets two floors import each other is a cycle, even if the code uses one direction."""
    table = allowed_table("| `engine` | x | certify |\n| `certify` | y | engine |\n| `noise` | z | - |\n")
    assert table == {"__init__": set(), "engine": {"certify"}, "certify": {"engine"}, "noise": set()}
    assert find_cycle(table) in (["certify", "engine", "certify"], ["engine", "certify", "engine"])
