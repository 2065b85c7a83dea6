"""One prepared GPU check (issue 17): the CUDA tests, training speed against the bare backbone, and a short
from-scratch run on the real UCM images. About 7 minutes on one H100/H200; prints one table and writes
``$OUT/gpu_check.json`` (+ ``gpu_check.md``, ``gpu_tests.xml``).

    python bench/gpu_check.py                         # on a GPU machine (bench/gpu_check.sh installs carried wheels)
    python bench/gpu_check.py --dry-run               # CPU: tiny configs, 2 steps, 1 epoch (CI runs this)
    python bench/gpu_check.py --pack-ucm .gpu_data    # a < 40 MiB JPEG q85 copy of the UCM set, to carry to the device

1. ``tests``: ``pytest -m gpu tests/gpu`` (bf16/fp16 steps for every tiny config, test.py CUDA vs CPU, exact resume).
2. ``throughput``: every method's full-size config (``configs/rsitmd_<method>.yaml``) with random weights
   (``model.pretrained=false``) at its own batch size and resolution under bf16 autocast: images/s and peak GPU
   memory of ``engine.train_loop.train_one_epoch`` on one fixed batch, against the method's own image backbone alone
   (forward + backward + Adam step, every weight trained) at the same batch, measured in the same run; and the
   samples/s of the real training loader (``--workers``) in the same run. Goal: method >= 0.80x its backbone where
   the method adds little around it; loader faster than the method. BERT tokenizers need files the machine lacks:
   those configs use the vocab tokenizer with a BERT-size (30522) embedding table instead.
3. ``ucm``: ``configs/ucm_galr.yaml`` (then the others of ``--ucm-configs`` while the time budget lasts) trained from
   scratch at full size on the UCM images for ``--ucm-epochs`` epochs; val mR per epoch, chance level, test mR.

Time: a real run has a budget (``--budget-s``, 420 s: the tests part may take 40 % of it, the throughput rows run
until 70 % has passed, the UCM runs while it lasts), so that it fits a device lease. A dry run has none (its
default ``--budget-s 0`` means no budget): it checks the code, and on a slow or busy machine every part still runs
to the end, so what it reports never depends on the machine's speed.

The UCM folder (holding ``ucm_precomp/``) is ``--ucm``, else ``$RSITR_UCM_DIR``, else the first that exists of
``../shared/data/ucm``, ``shared/data/ucm`` and ``.gpu_data/ucm`` (relative to the repository root). The device
machine sees only the repository and what a run carries, and at most 64 MiB of it: carry a ``--pack-ucm`` copy.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from core.config import Config, load_config  # noqa: E402
from core.files import missing_files  # noqa: E402
from data.tokenize import tokenizer_required_files  # noqa: E402
from data.build import build_data, model_context, train_loader  # noqa: E402
from engine.optim import build_optimizer  # noqa: E402
from engine.runner import fit, prepare_run_dir  # noqa: E402
from engine.train_loop import autocast, to_device, train_one_epoch  # noqa: E402
from losses import build_criterion  # noqa: E402
from models.registry import MODELS, build_model, list_models  # noqa: E402

UCM_CONFIGS = ("ucm_galr", "ucm_amfmn", "ucm_clip_finetune", "ucm_clip_adapter")
# where each method keeps its image backbone (first match wins); the bare copy is the throughput baseline
BACKBONE_PATHS = ("image.backbone", "image.net", "visual_q.backbone", "vision_encoder", "clip.visual", "backbone")
BERT_BASE_VOCAB = 30522


# ------------------------------------------------------------------------------------------------------- helpers
def find_ucm(arg: str | None) -> Path | None:
    """The UCM folder (it holds ``ucm_precomp/``): the argument, ``$RSITR_UCM_DIR``, or a known place."""
    given = arg or os.environ.get("RSITR_UCM_DIR", "")
    cands = [given] if given else [ROOT / ".." / "shared" / "data" / "ucm", ROOT / "shared" / "data" / "ucm",
                                   ROOT / ".gpu_data" / "ucm"]
    for c in cands:
        if (Path(c) / "ucm_precomp" / "train_caps.txt").is_file():
            return Path(c).resolve()
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def data_overrides(ucm: Path | None, workers: int) -> list[str]:
    """Point a config at the UCM images (vocab from the shared folder when there) or at the generated demo set."""
    sets = [f"data.num_workers={workers}"]
    if ucm is None:
        return sets + ["data.dataset=demo", "data.root=data", "data.vocab=", "data.protocol=random_8020"]
    vocab = ucm.parent / "vocab" / "ucm_splits_vocab.json"
    return sets + ["data.dataset=ucm", f"data.root={ucm}",
                   f"data.vocab={vocab if vocab.is_file() else ''}", "data.protocol=random_8020"]


def method_config(method: str, dry: bool, ucm: Path | None, workers: int, device: torch.device,
                  extra: list[str]) -> Config:
    """The method's full-size config (tiny one in a dry run) with random weights on the check's data."""
    path = ROOT / "configs" / "tests" / f"tiny_{method}.yaml" if dry else ROOT / "configs" / f"rsitmd_{method}.yaml"
    sets = ["model.pretrained=false", f"train.device={device.type}", "train.amp=bf16"]
    sets += data_overrides(ucm, workers) + (["data.max_images=60"] if dry else []) + list(extra)
    cfg = load_config(path, sets)
    if cfg.data.tokenizer == "bert" and missing_files(tokenizer_required_files(cfg.data)):
        # no BERT vocabulary on the machine: word ids, BERT-size embedding table
        cfg = load_config(path, sets + ["data.tokenizer=vocab", "data.tokenizer_path=",
                                        f"model.params.bert_vocab_size={BERT_BASE_VOCAB}"])
    return cfg


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    for path in BACKBONE_PATHS:
        mod: Any = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
        if isinstance(mod, nn.Module):
            return path, mod
    raise LookupError(f"no image backbone among {BACKBONE_PATHS} in {type(model).__name__}")


def _tensor_sum(out: Any) -> torch.Tensor:
    """A scalar that depends on every tensor of a backbone's output (tensor, list/tuple, dict, HF output)."""
    if torch.is_tensor(out):
        return out.float().mean()
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    return sum(_tensor_sum(o) for o in out if torch.is_tensor(o) or isinstance(o, (list, tuple, dict)))


# ---------------------------------------------------------------------------------------------------- 1. tests
def run_tests(out: Path, dry: bool, timeout: float | None) -> dict[str, Any]:
    """``pytest -m gpu tests/gpu`` in a subprocess (killed after ``timeout`` s; None: no limit); outcomes from its
    JUnit XML."""
    xml = out / "gpu_tests.xml"
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONUNBUFFERED="1")
    if dry:
        env.update(RSITR_GPU_TEST_DEVICE="cpu", RSITR_GPU_TEST_STEPS="6", RSITR_GPU_TEST_METHODS="vse")
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = proc.returncode, (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:
        code, tail = -1, f"timed out after {timeout:.0f}s\n" + str(e.stdout or "")[-2000:]
    cases = []
    if xml.is_file():
        for tc in ET.parse(xml).getroot().iter("testcase"):
            bad = next((c for c in tc if c.tag in ("failure", "error", "skipped")), None)
            outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(bad.tag if bad is not None
                                                                                       else "", "passed")
            msg = (bad.get("message") or "").splitlines()[0][:300] if bad is not None else ""
            cases.append({"name": tc.get("name"), "outcome": outcome, "time_s": float(tc.get("time", 0)),
                          "message": msg})
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {"exit_code": code, "counts": counts, "cases": cases, "wall_s": time.perf_counter() - t0,
            "output_tail": tail if code != 0 else ""}


# ----------------------------------------------------------------------------------------------- 2. throughput
def time_engine(model, criterion, batch, optimizer, device, amp, warm, steps) -> tuple[float, list[float]]:
    """Seconds for ``steps`` engine steps on one fixed batch (after ``warm``), and the measured losses."""
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    train_one_epoch(model, criterion, [batch] * warm, optimizer, constant, scaler, 0, device, amp=amp, progress=False)
    losses: list[float] = []
    sync(device)
    t0 = time.perf_counter()
    train_one_epoch(model, criterion, [batch] * steps, optimizer, constant, scaler, 0, device, amp=amp,
                    progress=False, on_step=lambda i, o: losses.append(o["loss"].item()))
    sync(device)
    return time.perf_counter() - t0, losses


def time_backbone(backbone: nn.Module, images: torch.Tensor, device, amp, warm, steps) -> float:
    """Seconds for ``steps`` bare forward + backward + Adam steps of a backbone copy with every weight trained."""
    bb = copy.deepcopy(backbone).train().requires_grad_(True)
    opt = torch.optim.Adam(bb.parameters(), lr=1e-5)
    t0 = 0.0
    for i in range(warm + steps):
        if i == warm:
            sync(device)
            t0 = time.perf_counter()
        with autocast(device, amp):
            loss = _tensor_sum(bb(images))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def time_loader(loader, n_batches: int) -> float:
    """Samples/s of the training loader over ``n_batches`` batches (after the first, which starts the workers)."""
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        try:
            n += len(next(it)["img_ids"])
        except StopIteration:
            break
    return n / max(time.perf_counter() - t0, 1e-9)


def measure_method(method: str, args, ucm: Path | None, device: torch.device) -> dict[str, Any]:
    cfg = method_config(method, args.dry_run, ucm, args.workers, device, args.set)
    amp = cfg.train.amp if device.type == "cuda" else "off (cpu)"
    row: dict[str, Any] = {"method": method, "config": Path(cfg.source).name, "amp": amp,
                           "batch_size": cfg.data.batch_size, "image_size": cfg.data.image_size, "steps": args.steps}
    torch.manual_seed(0)
    bundle = build_data(cfg.data)
    model = build_model(cfg.model, model_context(bundle)).to(device)
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    loader.sampler.set_epoch(0)
    row["loader_samples_s"] = time_loader(loader, args.loader_batches)
    batch = to_device(next(iter(loader)), device)
    images = batch["images"]
    row.update(batch_size=int(images.shape[0]), image_size=int(images.shape[-1]))
    path, backbone = find_backbone(model)
    row["backbone"] = f"{path} ({type(backbone).__name__})"
    if getattr(MODELS.get(cfg.model.name), "zero_shot", False):
        row["note"] = "evaluation-only method: not trained"
    else:
        criterion = build_criterion(cfg.loss).to(device)
        optimizer = build_optimizer(cfg.optim, model)
        reset_peak(device)
        dt, losses = time_engine(model, criterion, batch, optimizer, device, cfg.train.amp, args.warmup, args.steps)
        row.update(method_img_s=args.steps * len(images) / dt, method_peak_gb=peak_gb(device), losses=losses)
        del optimizer, criterion
    model.cpu()
    reset_peak(device)
    dt = time_backbone(backbone.to(device), images, device, cfg.train.amp, args.warmup, args.steps)
    row.update(backbone_img_s=args.steps * len(images) / dt, backbone_peak_gb=peak_gb(device))
    if "method_img_s" in row:
        row["ratio"] = row["method_img_s"] / row["backbone_img_s"]
        row["loader_vs_method"] = row["loader_samples_s"] / row["method_img_s"]
    del model, backbone, batch, images
    reset_peak(device)
    return row


def run_throughput(args, methods: list[str], ucm: Path | None, device: torch.device, deadline: float | None,
                   part: dict[str, Any], save: Callable[[], None]) -> None:
    """Fill ``part`` with one row per method (saved after each row, so a killed run keeps what it measured); rows
    after ``deadline`` (``time.perf_counter`` seconds; None: none) are skipped."""
    part.update(data=str(ucm) if ucm else "demo (generated)", workers=args.workers, rows=[])
    for m in methods:
        if deadline is not None and time.perf_counter() > deadline:
            part["rows"].append({"method": m, "error": "skipped: time budget spent"})
            continue
        try:
            part["rows"].append(measure_method(m, args, ucm, device))
        except Exception as e:  # noqa: BLE001 - one method's failure (OOM, ...) must not stop the check
            part["rows"].append({"method": m, "error": f"{type(e).__name__}: {(str(e) or '-').splitlines()[0][:300]}"})
            reset_peak(device)
        save()


# ------------------------------------------------------------------------------------------------------ 3. UCM
def chance_mr(n_img: int, caps_per_img: int = 5, ks: tuple[int, ...] = (1, 5, 10)) -> float:
    """Expected mR of random scores: t2i R@K = K / n_img; i2t R@K = P(one of an image's captions in the top K)."""
    n_cap = n_img * caps_per_img
    t2i = [min(1.0, k / n_img) for k in ks]
    i2t = [1.0 - math.comb(n_cap - caps_per_img, k) / math.comb(n_cap, k) for k in ks]
    return 100.0 * (sum(t2i) + sum(i2t)) / (2 * len(ks))


def ucm_config(name: str, args, ucm: Path, device: torch.device, out_dir: Path) -> Config:
    path = ROOT / "configs" / f"{name}.yaml"
    sets = ["model.pretrained=false", f"train.device={device.type}", f"train.epochs={args.ucm_epochs}",
            f"train.output_dir={out_dir}", f"train.experiment={name}", "eval.every=1"]
    sets += data_overrides(ucm, args.workers) + list(args.set)
    cfg = load_config(path, sets)
    if args.dry_run:  # the method's tiny model on a slice of UCM at the tiny resolution
        tiny = load_config(ROOT / "configs" / "tests" / f"tiny_{cfg.model.name}.yaml")
        cfg = replace(cfg, model=replace(tiny.model, pretrained=False),
                      data=replace(cfg.data, image_size=tiny.data.image_size, batch_size=tiny.data.batch_size,
                                   eval_batch_size=tiny.data.eval_batch_size, max_images=60))
    return cfg


def train_ucm(name: str, args, ucm: Path, device: torch.device, out_dir: Path) -> dict[str, Any]:
    cfg = ucm_config(name, args, ucm, device, out_dir)
    run_dir = out_dir / name / "fold0"
    prepare_run_dir(run_dir, resuming=False)
    t0 = time.perf_counter()
    result = fit(cfg, 0, run_dir, device)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in rows if "val/mR" in r]
    n_val = epochs[0].get("val/n_images", 0) if epochs else 0
    return {"config": f"{name}.yaml", "epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size,
            "image_size": cfg.data.image_size, "val_mR": [r["val/mR"] for r in epochs],
            "train_loss": [r.get("train/loss") for r in epochs], "epoch_s": [r.get("train/time_s") for r in epochs],
            "val_images": n_val, "chance_val_mR": chance_mr(int(n_val)) if n_val else None,
            "test_mR": result.get("test", {}).get("mR"), "best_epoch": result.get("best_epoch"),
            "wall_s": time.perf_counter() - t0}


def run_ucm(args, ucm: Path | None, device: torch.device, deadline: float | None, part: dict[str, Any],
            save: Callable[[], None]) -> None:
    """Fill ``part`` with one UCM run per config while the budget lasts (until ``deadline``; None: every config;
    saved after each run)."""
    if ucm is None:
        part.update(data=None, runs=[], note="UCM folder not found (see --ucm)")
        return
    part.update(data=str(ucm), runs=[])
    runs, last = part["runs"], 0.0
    with tempfile.TemporaryDirectory(prefix="rsitr_gpu_check_") as tmp:
        for name in args.ucm_configs:
            left = deadline - time.perf_counter() if deadline is not None else math.inf
            if runs and left < 1.2 * last or left <= 0:
                runs.append({"config": f"{name}.yaml", "error": f"skipped: {left:.0f}s of the budget left"})
                continue
            t0 = time.perf_counter()
            try:
                runs.append(train_ucm(name, args, ucm, device, Path(tmp)))
            except Exception as e:  # noqa: BLE001 - record and go on with the next config
                why = (str(e) or "-").splitlines()[0][:300]
                runs.append({"config": f"{name}.yaml", "error": f"{type(e).__name__}: {why}"})
            last = time.perf_counter() - t0
            save()


# ------------------------------------------------------------------------------------------------------ report
def _f(v: Any, fmt: str = ".0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def table(res: dict[str, Any]) -> str:
    """The one markdown table: tests, then throughput rows, then UCM rows."""
    lines = ["| part | item | result | reference | ratio / note |", "|---|---|---|---|---|"]
    t = res.get("tests")
    if t:
        c = t["counts"]
        lines.append(f"| tests | pytest -m gpu tests/gpu | {c['passed']} passed, {c['failed']} failed, {c['error']} "
                     f"errors, {c['skipped']} skipped | | exit {t['exit_code']}, {t['wall_s']:.0f} s |")
        lines += [f"| tests | {x['name']} | {x['outcome']} | | {x['message'][:120]} |" for x in t["cases"]
                  if x["outcome"] in ("failed", "error")]
    for r in (res.get("throughput") or {}).get("rows", []):
        if "error" in r:
            lines.append(f"| train speed | {r['method']} | {r['error']} | | |")
            continue
        item = f"{r['method']}: {r['config']}, batch {r['batch_size']}, {r['image_size']} px, {r['amp']}"
        mem = f", {r['method_peak_gb']:.1f} GB" if r.get("method_peak_gb") is not None else ""
        bmem = f", {r['backbone_peak_gb']:.1f} GB" if r.get("backbone_peak_gb") is not None else ""
        note = (f"{r['ratio']:.2f}x backbone (goal >= 0.80 where the method adds little); loader "
                f"{r['loader_samples_s']:.0f} samples/s = {r['loader_vs_method']:.2f}x method") if "ratio" in r else \
            f"{r.get('note', '')}; loader {r['loader_samples_s']:.0f} samples/s"
        lines.append(f"| train speed | {item} | {_f(r.get('method_img_s'))} img/s{mem} | {r['backbone']} "
                     f"{r['backbone_img_s']:.0f} img/s{bmem} | {note} |")
    for r in (res.get("ucm") or {}).get("runs", []):
        if "error" in r:
            lines.append(f"| UCM from scratch | {r['config']} | {r['error']} | | |")
            continue
        mrs = ", ".join(f"{v:.1f}" for v in r["val_mR"])
        lines.append(f"| UCM from scratch | {r['config']}, {r['epochs']} epochs, batch {r['batch_size']}, "
                     f"{r['image_size']} px | val mR per epoch: {mrs} | chance {_f(r['chance_val_mR'], '.1f')} | "
                     f"test mR {_f(r['test_mR'], '.1f')} (best epoch {r['best_epoch']}), "
                     f"{_f(sum(x or 0 for x in r['epoch_s']) / max(1, len(r['epoch_s'])), '.1f')} s/epoch |")
    if (res.get("ucm") or {}).get("note"):
        lines.append(f"| UCM from scratch | | {res['ucm']['note']} | | |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------- main
def pack_ucm(src: Path, dest: Path, quality: int = 85) -> Path:
    """Copy the UCM set to ``dest/ucm`` with images re-encoded as JPEG ``quality`` (about 36 MiB at 85, to carry).

    Text files are copied as they are (and the upstream vocabulary ``<src>/../vocab/ucm_splits_vocab.json`` to
    ``dest/vocab/`` when it exists); images keep their names and sizes. Refuses to write into an existing folder.
    """
    from PIL import Image

    out = dest / "ucm" / "ucm_precomp"
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another folder")
    (out / "images").mkdir(parents=True)
    for f in (src / "ucm_precomp").glob("*.txt"):
        (out / f.name).write_bytes(f.read_bytes())
    vocab = src.parent / "vocab" / "ucm_splits_vocab.json"
    if vocab.is_file():
        (dest / "vocab").mkdir(exist_ok=True)
        (dest / "vocab" / vocab.name).write_bytes(vocab.read_bytes())
    for img in sorted((src / "ucm_precomp" / "images").iterdir()):
        with Image.open(img) as im:
            im.convert("RGB").save(out / "images" / img.name, "JPEG", quality=quality)
    return out.parent


def environment(device: torch.device) -> dict[str, Any]:
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cpus": os.cpu_count()}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_memory_gb=torch.cuda.get_device_properties(device).total_memory / 2 ** 30)
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configs, 2 steps, 1 epoch (CI)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "checkpoints" / "gpu_check"),
                   help="folder for gpu_check.json / .md / gpu_tests.xml (default: $OUT, else checkpoints/gpu_check)")
    p.add_argument("--ucm", help="UCM folder holding ucm_precomp/ (default: $RSITR_UCM_DIR or a known place)")
    p.add_argument("--parts", default="tests,throughput,ucm", help="comma-separated subset of the three parts")
    p.add_argument("--methods", default="", help="comma-separated methods (default: every method with a config)")
    p.add_argument("--ucm-configs", default=",".join(UCM_CONFIGS), help="UCM configs, in order, while time lasts")
    p.add_argument("--ucm-epochs", type=int, default=None, help="default 5 (1 in a dry run)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget of the whole check in seconds (default 420; a dry run: 0 = no budget)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default 10; 2 in a dry run)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; 1 in a dry run)")
    p.add_argument("--workers", type=int, default=None, help="loader workers (default min(8, cpus); 0 in a dry run)")
    p.add_argument("--loader-batches", type=int, default=None, help="batches timed for the loader rate (default 8)")
    p.add_argument("--device", help="cuda (default) | cpu (default in a dry run; a CPU smoke of the full sizes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for every throughput / UCM config (e.g. data.batch_size=4 for a CPU smoke)")
    p.add_argument("--pack-ucm", metavar="DIR", help="only write a carryable JPEG q85 copy of the UCM set to DIR/ucm")
    args = p.parse_args(argv)
    dry = args.dry_run
    args.steps = args.steps or (2 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 3)
    args.workers = args.workers if args.workers is not None else (0 if dry else min(8, os.cpu_count() or 1))
    args.loader_batches = args.loader_batches or (2 if dry else 8)
    args.ucm_epochs = args.ucm_epochs or (1 if dry else 5)
    args.device = args.device or ("cpu" if dry else "cuda")
    args.budget_s = args.budget_s if args.budget_s is not None else (0.0 if dry else 420.0)
    args.ucm_configs = [c.strip() for c in args.ucm_configs.split(",") if c.strip()]
    args.parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    return args


def all_methods(dry: bool) -> list[str]:
    pattern, cut = ("tests/tiny_*.yaml", len("tiny_")) if dry else ("rsitmd_*.yaml", len("rsitmd_"))
    return sorted(p.stem[cut:] for p in (ROOT / "configs").glob(pattern))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pack_ucm:
        src = find_ucm(args.ucm)
        if src is None:
            print("gpu_check: no UCM folder found (give --ucm DIR holding ucm_precomp/)", file=sys.stderr)
            return 2
        try:
            print(f"packed {pack_ucm(src, Path(args.pack_ucm))}")
        except FileExistsError as e:
            print(f"gpu_check: {e}", file=sys.stderr)
            return 2
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; use --dry-run (or --device cpu) on a CPU machine", file=sys.stderr)
        return 2
    os.chdir(ROOT)  # configs name files relative to the repository root
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    budget = args.budget_s if args.budget_s > 0 else None  # 0: no budget (the dry run's default)
    deadline = t0 + budget if budget is not None else None
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    list_models()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or all_methods(args.dry_run)
    ucm = find_ucm(args.ucm)
    res: dict[str, Any] = {"version": 1, "dry_run": args.dry_run, "complete": False,
                           "environment": environment(device), "budget_s": budget}

    def save() -> None:  # after every part and row: a run stopped at its time limit keeps what it measured
        res["wall_s"] = time.perf_counter() - t0
        (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
        (out / "gpu_check.md").write_text(table(res) + "\n")

    save()
    if "tests" in args.parts:  # at most 40 % of the budget
        res["tests"] = run_tests(out, args.dry_run, timeout=0.4 * budget if budget is not None else None)
        save()
    if "throughput" in args.parts:  # until 70 % of the budget has passed
        run_throughput(args, methods, ucm, device, t0 + 0.7 * budget if budget is not None else None,
                       res.setdefault("throughput", {}), save)
    if "ucm" in args.parts:
        run_ucm(args, ucm, device, deadline, res.setdefault("ucm", {}), save)
    res["complete"] = True
    save()
    print(table(res))
    print(f"\nwrote {out / 'gpu_check.json'} ({res['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
