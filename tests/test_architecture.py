"""The one layering rule of docs/ARCHITECTURE.md: imports point down only.

Every ``import`` statement of every module is read with ``ast`` (module level and inside functions: a local import
that hides a cycle is still a violation) and checked against the layer table below.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> project packages it may import (besides itself). Lower layers first.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "data": {"core"},
    "models": {"core"},
    "losses": {"core"},
    "engine": {"core", "data", "models", "losses"},
    "search": {"core", "data", "models", "losses", "engine"},
}
LIBRARY = set(ALLOWED)
ENTRY_MODULES = {"train", "test", "scripts", "bench"}  # entry points: may import the library, never each other


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` (relative imports are within a package)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


def violations(root: Path) -> list[str]:
    """Every import under ``root`` that breaks the layer table or lets one entry point import another."""
    bad = []
    files = [f for pkg in LIBRARY for f in (root / pkg).rglob("*.py")]
    entries = [root / "train.py", root / "test.py"] + sorted((root / "scripts").glob("*.py")) + sorted(
        (root / "bench").glob("*.py"))
    for f in files + [e for e in entries if e.is_file()]:
        rel = f.relative_to(root)
        pkg = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        for line, mod in imported_modules(f.read_text()):
            top = mod.split(".")[0]
            if pkg in LIBRARY:
                if top in (LIBRARY | ENTRY_MODULES) - {pkg} - ALLOWED[pkg]:
                    bad.append(f"{rel}:{line} imports {mod} ({pkg} may import only {sorted(ALLOWED[pkg]) or 'nothing'})")
            elif top in ENTRY_MODULES and top != pkg:
                bad.append(f"{rel}:{line} imports {mod} (entry points share code through the library, not each other)")
    return sorted(bad)


def test_imports_point_down_only():
    assert violations(ROOT) == []


@pytest.mark.parametrize("pkg, source, culprit", [
    ("core", "from engine.metrics import evaluate\n", "engine.metrics"),
    ("data", "def f():\n    from models.base import ModelContext\n", "models.base"),  # a local import counts
    ("models", "import losses\n", "losses"),
    ("engine", "from search.index import load_index\n", "search.index"),
    ("losses", "import train\n", "train"),
])
def test_rule_catches_a_violating_import(tmp_path, pkg, source, culprit):
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "mod.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and culprit in found[0] and found[0].startswith(f"{pkg}/mod.py:")


def test_rule_catches_entry_points_importing_each_other(tmp_path):
    (tmp_path / "test.py").write_text("from train import resolve_config_path\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "a.py").write_text("import numpy\nfrom core.config import load_config\n")
    assert violations(tmp_path) == ["test.py:1 imports train (entry points share code through the library, "
                                    "not each other)"]


def test_allowed_imports_pass(tmp_path):
    for pkg, allowed in ALLOWED.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "m.py").write_text("".join(f"import {a}.x\n" for a in sorted(allowed)) + "import torch\n")
    assert violations(tmp_path) == []
