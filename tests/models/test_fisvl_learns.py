"""FISVL learns: the tiny config (value-guided switch at epoch 3) trained briefly on the demo data through
train.main reaches a test mR far above chance."""
import pytest

from tests.models.test_pir_learns import chance_mr, train_and_test


@pytest.mark.slow
def test_tiny_fisvl_learns(tmp_path):
    res = train_and_test("configs/tests/tiny_fisvl.yaml", "tiny_fisvl", tmp_path)
    assert res["n_images"] == 100 and res["method"] == "fisvl"
    assert res["mR"] > 3 * chance_mr(res["n_images"])
