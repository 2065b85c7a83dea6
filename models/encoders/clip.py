"""open_clip CLIP models built by architecture name, with weights read from a local file only.

Architectures: any open_clip name (``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, ...) plus rsitr's own small test
architectures in :data:`EXTRA_ARCHS` (``rsitr-tiny``: two 64-wide blocks per tower, 64 px images, 32-d
embeddings; built by overriding an open_clip config, so nothing in open_clip's config registry changes).

Weights (``model.pretrained: true``): one local file, in either of the two layouts CLIP checkpoints ship in:

* OpenAI's released ``ViT-B-32.pt`` etc.: a TorchScript archive (fp16 weights). It is opened with
  ``torch.jit.load`` (TorchScript code, not a Python pickle) and only its state dict is used.
* open_clip state dicts (``*.pt``/``*.pth``/``*.bin`` or ``*.safetensors``), optionally under ``state_dict`` with a
  ``module.`` prefix as open_clip training checkpoints store them. RemoteCLIP (``RemoteCLIP-ViT-B-32.pt``) and
  GeoRSCLIP (``RS5M_ViT-B-32.pt``) publish this layout. Read with ``torch.load(weights_only=True)``.

Both layouts use the same key names (open_clip kept OpenAI's for ViT CLIPs). Activation: OpenAI's weights were
trained with QuickGELU, so ``quick_gelu: true`` is needed for them. RemoteCLIP's (RN50, ViT-B-32, ViT-L-14) and
GeoRSCLIP's ViT-B-32 evaluation code builds open_clip's model with ``pretrained='openai'``, which is the QuickGELU
OpenAI model, and loads their state dict into it, so ``quick_gelu: true`` (the default) is how their published
numbers were computed (data/recipes.py). ``quick_gelu: false`` is open_clip's plain architecture, as
``open_clip.create_model(arch)`` builds it without a pretrained tag (tests/models/test_clip_open_clip.py checks both
against open_clip).
No weight is ever downloaded: open_clip's pretrained tags are not accepted, only file paths.
"""
from __future__ import annotations

import copy
import logging
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, resize_pos_embed, resize_text_pos_embed
from open_clip.transformer import VisionTransformer

from core.errors import ConfigError, DataError
from core.files import RequiredFile, check_required_files
from models.encoders.pretrained import check_coverage, weight_keys

log = logging.getLogger(__name__)

# rsitr's own architectures: open_clip model-config overrides applied on top of the named base config
EXTRA_ARCHS: dict[str, dict[str, Any]] = {
    "rsitr-tiny": {
        "base": "ViT-B-32",
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        # the real BPE vocabulary (49408) and context (77) so the standard CLIP tokenizer feeds it
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}
_JIT_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints stored in OpenAI's JIT state dicts


def arch_names() -> list[str]:
    """Every accepted architecture name (open_clip's plus :data:`EXTRA_ARCHS`)."""
    return sorted(open_clip.list_models()) + sorted(EXTRA_ARCHS)


def arch_embed_dim(arch: str) -> int:
    """Joint embedding size of ``arch`` (read from its config, no model is built)."""
    if arch in EXTRA_ARCHS:
        return int(EXTRA_ARCHS[arch]["embed_dim"])
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"unknown CLIP architecture '{arch}'; open_clip knows e.g. ViT-B-32, ViT-B-16, ViT-L-14, "
                         f"rsitr adds {', '.join(EXTRA_ARCHS)}")
    return int(cfg["embed_dim"])


def build_clip(arch: str, pretrained: bool, weights: str = "", quick_gelu: bool = True, precision: str = "fp32",
               what: str = "") -> torch.nn.Module:
    """Build an open_clip model and, when ``pretrained``, load ``weights`` from a local file.

    Args:
        arch: open_clip architecture name or a key of :data:`EXTRA_ARCHS`.
        pretrained: load ``weights``; False builds random weights and reads no file.
        weights: local checkpoint (OpenAI TorchScript ``.pt`` or an open_clip state dict).
        quick_gelu: QuickGELU activations (OpenAI weights) instead of GELU.
        precision: ``fp32``, or ``fp16`` to cast the weights as OpenAI's ``clip.load`` does on GPU (linear, conv
            and attention weights in fp16; LayerNorms computed in fp32).
        what: description for the missing-file error.

    Returns:
        The open_clip model (``open_clip.model.CLIP`` for the standard ViT architectures), on CPU.
    """
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"CLIP precision must be fp32 or fp16, got '{precision}'")
    if pretrained:
        check_required_files(clip_required_files(weights, arch, what), "missing pretrained file",
                             "or set model.pretrained=false for random init")
    arch_embed_dim(arch)  # unknown names fail here with the list of choices
    extra = copy.deepcopy(EXTRA_ARCHS.get(arch, {}))
    base = extra.pop("base", arch)
    # pretrained=None, pretrained_image/text=False: open_clip must neither download nor look up tags
    model = open_clip.create_model(base, pretrained=None, pretrained_image=False, pretrained_text=False,
                                   precision=precision, quick_gelu=quick_gelu, **extra)
    if pretrained:
        load_clip_weights(model, weights)
    return model


def clip_required_files(weights: str, arch: str, what: str = "", key: str = "model.params.weights"
                        ) -> list[RequiredFile]:
    """The CLIP weights file a pretrained model reads."""
    return [RequiredFile(key, weights, f"{what or f'CLIP {arch} weights'}: OpenAI's released {arch}.pt (TorchScript) "
                                       f"or an open_clip state dict (RemoteCLIP-{arch}.pt, RS5M_{arch}.pt from "
                                       f"GeoRSCLIP)")]


def _is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip with a ``code/`` folder), as OpenAI's CLIP files are."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def read_clip_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from an OpenAI TorchScript file, a safetensors file or a torch checkpoint."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated or foreign file -> one line naming it
        raise DataError(f"cannot read {path} (model.params.weights) as CLIP weights ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise DataError(f"{path} holds no CLIP state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v) and k not in _JIT_ONLY_KEYS}


def load_clip_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a local CLIP checkpoint into an open_clip ``model`` (strict: every tensor must fit).

    Positional embeddings of another resolution / context length are interpolated (open_clip's helpers).
    """
    state = read_clip_state(path)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    own = model.state_dict()
    # non-persistent buffers (the causal attn_mask) appear in traced TorchScript state dicts: not weights, drop them
    transient = {n for n, _ in model.named_buffers()} - set(own)
    state = {k: v for k, v in state.items() if k not in transient}
    missing = sorted(set(own) - set(state))
    expected = weight_keys(own)
    fits = [k for k in expected if k in state and tuple(state[k].shape) == tuple(own[k].shape)]
    check_coverage(path, len(fits), len(expected), "the CLIP model", "model.params.weights",
                   missing=[k for k in expected if k not in set(fits)])
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise DataError(
            f"{path} does not fit this CLIP architecture: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]}); "
            f"check model.params.arch")
    model.load_state_dict(state, strict=True)
    log.info("loaded CLIP weights from %s (%d tensors)", path, len(state))


def is_vit_clip(model: torch.nn.Module) -> bool:
    """True for open_clip's standard CLIP class with a ViT image tower (the layout OpenAI's code also uses)."""
    return isinstance(model, CLIP) and isinstance(model.visual, VisionTransformer)


def tower_widths(model: CLIP) -> tuple[int, int]:
    """(text width, visual width) of a ViT CLIP: the residual-stream sizes the adapter reads."""
    return int(model.transformer.width), int(model.visual.transformer.width)

