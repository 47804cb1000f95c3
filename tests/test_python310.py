"""densepure runs on Python 3.10 (JetPack 6's Python, for which NVIDIA's Jetson torch wheels are built).

The source check is a lint rule held in every test run: no syntax, module or name that Python 3.10 lacks
(typing.Self, datetime.UTC, tomllib, ExceptionGroup, except*, enum.StrEnum, ...), read with ``ast``.
When a Python 3.10 interpreter is on the machine every file is also compiled with it; the slow test
runs scripts/check_py310.sh, which asks the package index whether every requirement has a cp310 wheel
for x86_64 and aarch64 (the script's full resolution takes minutes: run it by hand before a release).
"""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("densepure", "benchmarks", "scripts", "tests") for p in sorted((ROOT / d).rglob("*.py"))]
# module -> names added after 3.10 (the ones a codebase like this reaches for)
NEWER = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "TypeVarTuple",
               "Unpack", "Required", "NotRequired", "dataclass_transform", "override", "TypeAliasType"},
    "datetime": {"UTC"}, "enum": {"StrEnum", "ReprEnum", "verify", "global_enum", "EnumCheck", "member", "nonmember"},
    "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner"}, "hashlib": {"file_digest"},
    "contextlib": {"chdir"}, "operator": {"call"}, "itertools": {"batched"},
}
NEW_MODULES = {"tomllib", "wsgiref.types"}
NEW_BUILTINS = {"ExceptionGroup", "BaseExceptionGroup"}


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    where = lambda node: f"{name}:{node.lineno}"  # noqa: E731
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [f"{where(node)}: import {a.name}" for a in node.names if a.name in NEW_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module in NEW_MODULES:
                out.append(f"{where(node)}: from {node.module}")
            out += [f"{where(node)}: from {node.module} import {a.name}" for a in node.names
                    if a.name in NEWER.get(node.module, ())]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.attr in NEWER.get(node.value.id, ()):
                out.append(f"{where(node)}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in NEW_BUILTINS:
            out.append(f"{where(node)}: {node.id}")
        elif type(node).__name__ in ("TryStar", "TypeAlias", "TypeVar", "ParamSpec", "TypeVarTuple"):
            out.append(f"{where(node)}: {type(node).__name__} syntax (3.11+)")
    return out


def test_no_python_newer_than_310_in_the_sources():
    assert len(SOURCES) > 100
    found = [v for path in SOURCES for v in _violations(path)]
    assert not found, "Python 3.10 lacks: " + "; ".join(found[:10])


def test_the_lint_rule_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "probe.py"
    bad.write_text("from typing import Self\nimport tomllib\nfrom datetime import UTC\nimport enum\n"
                   "x = enum.StrEnum\ntry:\n    pass\nexcept* ValueError:\n    pass\n", encoding="utf-8")
    assert len(_violations(bad)) == 5, _violations(bad)


def test_package_declares_python_310():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^requires-python = ">=3\.10"$', text, re.M)


def _python310() -> str | None:
    for candidate in (os.environ.get("PYTHON310"), *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python"))),
                      "/usr/bin/python3.10"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def test_every_file_compiles_under_python_310(tmp_path):
    python = _python310()
    if python is None:
        pytest.skip("no Python 3.10 interpreter here (set PYTHON310); the lint rule above still ran")
    code = "import sys, py_compile\nfor p in sys.argv[1:]: py_compile.compile(p, cfile=p + 'c310', doraise=True)"
    copies = []
    for i, path in enumerate(SOURCES):  # compile copies: never write bytecode into the tree
        copy = tmp_path / f"{i}.py"
        copy.write_bytes(path.read_bytes())
        copies.append(str(copy))
    done = subprocess.run([python, "-c", code, *copies], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_requirements_have_cp310_wheels():
    """scripts/check_py310.sh with RESOLVE_NO_DEPS=1 (~40 s); skipped when the package index is unreachable."""
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "tqdm"], capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.skip("the package index is unreachable")
    env = {**os.environ, "RESOLVE_NO_DEPS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "check_py310.sh")], capture_output=True, text=True,
                          timeout=900, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("every requirement resolves to a wheel") == 2, done.stdout
