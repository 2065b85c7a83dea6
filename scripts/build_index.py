"""Encode every image of a folder with a trained model and write a searchable index.

    python scripts/build_index.py --resume checkpoints/rsitmd_galr/fold0/best.pth --images DIR --out INDEX_DIR
        [--kind auto|flat|ivf|hnsw] [--batch-size 64] [--chunk 2048] [--workers 2] [--device cpu|cuda]

Images: ``.tif/.tiff/.jpg/.jpeg/.png`` below ``--images`` (recursive, sorted). Embeddings are computed chunk by
chunk into ``INDEX_DIR/shards/``; an interrupted build resumes from the shards already written (they are tied to the
checkpoint identity and the file list, so a changed folder or model never mixes in). When every chunk is done the
FAISS index is built (exact up to 100k images, IVF above, or ``--kind``), the folder is completed (``meta.json``
last) and the shards are removed. See ``engine/index.py`` for the folder layout; search it with
``scripts/search.py``. Exit code 2 with one line on bad input; nothing half-written is ever left as an index.

Images are decoded by training's reader (``data.images``: 16-bit and float one-band rasters scaled by their range,
16-bit RGB refused), so the index holds the embeddings of the pixels the model was trained on. Before encoding,
the header of every image is checked once: unreadable files, 16-bit RGB files and images over Pillow's pixel limit
(about 179 Mpx, e.g. full satellite scenes: tile or downscale them) are all named in one line; a file whose pixels
then fail to decode is named with every other one of its chunk.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data.images import bad_files_error, check_images, read_image  # noqa: E402
from search.index import (AUTO_EXACT_MAX, KINDS, IndexFolderError, ShardStore, files_digest,  # noqa: E402
                          list_images, write_index)

log = logging.getLogger("rsitr.build_index")
INDEX_FILES = ("meta.json", "files.txt", "embeddings.npy", "index.faiss")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", required=True, help="trained checkpoint (best.pth)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help=f"auto: exact (flat) up to --exact-max images, IVF above (default {AUTO_EXACT_MAX})")
    p.add_argument("--exact-max", type=int, default=AUTO_EXACT_MAX)
    p.add_argument("--recall-target", type=float, default=0.98,
                   help="top-10 agreement with exact search the approximate kinds calibrate for")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=2048, help="images per resumable shard")
    p.add_argument("--workers", type=int, default=2, help="image decoding workers")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index / foreign shards in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class BuildError(ValueError):
    """Bad input (one line)."""


class FolderImages(Dataset):
    """Images ``root/files[i]`` through the model's eval transform; yields (tensor [3, S, S] or None, name, why)."""

    def __init__(self, root: Path, files: list[str], transform: Callable) -> None:
        self.root, self.files, self.transform = root, files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str, str]:
        img, why = read_image(self.root / self.files[i])  # training's reader (data.images)
        # a bad file is reported from the main process: an exception raised in a worker arrives as a multi-line
        # wrapper
        return (self.transform(img) if img is not None else None), self.files[i], why


def _collate(items: list[tuple[torch.Tensor | None, str, str]]) -> dict[str, Any]:
    errors = [(name, why) for x, name, why in items if x is None]
    if errors:
        return {"errors": errors}
    return {"images": torch.stack([x for x, _, _ in items]), "filenames": [Path(n).name for _, n, _ in items]}


@torch.no_grad()
def encode_shard(model: torch.nn.Module, data: FolderImages, args: argparse.Namespace, device: torch.device,
                 bar: tqdm) -> np.ndarray:
    """Embeddings of one shard's images. Returns: [n, D] float32.

    Raises:
        DataError: one line naming every image of the shard that cannot be decoded.
    """
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=_collate)
    out, bad = [], []
    for batch in loader:
        if "errors" in batch:
            bad += batch["errors"]
            continue
        if bad:  # the shard fails anyway: only look for the other bad files
            continue
        emb = model.encode_image({"images": batch["images"].to(device), "filenames": batch["filenames"]})
        out.append(emb.float().cpu().numpy())
        bar.update(len(batch["filenames"]))
    if bad:
        raise bad_files_error([(data.root / n, why) for n, why in bad], len(data), f"--images {data.root}",
                              "replace, re-export or remove them")
    return np.concatenate(out, axis=0)


def prepare_out(out: Path, checkpoint_id: str, files: list[str], args: argparse.Namespace) -> str:
    """Check ``out`` before a build.

    Returns:
        ``"done"`` (it holds this exact index), ``"rekind"`` (same embeddings, other ``--kind``: only the FAISS
        index is rebuilt) or ``"encode"``.
    """
    if out.exists() and not out.is_dir():
        raise BuildError(f"--out {out} exists and is not a folder")
    if args.overwrite:
        for name in INDEX_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "shards", ignore_errors=True)
        return "encode"
    if (out / "meta.json").is_file():
        meta = json.loads((out / "meta.json").read_text())
        if meta.get("checkpoint_id") != checkpoint_id or meta.get("files_sha256") != files_digest(files):
            raise BuildError(f"{out} already holds an index of another checkpoint or image list; "
                             f"pass --overwrite to replace it")
        return "done" if args.kind in ("auto", meta.get("kind")) else "rekind"
    return "encode"


def build(args: argparse.Namespace) -> int:
    from engine.inference import load_model_from_checkpoint  # heavy import after argument checks

    root, out = Path(args.images), Path(args.out)
    if not root.is_dir():
        raise BuildError(f"--images folder not found: {root}")
    if args.chunk < 1 or args.batch_size < 1:
        raise BuildError("--chunk and --batch-size must be >= 1")
    files = list_images(root)
    if not files:
        raise BuildError(f"no .tif/.tiff/.jpg/.jpeg/.png images below {root}")
    # headers of every image, before the model is loaded: every missing / non-image / 16-bit RGB / over-the-pixel-
    # limit file in one line
    check_images([root / f for f in files], f"--images {root}", "replace, re-export or remove them")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt_path = str(Path(args.resume).resolve())
    loaded = load_model_from_checkpoint(ckpt_path, device=str(device))
    state = prepare_out(out, loaded.checkpoint_id, files, args)
    if state == "done":
        print(f"{out} is up to date ({len(files)} images, same checkpoint and file list)")
        return 0
    if state == "rekind":
        emb = np.load(out / "embeddings.npy")
    else:
        emb = encode_all(loaded, root, out, files, args, device)
    meta = write_index(out, files, emb, images_root=str(root.resolve()), checkpoint_id=loaded.checkpoint_id,
                       kind=args.kind, exact_max=args.exact_max, recall_target=args.recall_target,
                       extra={"checkpoint_path": ckpt_path, "method": loaded.ckpt.get("method", "?")})
    shutil.rmtree(out / "shards", ignore_errors=True)
    print(f"indexed {meta['n']} images (d={meta['dim']}, {meta['kind']}) into {out}")
    return 0


def encode_all(loaded: Any, root: Path, out: Path, files: list[str], args: argparse.Namespace,
               device: torch.device) -> np.ndarray:
    """Encode the shards not yet on disk, then return all embeddings [N, D] in file order."""
    store = ShardStore.open(out, loaded.checkpoint_id, files, args.chunk)
    todo = [i for i in range(store.n_shards) if not store.is_done(i)]
    done = len(files) - sum(len(store.rows(i)) for i in todo)
    if done:
        log.info("resuming: %d of %d images already encoded", done, len(files))
    model = loaded.model.to(device).eval()
    with tqdm(total=len(files), initial=done, unit="img", disable=args.quiet, desc="encoding") as bar:
        for i in todo:
            part = [files[j] for j in store.rows(i)]
            store.write(i, encode_shard(model, FolderImages(root, part, loaded.transform), args, device, bar))
    return store.load_all()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        return build(args)
    except (BuildError, IndexFolderError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
