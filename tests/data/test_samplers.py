"""The training sampler: reproducible per (seed, epoch), and world-size independent global batches."""
import pytest

from data.samplers import GlobalBatchSampler


def batches(s, b):
    items = list(s)
    return [items[i:i + b] for i in range(0, len(items), b)]


def test_two_ranks_rebuild_the_one_process_batches():
    one = GlobalBatchSampler(103, 10, seed=3)
    one.set_epoch(2)
    r0, r1 = (GlobalBatchSampler(103, 10, seed=3, rank=r, world_size=2) for r in (0, 1))
    for s in (r0, r1):
        s.set_epoch(2)
    merged = [a + b for a, b in zip(batches(r0, 5), batches(r1, 5))]
    assert merged == batches(one, 10) and len(merged) == 10  # tail of 3 dropped


def test_epoch_and_seed_change_order_only_through_set_epoch():
    s = GlobalBatchSampler(50, 10, seed=0)
    e0 = list(s)
    assert list(s) == e0  # same epoch -> same order
    s.set_epoch(1)
    assert list(s) != e0 and sorted(list(s)) == sorted(e0)
    assert list(GlobalBatchSampler(50, 10, seed=1)) != e0


def test_errors():
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(50, 9, world_size=2)
    with pytest.raises(ValueError, match="larger than"):
        GlobalBatchSampler(5, 10)
