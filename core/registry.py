"""A tiny name -> builder registry (the fvcore / timm idea, three verbs: register, get, names).

rsitr keeps three instances: ``MODELS`` (models/registry.py), ``LOSSES`` (losses/__init__.py) and
``DATASETS`` (data/presets.py). Entries register themselves with a decorator where they are defined.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator


class Registry:
    """Maps names to classes or functions.

    Args:
        name: what the registry holds, used in error messages ("model", "loss", ...).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator that registers an object under ``name`` (default: its ``__name__`` lower-cased)."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__.lower()
            if key in self._items and self._items[key] is not obj:
                raise KeyError(f"{self.name} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``; a KeyError lists every registered name."""
        if name not in self._items:
            raise KeyError(f"unknown {self.name} '{name}'; registered: {', '.join(sorted(self._items)) or '(none)'}")
        return self._items[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
