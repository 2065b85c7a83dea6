"""The schema / loader split: core.schema declares, core.config loads, and every old import path still works."""
import ast
import dataclasses
from pathlib import Path

import core.config
import core.schema

ROOT = Path(__file__).resolve().parents[2]


def names_imported_from_core_config(root: Path) -> dict[str, str]:
    """Every name any module of the repository imports with ``from core.config import ...`` -> first file."""
    found: dict[str, str] = {}
    for f in sorted(root.rglob("*.py")):
        if ".venv" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "core.config":
                for alias in node.names:
                    found.setdefault(alias.name, str(f.relative_to(root)))
    return found


def test_every_name_the_repository_imports_from_core_config_exists():
    names = names_imported_from_core_config(ROOT)
    assert {"load_config", "Config", "ModelCfg", "CHOICES", "parse_params"} <= set(names)  # the scan sees them
    missing = {n: f for n, f in names.items() if not hasattr(core.config, n)}
    assert missing == {}


def test_schema_names_are_re_exported_as_the_same_objects():
    assert set(core.schema.__all__) <= set(core.config.__all__)
    for name in core.schema.__all__:
        assert getattr(core.config, name) is getattr(core.schema, name), name


def test_the_scan_finds_a_name_that_is_gone(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    from core.config import NoSuchName, load_config\n")
    names = names_imported_from_core_config(tmp_path)
    assert names == {"NoSuchName": "m.py", "load_config": "m.py"} and not hasattr(core.config, "NoSuchName")


def test_schema_ranges_and_choices_name_real_keys():
    """Each dotted key of RANGES / CHOICES is a field of the schema (a renamed field would leave a dead rule)."""
    cfg = core.schema.Config()
    for key in list(core.schema.RANGES) + list(core.schema.CHOICES):
        section, name = key.split(".")
        assert name in {f.name for f in dataclasses.fields(getattr(cfg, section))}, key


def test_schema_module_loads_no_yaml_machinery():
    tree = ast.parse(Path(core.schema.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "dataclasses"}
