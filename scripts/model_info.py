"""Parameter counts, image GFLOPs and encoder throughput of a configured model.

    python scripts/model_info.py --config configs/rsitmd_galr.yaml --set model.pretrained=false [--json info.json]

Builds the model without any dataset: the vocabulary comes from ``data.vocab`` when that file exists, else a
placeholder word list of the dataset's published vocabulary size (so embedding tables have their real size).
Throughput is measured on random inputs on ``--device`` (default: auto) with ``--batch`` images / captions.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from core.config import Config, ConfigError, load_config  # noqa: E402
from engine.runner import resolve_device  # noqa: E402
from models.base import ModelContext  # noqa: E402
from models.registry import build_model  # noqa: E402

# published vocabulary sizes (words incl. <unk>) of the GaLR-family vocab files, used when no file is at hand
VOCAB_WORDS = {"rsitmd": 1349, "rsicd": 1225, "ucm": 238, "sydney": 137}  # NWPU: unknown, 1000 used
SUBWORD_VOCAB = {"bert": 30522, "clip": 49408}


def context_for(cfg: Config) -> ModelContext:
    """A ModelContext without reading the dataset."""
    if cfg.data.tokenizer in SUBWORD_VOCAB:
        return ModelContext(vocab_words=None, vocab_size=SUBWORD_VOCAB[cfg.data.tokenizer], scene_names=["s0", "s1"])
    if cfg.data.vocab and Path(cfg.data.vocab).is_file():
        from data.tokenize import load_vocab_json

        words = load_vocab_json(cfg.data.vocab)
    else:
        words = [f"w{i}" for i in range(1, VOCAB_WORDS.get(cfg.data.dataset, 1000))] + ["<unk>"]
    return ModelContext(vocab_words=words, vocab_size=len(words) + 1, scene_names=["s0", "s1"])


def fake_batches(cfg: Config, ctx: ModelContext, n: int, device: torch.device) -> tuple[dict, dict]:
    """Random images and token batches of the configured shapes."""
    s = cfg.data.image_size
    images = {"images": torch.randn(n, 3, s, s, device=device), "filenames": [f"x_{i}.png" for i in range(n)]}
    length = 77 if cfg.data.tokenizer == "clip" else min(20, cfg.data.max_tokens)
    tokens = torch.randint(1, min(ctx.vocab_size, 1000), (n, length), device=device)
    if cfg.data.tokenizer == "clip":
        tokens[:, 20:] = 0
        tokens[:, 19] = ctx.vocab_size - 1  # end-of-text has the largest id (CLIP takes the argmax position)
    lengths = torch.full((n,), 20 if cfg.data.tokenizer == "clip" else length, dtype=torch.long, device=device)
    mask = (torch.arange(tokens.shape[1], device=device)[None] < lengths[:, None]).long()
    return images, {"tokens": tokens, "lengths": lengths, "attention_mask": mask}


@torch.no_grad()
def throughput(fn, batch: dict, n: int, repeats: int = 3) -> float:
    fn(batch)  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        fn(batch)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n * repeats / (time.perf_counter() - t)


def model_info(cfg: Config, device: torch.device, batch: int = 8) -> dict:
    """The keys ``params_total params_trainable gflops_image images_per_s captions_per_s`` (+ context)."""
    ctx = context_for(cfg)
    model = build_model(cfg.model, ctx, cfg.source).to(device).eval()
    images, texts = fake_batches(cfg, ctx, batch, device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.encode_image({k: v[:1] for k, v in images.items()})
    return {
        "method": cfg.model.name, "config": cfg.source, "device": str(device),
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gflops_image": fc.get_total_flops() / 2e9,  # multiply-accumulates counted once, as papers report GFLOPs
        "images_per_s": throughput(model.encode_image, images, batch),
        "captions_per_s": throughput(model.encode_text, texts, batch),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="write the numbers as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    try:
        from engine.cli import resolve_config_path

        cfg = load_config(resolve_config_path(args.config), args.set)
        info = model_info(cfg, resolve_device(args.device), args.batch)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v:,.3f}" if isinstance(v, float) else f"{k:<{width}}  {v:,}" if isinstance(v, int) else f"{k:<{width}}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
