"""stdlib logging to ``log.txt`` + console, and a metric writer (JSON lines + optional TensorBoard)."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(run_dir: Path | None, is_main: bool, level: int = logging.INFO) -> None:
    """Log to the console (rank 0 only) and, when ``run_dir`` is given, to ``run_dir/log.txt``."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rsitr", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(level if is_main else logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and is_main:
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt"))
    for h in handlers:
        h.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        h._rsitr = True  # type: ignore[attr-defined]
        root.addHandler(h)


class MetricWriter:
    """Appends one JSON object per call to ``metrics.jsonl``; mirrors scalars to TensorBoard in ``tb/``.

    Keys are namespaced (``train/loss``, ``val/mR``, ``test/mR``).
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:  # tensorboard is optional at run time
                logging.getLogger(__name__).warning("tensorboard is not installed; tb/ not written")

    def write(self, step: int, values: dict[str, Any], **extra: Any) -> None:
        row = {**extra, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
