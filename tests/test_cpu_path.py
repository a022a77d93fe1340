"""The CPU path of the distances (tiled skld/jsd/wsd on one thread, swd sorted by numpy) against
the eager formulas, and the prefetching loader against reading in the caller's thread."""
import threading

import numpy as np
import pytest
import torch

from zsiqa.distances import DISTANCES, compute, one_thread
from zsiqa.loading import prefetched

SHAPES = [(3, 12, 197, 40), (2, 3, 50, 16), (1, 2, 14, 13), (4, 4, 33, 24)]  # pad, crop, both, odd


def _eager(monkeypatch, names, a, b):
    monkeypatch.setenv("ZSIQA_TILED", "0")
    try:
        return compute(names, a, b)
    finally:
        monkeypatch.delenv("ZSIQA_TILED")


@pytest.mark.parametrize("shape", SHAPES)
def test_tiled_distances_equal_the_eager_formulas(monkeypatch, shape):
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(shape, generator=g)
    b = a + 0.3 * torch.randn(shape, generator=g)
    every = ("l2", "cos", "skld", "jsd", "wsd", "swd")
    want = _eager(monkeypatch, every, a, b)
    assert torch.allclose(compute(every, a, b), want, rtol=1e-6, atol=1e-8)
    for k, name in enumerate(every):  # alone, and in a tile much narrower than the tensor
        assert torch.allclose(DISTANCES[name](a, b), want[:, k], rtol=1e-6, atol=1e-8), name


def test_tiled_path_is_the_one_taken_on_the_cpu_and_gradients_keep_the_eager_one():
    a = torch.randn(2, 2, 16, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 2, 16, 8, dtype=torch.float64)
    out = compute(("skld", "jsd", "wsd", "swd"), a, b)
    out.sum().backward()  # the eager formulas have a backward
    assert a.grad is not None and torch.isfinite(a.grad).all()
    assert torch.allclose(compute(("skld", "jsd", "wsd", "swd"), a.detach(), b), out.detach(), rtol=1e-10)


def test_swd_sorted_by_numpy_equals_torch_sort_bit_for_bit():
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(3, 12, 20, 16, generator=g), torch.randn(3, 12, 20, 16, generator=g)
    assert torch.equal(DISTANCES["swd"](a, b, seed=4), _torch_swd(a, b, 4))


def _torch_swd(a, b, seed):
    """swd by its definition with torch's sort (independent of distances.py's sorting)."""
    dirs = torch.nn.functional.normalize(torch.randn(12, 12, generator=torch.Generator().manual_seed(seed)), dim=1)
    pa = torch.einsum("kl,nlp->nkp", dirs, a.reshape(3, 12, -1)).sort(-1).values
    pb = torch.einsum("kl,nlp->nkp", dirs, b.reshape(3, 12, -1)).sort(-1).values
    return (pa - pb).pow(2).mean(1).sum(-1)


def test_one_thread_restores_the_thread_count():
    before = torch.get_num_threads()
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), one_thread():
        raise ValueError
    assert torch.get_num_threads() == before


class Items:
    """A dataset of numbered items; item `bad` raises."""

    def __init__(self, n, bad=None):
        self.n, self.bad, self.read = n, bad, []

    def __len__(self):
        return self.n

    def __getitem__(self, k):
        if k == self.bad:
            raise TypeError(f"item {k}")
        self.read.append(k)
        return [np.full(3, k)]


def test_prefetched_items_come_in_order_and_errors_at_their_item():
    got = [int(item[0][0]) for item in prefetched(Items(7), 2)]
    assert got == list(range(7))
    seen = []
    with pytest.raises(TypeError, match="item 3"):
        for item in prefetched(Items(7, bad=3), 2):
            seen.append(int(item[0][0]))
    assert seen == [0, 1, 2]


def test_closing_a_prefetcher_early_stops_its_thread():
    ds = Items(1000)
    it = prefetched(ds, 2)
    next(it)
    it.close()
    assert not any(t.name == "zsiqa-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(ds.read) <= 5  # at most the queue's depth read ahead, not the whole set
