"""Where KAMCL's CPU training step goes faster, each part against its baseline measured in the same run.

    python bench/bench_kamcl.py [--batch 100] [--words 19] [--repeats 7]

At the shapes of ``configs/cpu/ucm_kamcl.yaml`` (batch 100, 32 px: the channel GPO pools 192 channels of 64
values, the word GPO 2L = 38 elements of 512; the caption length is ``--words``), forward + backward where the
model trains it:

1. GPO's pooling weights: the bidirectional GRU over the positional codes, as one loop over both directions
   (``GPO.bidirectional_gru``, the CPU path) against ``nn.GRU`` on packed sequences (the CUDA path).
2. GPO's per-dimension sort: NumPy's argsort + gather (``descending_order``) against ``torch.sort``.
3. The momentum update of the key encoders: two multi-tensor ops against two ops per parameter.
4. Adam's step over KAMCL's parameters: ``optim.fused: true`` against PyTorch's default CPU loop.

Median of ``--repeats`` runs each, interleaved so that machine load hits both alike. Entry point only: it measures
library code (models.encoders.gpo, models.kamcl, engine.optim) and torch.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

from core.config import OptimCfg, load_config  # noqa: E402
from engine.benchmark import markdown_table  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from models.base import ModelContext  # noqa: E402
from models.encoders.gpo import GPO, descending_order, positional_encoding_1d  # noqa: E402
from models.registry import build_model  # noqa: E402


def per_call_ms(fn: Callable[[], object], repeats: int, inner: int = 5) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner * 1e3)
    return statistics.median(times)


def pair(ours: Callable[[], object], base: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(ours ms, baseline ms), measured interleaved."""
    o, b = [], []
    for _ in range(repeats):
        b.append(per_call_ms(base, 1))
        o.append(per_call_ms(ours, 1))
    return statistics.median(o), statistics.median(b)


def gru_case(gpo: GPO, lengths: torch.Tensor, k: int) -> tuple[Callable, Callable]:
    mask = (torch.arange(k)[None] < lengths[:, None]).unsqueeze(-1)
    pes = positional_encoding_1d(gpo.d_pe, k).unsqueeze(0).expand(len(lengths), -1, -1) * mask

    def ours() -> None:
        fwd, bwd = gpo.bidirectional_gru(pes, lengths)
        ((fwd + bwd) * mask).sum().backward()

    def base() -> None:
        packed = pack_padded_sequence(pes, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(gpo.gru(packed)[0], batch_first=True, total_length=k)
        (out.chunk(2, -1)[0] + out.chunk(2, -1)[1]).mul(mask).sum().backward()
    return ours, base


def sort_case(x: torch.Tensor) -> tuple[Callable, Callable]:
    """Both sorts of ``x`` [B, D, K] (a leaf that requires grad), forward + backward of a weighted sum."""
    w = torch.randn(x.shape[0], 1, x.shape[2])

    def ours() -> None:
        (x.gather(-1, descending_order(x)) * w).sum().backward()

    def base() -> None:
        (x.contiguous().sort(dim=-1, descending=True).values * w).sum().backward()
    return ours, base


def sort_input(shape: tuple[int, int, int]) -> torch.Tensor:
    """A [B, K, D] batch of sets seen as [B, D, K], as GPO.pool sorts it."""
    return torch.randn(shape).transpose(1, 2).requires_grad_()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--words", type=int, default=19, help="longest caption in the batch (2L GPO elements)")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    b, k_words = args.batch, 2 * args.words
    gpo = GPO(32, 32)
    rows = []
    ours, base = gru_case(gpo, torch.full((1,), 192), 192)  # channel GPO: every set has 192 elements
    rows.append(("GPO weights, channels (1 set of 192)", "packed nn.GRU", *pair(ours, base, args.repeats)))
    lengths = torch.arange(4, k_words + 1, 2)  # one set per distinct caption length, as GPO.forward runs them
    ours, base = gru_case(gpo, lengths, k_words)
    rows.append((f"GPO weights, words ({len(lengths)} lengths up to {k_words})", "packed nn.GRU",
                 *pair(ours, base, args.repeats)))
    ours, base = sort_case(sort_input((b, 192, 64)))
    rows.append((f"GPO sort, channels [{b}, 64, 192]", "torch.sort", *pair(ours, base, args.repeats)))
    ours, base = sort_case(sort_input((b, k_words, 512)))
    rows.append((f"GPO sort, words [{b}, 512, {k_words}]", "torch.sort", *pair(ours, base, args.repeats)))

    logging.getLogger("models.kamcl").setLevel(logging.ERROR)  # no tag files: the bench does not need them
    cfg = load_config("configs/cpu/ucm_kamcl.yaml", ["model.params.tags_path=", "model.params.tag_vocab_path="])
    model = build_model(cfg.model, ModelContext(vocab_size=301, vocab_words=[f"w{i}" for i in range(300)]))
    q = [p.detach() for p in (*model.visual_q.parameters(), *model.text_q.parameters())]
    keys = [*model.visual_k.parameters(), *model.text_k.parameters()]

    def per_parameter() -> None:
        for pq, pk in zip(q, keys):
            pk.mul_(0.999).add_(pq, alpha=0.001)
    rows.append((f"momentum update ({len(keys)} tensors)", "2 ops per tensor",
                 *pair(model.on_train_step_start, per_parameter, args.repeats)))
    for prm in model.parameters():
        if prm.requires_grad:
            prm.grad = torch.randn_like(prm) * 1e-3
    fused, loop = (build_optimizer(OptimCfg(lr=1e-6, fused=f), model) for f in (True, False))
    n = sum(prm.numel() for prm in model.parameters() if prm.requires_grad) / 1e6
    rows.append((f"Adam step ({n:.1f} M parameters)", "for-loop Adam", *pair(fused.step, loop.step, args.repeats)))

    print(f"KAMCL CPU profile shapes, batch {b}, {torch.get_num_threads()} threads, forward + backward where it "
          f"trains; median of {args.repeats}\n")
    print(markdown_table([("part", "l"), ("baseline", "l"), ("rsitr, ms", "r"), ("baseline, ms", "r"),
                          ("speed-up", "r")],
                         [(name, what, f"{o:.2f}", f"{bl:.2f}", f"{bl / o:.2f}x") for name, what, o, bl in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
