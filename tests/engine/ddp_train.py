"""train.py with every source of per-process randomness or statistics switched off, for tests/engine/test_ddp.py.

Under DDP each process draws its own dropout masks and (without SyncBatchNorm, which has no CPU path) normalises
with its own batch statistics, so those alone would make 2 processes differ from 1. What the DDP test checks is
everything else (data sharding, gathered losses, KAMCL's gathered queues), so here every Dropout has p = 0 (HF
attention's ``dropout_prob`` too) and every BatchNorm stays in eval mode. Run as ``python tests/engine/ddp_train.py
<train.py args>`` or under ``torchrun``.
"""
import sys
from pathlib import Path

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


runner.build_model = build_without_randomness

if __name__ == "__main__":
    sys.exit(train.main(sys.argv[1:]))
