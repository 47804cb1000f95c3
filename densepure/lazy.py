"""Package namespaces whose names load on first use (PEP 562), so light commands stay light.

A package's ``__init__`` lists which of its modules defines which name; a name is imported from its
module the first time it is read, then kept as a plain attribute. ``densepure presets`` and
``--version`` read only what needs no torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, namespace: dict, exports: Mapping[str, tuple[str, ...]]
                 ) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose ``exports`` maps each module (relative to
    the package) to the names it defines; ``namespace`` is the package's ``globals()``."""
    module_of = {name: module for module, names in exports.items() for name in names}
    names = sorted(module_of)

    def getattr_(name: str) -> object:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return names, getattr_, dir_
