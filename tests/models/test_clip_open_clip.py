"""The CLIP rows equal open_clip itself: full-size checkpoints load through the shipped configs and give
open_clip's embeddings.

A checkpoint in open_clip's state-dict layout (the layout RemoteCLIP and GeoRSCLIP publish) is written from
open_clip's own random init (``pretrained=None``, nothing downloaded) for ViT-B-32 and RN50 (RemoteCLIP also
releases an RN50). It goes through ``clip_zeroshot`` and ``clip_finetune`` built from ``configs/ucm_clip_*.yaml``
(with ``quick_gelu: false``: the architecture ``open_clip.create_model(arch)`` builds) and through
``open_clip.create_model(arch, pretrained=FILE)``, open_clip's own loader. Captions are tokenized by rsitr's ``data.tokenize.ClipTokenizer`` on one
side and ``open_clip.get_tokenizer`` on the other. Pass: image and text embeddings within 1e-5 (max abs).

The code also claims OpenAI's layout (models/encoders/clip.py): the released TorchScript archive and a plain state
dict with OpenAI's key names, fp16 weights and its three integer entries (``input_resolution``, ``context_length``,
``vocab_size``). Both are written for ViT-B-32 and compared with ``open_clip.load_openai_model(FILE)``, open_clip's
loader for OpenAI files, through the shipped config's default (``quick_gelu: true``). The wrong activation setting
must miss by far more than the tolerance, so the check can fail. Full-size models (100-150M parameters): slow.
"""
from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from core.config import load_config
from data.tokenize import ClipTokenizer
from models.base import ModelContext
from models.registry import build_model

pytestmark = pytest.mark.slow
TOL = 1e-5
CAPTIONS = ["Many planes are parked next to a long building in an airport.", "a river with green trees on both sides",
            "two tennis courts beside a road", "dense residential area"]
ARCHS = {"ViT-B-32": 512, "RN50": 1024}


def _images() -> torch.Tensor:
    """Two CLIP-normalised-like 224 px images (the encoders see any float batch)."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _rsitr_tokens() -> torch.Tensor:
    tok = ClipTokenizer("ViT-B-32")
    return tok.collate([tok.encode(c) for c in CAPTIONS])["tokens"]


def _embed(model, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model.encode_image(images).float(), model.encode_text(tokens).float()


def _rsitr(method: str, arch: str, path: Path, *sets: str):
    cfg = load_config(f"configs/ucm_clip_{method}.yaml", [f"model.params.weights={path}", f"model.params.arch={arch}",
                                                           f"model.embed_dim={ARCHS[arch]}", *sets])
    return build_model(cfg.model, ModelContext(), cfg.source).eval()


def _max_diff(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    return tuple((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.fixture(scope="module", params=list(ARCHS))
def open_clip_file(request, tmp_path_factory) -> tuple[str, Path, tuple[torch.Tensor, torch.Tensor]]:
    """(arch, open_clip-layout state-dict file, open_clip's embeddings of the test batch with that file)."""
    arch = request.param
    torch.manual_seed(0)
    source = open_clip.create_model(arch, pretrained=None)
    path = tmp_path_factory.mktemp(arch) / f"RemoteCLIP-{arch}.pt"
    torch.save(source.state_dict(), path)
    del source
    reference = open_clip.create_model(arch, pretrained=str(path)).eval()
    tokens = open_clip.get_tokenizer(arch)(CAPTIONS)
    assert torch.equal(tokens, _rsitr_tokens())  # the same BPE ids on both sides
    out = _embed(reference, _images(), tokens)
    return arch, path, out


@pytest.mark.parametrize("method", ["zeroshot", "finetune"])
def test_open_clip_layout_gives_open_clips_embeddings(open_clip_file, method) -> None:
    arch, path, expected = open_clip_file
    model = _rsitr(method, arch, path, "model.params.quick_gelu=false")
    assert model.zero_shot == (method == "zeroshot")
    got = _embed(model, {"images": _images()}, {"tokens": _rsitr_tokens()})
    diffs = _max_diff(got, expected)
    print(f"clip_{method} {arch}: max |image diff|, |text diff| = {diffs}")
    assert max(diffs) <= TOL, diffs


def _embed_rsitr(model) -> tuple[torch.Tensor, torch.Tensor]:
    return _embed(model, {"images": _images()}, {"tokens": _rsitr_tokens()})


@pytest.fixture(scope="module")
def openai_files(tmp_path_factory) -> dict[str, Path]:
    """OpenAI-layout ViT-B-32 files: a state dict (fp16, with the integer entries) and a TorchScript archive."""
    tmp = tmp_path_factory.mktemp("openai")
    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-32", pretrained=None, quick_gelu=True).eval()
    state = {k: v.half() for k, v in model.state_dict().items()}
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, tmp / "ViT-B-32-state.pt")
    # OpenAI's archive keeps the causal mask out of its state dict (open_clip registers it as a buffer)
    mask = model.attn_mask
    del model._buffers["attn_mask"]
    model.attn_mask = mask
    traced = torch.jit.trace(model, (torch.zeros(1, 3, 224, 224), torch.zeros(1, 77, dtype=torch.long)),
                             check_trace=False)
    assert "attn_mask" not in traced.state_dict()
    traced.half().save(str(tmp / "ViT-B-32.pt"))
    return {"state_dict": tmp / "ViT-B-32-state.pt", "torchscript": tmp / "ViT-B-32.pt"}


@pytest.mark.parametrize("layout", ["state_dict", "torchscript"])
def test_openai_layout_gives_open_clips_openai_embeddings(openai_files, layout) -> None:
    path = openai_files[layout]
    reference = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    expected = _embed(reference, _images(), open_clip.get_tokenizer("ViT-B-32")(CAPTIONS))
    del reference
    got = _embed_rsitr(_rsitr("zeroshot", "ViT-B-32", path))  # the shipped config: quick_gelu true
    diffs = _max_diff(got, expected)
    print(f"OpenAI {layout}: max |image diff|, |text diff| = {diffs}")
    assert max(diffs) <= TOL, diffs
    if layout == "state_dict":  # the check can fail: the wrong activation for these weights
        wrong = _max_diff(_embed_rsitr(_rsitr("zeroshot", "ViT-B-32", path, "model.params.quick_gelu=false")),
                          expected)
        assert min(wrong) > 100 * TOL, wrong
