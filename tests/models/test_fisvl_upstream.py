"""FISVL: a random state dict with exactly the upstream keys/shapes (upstream_keys/fisvl.txt) loads through
``model.init_from``; every key is used and every tensor lands where the (independently written) mapping says."""
import pytest
import torch

from tests.models.test_pir_upstream import check_all_placed, check_parameter_count, load_full_size


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return load_full_size("fisvl", "configs/rsitmd_fisvl.yaml", tmp_path_factory)


def test_every_upstream_key_is_used_and_lands_in_place(loaded) -> None:
    check_all_placed(*loaded)


def test_spot_checks_and_size(loaded) -> None:
    state, model, _ = loaded
    assert torch.equal(model.sfgs.wsa.fmp_weight, state["conv_encoder.loc_fea1.sfgs.wsa.fmp_weight"])
    assert torch.equal(model.sfgs.conv_filter[0].weight, state["conv_encoder.loc_fea1.conv_filter.0.weight"])
    assert torch.equal(model.conv_encoder.layer1[0].conv1.weight, state["conv_encoder.layer1.0.conv1.weight"])
    assert torch.equal(model.img_gcn[1].graph_key_w.bias, state["img_gcn.1.graph_key_w.bias"])
    check_parameter_count(model, state)  # 166.0M parameters (+0.3M buffers: METHODS.md E's 166.3M)
