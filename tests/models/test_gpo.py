"""GPO against hand-computed cases: positional codes, uniform scores, fixed weights, masking and order invariance."""
from __future__ import annotations

import math

import torch

from models.encoders.gpo import GPO, positional_encoding_1d


def test_positional_encoding_hand_values() -> None:
    pe = positional_encoding_1d(4, 3)
    # d = 4: frequencies 1 and 1/100 for the pairs (0, 1) and (2, 3)
    expect = torch.tensor([[math.sin(p), math.cos(p), math.sin(p / 100), math.cos(p / 100)] for p in range(3)])
    torch.testing.assert_close(pe, expect)


def test_pool_sorts_each_dimension_and_weights_by_rank() -> None:
    x = torch.tensor([[[1.0, 5.0], [3.0, 2.0], [2.0, 9.0], [100.0, 100.0]]])  # last element is padding
    w = torch.tensor([[[0.5], [0.3], [0.2], [0.0]]])
    out = GPO.pool(x, w, torch.tensor([3]))
    # sorted columns: [3, 2, 1] and [9, 5, 2]
    torch.testing.assert_close(out, torch.tensor([[3 * .5 + 2 * .3 + 1 * .2, 9 * .5 + 5 * .3 + 2 * .2]]))


def test_zero_scores_give_the_mean_of_the_real_elements() -> None:
    gpo = GPO(4, 4)
    torch.nn.init.zeros_(gpo.linear.weight)
    x = torch.tensor([[[1.0, -2.0], [3.0, 4.0], [8.0, 8.0]], [[1.0, 1.0], [5.0, 7.0], [-1.0, 0.0]]])
    out = gpo(x, torch.tensor([2, 3]))
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0], [5 / 3, 8 / 3]]))


def test_weights_match_an_unpadded_gru_run_and_ignore_padding() -> None:
    torch.manual_seed(0)
    gpo = GPO(8, 6)
    lengths = torch.tensor([5, 2, 5])
    w = gpo.pool_weights(lengths, 5)
    for b, n in enumerate(lengths.tolist()):
        out, _ = gpo.gru(positional_encoding_1d(8, n).unsqueeze(0))  # the set alone, no padding
        scores = gpo.linear((out[..., :6] + out[..., 6:]) / 2)[0, :, 0]
        torch.testing.assert_close(w[b, :n, 0], torch.softmax(scores / 0.1, 0), rtol=1e-5, atol=1e-6)
        assert float(w[b, n:].detach().abs().sum()) == 0.0
    x = torch.randn(3, 5, 4)
    y = x.clone()
    y[1, 2:] = 1e3  # padding content must not matter
    torch.testing.assert_close(gpo(x, lengths)[1], gpo(y, lengths)[1])
    perm = x[:, torch.tensor([4, 0, 3, 1, 2])]  # a full set in another order pools the same
    torch.testing.assert_close(gpo(perm)[0], gpo(x)[0])


def _packed_gru(gpo: GPO, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: PyTorch's own GRU over packed sequences (the CUDA path of GPO.pool_weights)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(gpo.gru(packed)[0], batch_first=True, total_length=x.shape[1])
    return out.chunk(2, dim=-1)


def test_cpu_bidirectional_gru_equals_torch_gru_on_packed_sequences() -> None:
    torch.manual_seed(0)
    gpo = GPO(8, 6).double()
    lengths = torch.tensor([7, 1, 4, 7, 2])
    mask = (torch.arange(7)[None] < lengths[:, None]).unsqueeze(-1)
    x = torch.randn(5, 7, 8, dtype=torch.float64) * mask
    ours, ref = gpo.bidirectional_gru(x, lengths), _packed_gru(gpo, x, lengths)
    for a, b in zip(ours, ref):  # the backward direction of every set starts at its own last element
        torch.testing.assert_close(a * mask, b * mask, rtol=1e-12, atol=1e-12)
    w = torch.randn(5, 7, 6, dtype=torch.float64) * mask  # a random linear function of both directions
    grads = [torch.autograd.grad(((fw + bw) * w).sum(), list(gpo.gru.parameters())) for fw, bw in (ours, ref)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_descending_order_sorts_like_torch_sort_and_keeps_its_gradient() -> None:
    from models.encoders.gpo import descending_order
    torch.manual_seed(0)
    for k in (5, 40):  # torch path (<= 8 elements) and the NumPy path
        x = torch.randn(3, 4, k, requires_grad=True)
        ours = x.gather(-1, descending_order(x))
        ref = x.sort(dim=-1, descending=True).values
        assert torch.equal(ours, ref)
        w = torch.randn(3, 4, k)
        torch.testing.assert_close(torch.autograd.grad((ours * w).sum(), x)[0],
                                   torch.autograd.grad((ref * w).sum(), x)[0], rtol=0, atol=0)


def test_pool_matches_a_per_set_brute_force() -> None:
    torch.manual_seed(1)
    x, lengths = torch.randn(4, 12, 3), torch.tensor([12, 3, 9, 1])
    w = torch.softmax(torch.randn(4, 12, 1), 1) * (torch.arange(12)[None, :, None] < lengths[:, None, None])
    out = GPO.pool(x, w, lengths)
    for b, n in enumerate(lengths.tolist()):
        ranked = torch.stack([torch.tensor(sorted(x[b, :n, d].tolist(), reverse=True)) for d in range(3)], 1)
        torch.testing.assert_close(out[b], (ranked * w[b, :n]).sum(0))
