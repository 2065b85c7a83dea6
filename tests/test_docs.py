"""The front page and the manual point at things that exist.

Every relative link of README.md and docs/*.md must name an existing file (and, with ``#anchor``, one of its
headings), and every repository path named in their text (``configs/...``, ``scripts/...``, ``bench/...``,
``tests/...``, ``docs/...`` and the library's module paths) must exist. A placeholder such as ``<method>`` matches
any name, but at least one file must match it; ``{a,b}`` is expanded. The README stays a front page: at most 200
lines, with the test command that ``.ci/run`` runs.
"""
from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

from core import schema

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# a repository path: one of the checked folders, then path characters; {a,b} groups and <placeholders> allowed
PATH = re.compile(r"(?<![\w./~:-])((?:configs|scripts|bench|tests|docs|core|engine|models|losses|search)/"
                  r"(?:\{[^}\s]*\}|<[^>\s]*>|[\w.*@+-]|/)*|data/\w+\.py)")


def doc_files(root: Path) -> list[Path]:
    """README.md and every page of docs/."""
    return [p for p in [root / "README.md"] if p.is_file()] + sorted((root / "docs").glob("*.md"))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def broken_links(root: Path) -> list[str]:
    """``page: target`` for every relative link whose file or heading does not exist."""
    bad = []
    for page in doc_files(root):
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.relative_to(root)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{page.relative_to(root)}: {target} (no such heading)")
    return bad


def expand(path: str) -> list[str]:
    """``a/{x,y}.txt`` -> ``a/x.txt``, ``a/y.txt``; placeholders ``<name>`` become ``*``."""
    parts = re.split(r"(\{[^}]*\})", re.sub(r"<[^>]*>", "*", path))
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def missing_paths(root: Path) -> list[str]:
    """``page: path`` for every repository path named in the text that matches no file or folder."""
    bad = []
    for page in doc_files(root):
        for raw in PATH.findall(page.read_text()):
            path = raw.rstrip(".")
            if "..." in path or path.endswith("/*") and path.count("/") == 1 and (root / path[:-2]).is_dir():
                continue
            for one in expand(path):
                one = one.rstrip("/")  # a module named without .py (engine/train_loop) is its file
                found = [p for o in (one, one + ".py") for p in (root.glob(o) if "*" in o else [root / o])]
                if not any(p.exists() for p in found):
                    bad.append(f"{page.relative_to(root)}: {path}")
    return sorted(set(bad))


def test_every_relative_link_exists():
    assert len(doc_files(ROOT)) >= 10
    assert broken_links(ROOT) == []


def test_every_named_repository_path_exists():
    assert missing_paths(ROOT) == []


def test_readme_is_a_front_page_with_the_ci_test_command():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci_command == ".venv/bin/python -m pytest" and ci_command in lines


def schema_keys() -> list[str]:
    """Every dotted key of the config schema (``loss.terms[i].<field>`` for the fields of one loss term)."""
    keys = []
    for section in dataclasses.fields(schema.Config):
        if section.name == "source":
            continue
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else getattr(schema, section.type)):
            keys.append(f"{section.name}.{f.name}")
    keys += [f"loss.terms[i].{f.name}" for f in dataclasses.fields(schema.LossTermCfg)]
    return keys


def test_config_reference_names_every_schema_key():
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    keys = schema_keys()
    assert "train.feature_cache_dir" in keys and "loss.terms[i].weight" in keys and len(keys) > 60
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_checks_catch_broken_links_anchors_and_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "configs" / "cpu").mkdir(parents=True)
    (tmp_path / "configs" / "cpu" / "ucm_vse.yaml").write_text("")
    (tmp_path / "docs" / "A.md").write_text("# Title\n## The part\n")
    (tmp_path / "README.md").write_text(
        "[ok](docs/A.md) [ok](docs/A.md#the-part) [gone](docs/B.md) [bad anchor](docs/A.md#nope) "
        "[web](https://example.org/x)\n"
        "`configs/cpu/ucm_<method>.yaml` `configs/cpu/ucm_vse.yaml`. `configs/cpu/{ucm_vse,ucm_galr}.yaml` "
        "`scripts/none.py` `tests/<x>_nothing.py` `../shared/configs/x.yaml` `configs/...`\n"
        "```bash\npython scripts/also_missing.py --config configs/cpu/ucm_vse.yaml\n```\n")
    assert broken_links(tmp_path) == ["README.md: docs/B.md", "README.md: docs/A.md#nope (no such heading)"]
    assert missing_paths(tmp_path) == ["README.md: configs/cpu/{ucm_vse,ucm_galr}.yaml", "README.md: docs/B.md",
                                       "README.md: scripts/also_missing.py", "README.md: scripts/none.py",
                                       "README.md: tests/<x>_nothing.py"]


def test_slug_follows_github():
    assert slug("Parity with the upstream code") == "parity-with-the-upstream-code"
    assert slug("`dual_encoder`: rsitr's pretrained baseline") == "dual_encoder-rsitrs-pretrained-baseline"
    assert slug("Evaluation recipes (CLIP-family anchors)") == "evaluation-recipes-clip-family-anchors"
    assert slug("Published numbers (for comparison)") == "published-numbers-for-comparison"
