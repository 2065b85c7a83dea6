"""train.py with every source of per-process randomness or statistics switched off, for tests/engine/test_ddp.py.

Under DDP each process draws its own dropout masks and (without SyncBatchNorm, which has no CPU path) normalises
with its own batch statistics, so those alone would make 2 processes differ from 1. What the DDP test checks is
everything else (data sharding, gathered losses, KAMCL's gathered queues), so here every Dropout has p = 0 (HF
attention's ``dropout_prob`` too) and every BatchNorm stays in eval mode. Run as ``python tests/engine/ddp_train.py
<train.py args>`` or under ``torchrun``.

``--float64`` (first argument) runs the model in float64: the summed gradients of 1 process and the all-reduced ones
of 2 differ by float rounding only, about 1e-7 in float32, enough to swap near-tied test pairs of a barely trained tiny
model; in float64 that noise is about 1e-16, so final metrics can be compared at 1e-4.

Two more leading options, for the resume test (2 processes against 2 processes, where per-process randomness is
what is tested): ``--keep-randomness`` leaves dropout and BatchNorm as the method has them, and
``--kill-after-epoch K`` ends the process abruptly (``os._exit``, no clean-up, as a kill) right after rank 0 has
written the ``last.pth`` of epoch K; torchrun then stops the other rank.
"""
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import engine.runner as runner  # noqa: E402
import train  # noqa: E402

_build = runner.build_model


def _eval_mode(module: nn.Module):
    return lambda mode=True: nn.Module.train(module, False)


def build_without_randomness(*args, **kwargs):
    model = _build(*args, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "dropout_prob", None), float):
            m.dropout_prob = 0.0
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = _eval_mode(m)
            m.eval()
    return model


def _float64_inputs(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook for every module: float32 tensors from the loader become float64."""
    return tuple(a.double() if isinstance(a, torch.Tensor) and a.dtype == torch.float32 else a for a in args)


def build_float64(*args, **kwargs):
    return build_without_randomness(*args, **kwargs).double()


KILLED = 137  # the exit status of a killed process
_save = runner.save_checkpoint


def kill_after(epoch: int):
    """A ``save_checkpoint`` that ends the process right after writing the ``last.pth`` of ``epoch``."""
    def save(path, state):
        _save(path, state)
        if Path(path).name == "last.pth" and state["epoch"] == epoch:
            sys.stdout.flush()
            os._exit(KILLED)
    return save


runner.build_model = build_without_randomness

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--float64"]:
        argv = argv[1:]
        torch.set_default_dtype(torch.float64)
        nn.modules.module.register_module_forward_pre_hook(_float64_inputs)
        runner.build_model = build_float64
    if argv[:1] == ["--keep-randomness"]:
        argv = argv[1:]
        runner.build_model = _build
    if argv[:1] == ["--kill-after-epoch"]:
        runner.save_checkpoint = kill_after(int(argv[1]))
        argv = argv[2:]
    sys.exit(train.main(argv))
