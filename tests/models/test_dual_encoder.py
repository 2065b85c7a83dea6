"""dual_encoder (models/dual_encoder.py): towers, locking, and a short real run on UCM that must beat chance."""
import json
from math import comb

import pytest
import timm
import torch

import train
from core.config import ModelCfg, parse_params
from core.errors import ConfigError
from models.base import ModelContext
from models.dual_encoder import DualEncoder, DualEncoderParams
from models.encoders.timm_tower import TimmImageTower


def _model(**params) -> DualEncoder:
    cfg = ModelCfg(name="dual_encoder", embed_dim=32, pretrained=False,
                   params={"image_backbone": "test_efficientnet", "text_path": "", "text_random": [32, 2, 2], **params})
    return DualEncoder(cfg, parse_params(DualEncoderParams, cfg.params, "model.params"), ModelContext(None, 30522))


def _batch(n=3, length=7):
    torch.manual_seed(0)
    tokens = torch.randint(1000, 2000, (n, length))
    lengths = torch.tensor([length, length - 2, 3])[:n]
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"images": torch.randn(n, 3, 64, 64), "tokens": tokens * mask, "lengths": lengths, "attention_mask": mask,
            "filenames": [f"{i}.png" for i in range(n)]}


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_convnext", "test_vit"])
def test_any_timm_family_gives_the_configured_embedding(backbone):
    m = _model(image_backbone=backbone).eval()
    b = _batch()
    if backbone == "test_vit":
        b["images"] = torch.randn(3, 3, 160, 160)
    out = m(b)
    assert out["img_emb"].shape == out["txt_emb"].shape == (3, 32)
    assert torch.allclose(out["img_emb"].norm(dim=-1), torch.ones(3), atol=1e-5)


def test_partial_unlock_splits_the_tower_exactly_and_trains_only_the_suffix():
    torch.manual_seed(0)
    tower = TimmImageTower("test_efficientnet", "", unlocked=2).eval()
    whole = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    whole.load_state_dict(tower.net.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tower.suffix(tower.prefix(x)), whole(x), atol=1e-5)
    trainable = {n for n, p in tower.net.named_parameters() if p.requires_grad}
    n = len(tower.net.blocks)
    assert trainable and all(k.startswith((f"blocks.{n - 2}.", f"blocks.{n - 1}.", "conv_head", "bn2")) for k in trainable)
    with pytest.raises(ConfigError, match="image_unlocked"):
        TimmImageTower("test_convnext", "", unlocked=1)


def test_locked_towers_stay_in_eval_mode_and_get_no_gradient():
    m = _model(text_unlocked=1, proj_hidden=16, proj_dropout=0.5).train()
    assert not m.image.net.training and not m.text.encoder.embeddings.training
    assert m.text.encoder.encoder.layer[-1].training and m.img_proj.training
    out = m(_batch())
    (out["img_emb"].sum() + out["txt_emb"].sum()).backward()
    assert all(p.grad is None for p in m.image.parameters())
    assert m.text.encoder.encoder.layer[-1].attention.self.query.weight.grad is not None
    assert m.text.encoder.encoder.layer[0].attention.self.query.weight.grad is None
    assert set(m.frozen_prefixes()) == {"image"}  # a partly trained text tower is not cached


def test_a_pretrained_checkpoint_rebuilds_to_the_same_model():
    """test.py / resume / build_index rebuild with model.pretrained=false: the text tower must take the folder's
    architecture (MiniLM: 384 wide, 6 layers), not the random-init fallback, so the saved weights load exactly."""
    from dataclasses import replace

    from models.registry import build_model

    cfg = ModelCfg(name="dual_encoder", embed_dim=32, pretrained=True,
                   params={"image_backbone": "test_efficientnet", "image_weights": ""})
    ctx = ModelContext(None, 30522)
    trained = build_model(cfg, ctx).eval()
    rebuilt = build_model(replace(cfg, pretrained=False), ctx).eval()
    rebuilt.load_state_dict(trained.state_dict())  # strict: same keys and shapes
    b = _batch()
    with torch.no_grad():
        assert torch.equal(trained.encode_text(b), rebuilt.encode_text(b))
        assert torch.equal(trained.encode_image(b), rebuilt.encode_image(b))


def _chance_mr(n_img: int, caps_per_img: list[int], ks=(1, 5, 10)) -> float:
    """mR of a random ranking: t2i R@K = K / n_img; i2t R@K = P(one of an image's c captions in the top K)."""
    n_cap = sum(caps_per_img)
    t2i = [min(k, n_img) / n_img for k in ks]
    i2t = [sum(1 - comb(n_cap - c, k) / comb(n_cap, k) for c in caps_per_img) / len(caps_per_img) for k in ks]
    return 100 * (sum(t2i) + sum(i2t)) / 6


@pytest.mark.slow
def test_short_real_run_on_ucm_beats_chance_widely(shared_data, tmp_path):
    if not (shared_data / "ucm" / "ucm_precomp").is_dir():
        pytest.skip("../shared/data/ucm is not available")
    rc = train.main(["--config", "ucm_dual_encoder.yaml", "--output-dir", str(tmp_path),
                     "--set", f"data.root={shared_data / 'ucm'}", "--set", "data.max_images=200",
                     "--set", "train.epochs=3", "--set", "train.feature_cache=memory"])
    assert rc == 0
    # the first 200 training images are UCM's first two classes: score the held-out validation images of the fold
    # (the same two classes), at the last epoch, against the chance of their sizes
    run = tmp_path / "ucm_dual_encoder" / "fold0"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"val/mR"' in x]
    n_val = len(set((run / "splits" / "val_filename_verify.txt").read_text().split()))
    chance = _chance_mr(n_val, [5] * n_val)
    assert rows[-1]["val/mR"] > max(3 * chance, chance + 25), (rows[-1]["val/mR"], chance)
