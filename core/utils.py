"""Small helpers shared by the registries."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: ModuleType, skip: tuple[str, ...] = ()) -> None:
    """Import every module of ``package`` (so decorators register their entries), except ``skip``."""
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in skip and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
