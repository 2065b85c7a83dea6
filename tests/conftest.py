"""Shared fixtures: repository paths, the shared reference data, one tiny trained baseline run per session."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.chdir(ROOT)  # configs use paths relative to the repository root (data.root: data)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip when this checkout has no shared folder beside it."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not available")
    return path


@pytest.fixture(scope="session")
def upstream_keys() -> Path:
    """../shared/docs/upstream_keys, or skip."""
    path = SHARED / "docs" / "upstream_keys"
    if not path.is_dir():
        pytest.skip("../shared/docs/upstream_keys is not available")
    return path


@pytest.fixture(scope="session")
def tiny_vse_run(tmp_path_factory) -> Path:
    """configs/tests/tiny_vse.yaml trained for 2 epochs through train.main; returns its fold0/ run folder."""
    import train

    out = tmp_path_factory.mktemp("tiny_vse")
    assert train.main(["--config", "configs/tests/tiny_vse.yaml", "--output-dir", str(out)]) == 0
    return out / "tiny_vse" / "fold0"
