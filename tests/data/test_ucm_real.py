"""Every one of the 2100 real UCM images loads through the loader (real files, 44 of them not 256 x 256).

Reads ../shared/data/ucm in place; skipped when it is absent. Small working size (32 px) keeps it short.
"""
import pytest
import torch
from PIL import Image

from core.config import load_config
from data.build import build_data, eval_loaders, train_loader
from data.images import clear_cache


@pytest.fixture(scope="module")
def ucm(shared_data):
    root = shared_data / "ucm"
    if not (root / "ucm_precomp" / "images").is_dir():
        pytest.skip("../shared/data/ucm/ucm_precomp/images is not available")
    return root


def test_all_2100_images_load(ucm):
    clear_cache()
    images = ucm / "ucm_precomp" / "images"
    sizes = {}
    for p in images.iterdir():  # the sizes from the files themselves (headers)
        with Image.open(p) as img:
            sizes[p.name] = img.size
    off = sorted(n for n, s in sizes.items() if s != (256, 256))
    assert len(sizes) == 2100 and len(off) == 44  # ../shared/data/README.md: 44 images are not 256 x 256

    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.dataset=ucm", f"data.root={ucm}", "data.vocab=",
                                                      "data.max_images=0", "data.transform=galr", "data.image_size=32",
                                                      "data.batch_size=100", "data.eval_batch_size=300",
                                                      "data.num_workers=0"])
    bundle = build_data(cfg.data)
    splits = [bundle.train, bundle.val, bundle.test]
    assert sum(sp.n_images for sp in splits) == 2100
    seen = set()
    for sp in splits:  # the eval loader reads every image of a split once
        img_loader, _ = eval_loaders(sp, bundle, cfg.data)
        batches = list(img_loader)
        x = torch.cat([b["images"] for b in batches])
        assert x.shape == (sp.n_images, 3, 32, 32) and torch.isfinite(x).all()
        assert x.flatten(1).std(1).min() > 0  # no blank image
        seen.update(f for b in batches for f in b["filenames"])
    assert seen == set(sizes)

    # the training loader (random galr augmentation on the cached pixels) on the odd-sized images
    loader = train_loader(bundle, cfg.data, distributed=False, seed=0, deterministic=False)
    names = set(off)
    ds = loader.dataset
    caps = [j for j in range(len(ds)) if bundle.train.filenames[bundle.train.txt2img[j]] in names]
    assert caps, "some odd-sized images are in the training fold"
    for j in caps[::5]:
        item = ds[(0, j)]
        assert item["image"].shape == (3, 32, 32)
    clear_cache()


def test_ucm_images_carry_their_uc_merced_class(ucm):
    # image N is class (N-1)//100: 21 classes, the official split holds 90 train and 10 test images of each, and a
    # scene-stratified 80/20 fold keeps 72 / 18 of each class's 90
    cfg = load_config("configs/tests/tiny_vse.yaml", ["data.dataset=ucm", f"data.root={ucm}", "data.vocab=",
                                                      "data.max_images=0", "data.protocol=stratified",
                                                      "data.val_ratio=0.2"])
    bundle = build_data(cfg.data)
    assert len(bundle.scene_names) == 22 and bundle.scene_names[-1] == "noneclass"
    for split, per_class in ((bundle.train, 72), (bundle.val, 18), (bundle.test, 10)):
        ids = torch.tensor(bundle.scene_ids(split))
        assert torch.bincount(ids, minlength=22).tolist() == [per_class] * 21 + [0], split.split
