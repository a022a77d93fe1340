"""Distances: golden parity, hand-computed cases, and independent numpy/scipy re-derivations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import rel_entr, softmax

from helpers import GOLDEN, close
from zsiqa.distances import DISTANCES, to_columns

NAMES = ["l2", "cos", "skld", "wsd", "jsd"]


@pytest.mark.golden
@pytest.mark.parametrize("case", range(6))
def test_golden_cases(golden, case):
    row = golden["distances"][case]
    z = np.load(GOLDEN / "distances.npz")
    ref = torch.from_numpy(z[f"case{case}_ref"].astype(np.float32))
    dis = torch.from_numpy(z[f"case{case}_dis"].astype(np.float32))
    assert list(ref.shape) == row["shape"]
    for name in NAMES:
        got = DISTANCES[name](dis, ref).item()
        assert close(got, row[name]), (name, got, row[name])
    emb = lambda f: F.normalize(f[:, -1:], dim=-1)  # noqa: E731  the embed form: last layer, unit tokens
    got = DISTANCES["cos"](emb(dis), emb(ref)).item()
    assert close(got, row["cos_embed_tokens"]), (got, row["cos_embed_tokens"])


def test_hand_computed_l2_and_cos():
    ref = torch.zeros(1, 3, 5, 4)
    assert DISTANCES["l2"](ref + 2, ref).item() == pytest.approx(3 * 4.0)  # 3 layers × mean 2²
    a = torch.tensor([1.0, 0, 0, 0]).expand(1, 3, 5, 4)
    b = torch.tensor([0.0, 1, 0, 0]).expand(1, 3, 5, 4)
    assert DISTANCES["cos"](a, b).item() == pytest.approx(3.0)           # orthogonal: 1 per layer
    assert DISTANCES["cos"](a, -a).item() == pytest.approx(6.0)          # opposite: 2 per layer
    for name in ["skld", "jsd", "wsd", "swd"]:
        x = torch.randn(1, 2, 16, 8)
        assert DISTANCES[name](x, x).item() == pytest.approx(0.0, abs=1e-6), name


def test_column_layout_pads_and_crops_like_published():
    f = torch.arange(2 * 50 * 16, dtype=torch.float32).reshape(1, 2, 50, 16)
    cols = to_columns(f)  # 50 rows → 48 (two bottom rows cropped), 16 columns kept
    kept = f[:, :, :48, :].reshape(-1)
    assert cols.shape == (1, 64, kept.numel() // 64)
    assert torch.equal(cols.reshape(-1), kept)
    g = torch.ones(1, 1, 197, 8)  # 197 → 200: three zero rows at the bottom
    padded = to_columns(g).reshape(1, 200, 8)
    assert padded[0, 197:].abs().sum() == 0 and padded[0, :197].min() == 1
    h = torch.ones(1, 1, 8, 13)  # 13 → 16: three zero columns on the left
    padded = to_columns(h).reshape(1, 8, 16)
    assert padded[0, :, :3].abs().sum() == 0 and padded[0, :, 3:].min() == 1


def _numpy_reference(dis, ref):
    """skld, jsd, wsd re-derived in float64 numpy from PROTOCOL.md §4 (wsd by the POT
    quantile algorithm, not the cumulative-sum shortcut used in distances.py)."""
    x = to_columns(dis)[0].double().numpy()
    y = to_columns(ref)[0].double().numpy()
    sq = ((x - y) ** 2).sum(0)
    weight = lambda d: 1 / (np.sqrt(np.exp(-1 / (d + 10))) * (d + 10) ** 2)  # noqa: E731
    p = np.maximum(softmax(x, 0) + 1e-10, 1e-10)
    q = np.maximum(softmax(y, 0) + 1e-10, 1e-10)
    kld = (rel_entr(p, q).sum(0) + rel_entr(q, p).sum(0)) / 2
    m = (p + q) / 2
    js = (rel_entr(p, m).sum(0) + rel_entr(q, m).sum(0)) / 2
    u, v = softmax(x, -1), softmax(y, -1)
    support = np.arange(64)
    w = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        cu, cv = np.cumsum(u[:, j]), np.cumsum(v[:, j])
        qs = np.sort(np.concatenate([cu, cv]))
        qu = support[np.clip(np.searchsorted(cu, qs, "left"), 0, 63)]
        qv = support[np.clip(np.searchsorted(cv, qs, "left"), 0, 63)]
        delta = np.diff(np.concatenate([[0.0], qs]))
        w[j] = (delta * np.abs(qu - qv)).sum()
    squash = lambda v: np.log(v.mean() + 1) ** 0.25  # noqa: E731
    return {"skld": squash(kld + sq * weight(kld)), "jsd": squash(js), "wsd": squash(w + sq * weight(w))}


@pytest.mark.parametrize("shape", [(1, 3, 17, 40), (1, 12, 50, 24), (1, 2, 197, 16)])
def test_distribution_distances_match_numpy_rederivation(shape):
    g = torch.Generator().manual_seed(sum(shape))
    ref = torch.randn(shape, generator=g)
    dis = ref + 0.5 * torch.randn(shape, generator=g)
    want = _numpy_reference(dis, ref)
    for name, value in want.items():
        got = DISTANCES[name](dis, ref).item()
        assert got == pytest.approx(value, rel=1e-5), name


def test_swd_matches_direct_definition_and_is_seeded():
    g = torch.Generator().manual_seed(3)
    ref, dis = torch.randn(1, 4, 6, 5, generator=g), torch.randn(1, 4, 6, 5, generator=g)
    dirs = F.normalize(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)), dim=1).numpy().astype(np.float64)
    a = np.sort(dirs @ dis[0].reshape(4, -1).double().numpy(), axis=1)
    b = np.sort(dirs @ ref[0].reshape(4, -1).double().numpy(), axis=1)
    want = ((a - b) ** 2).mean(0).sum()
    assert DISTANCES["swd"](dis, ref).item() == pytest.approx(want, rel=1e-5)
    assert DISTANCES["swd"](dis, ref, seed=1).item() != pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", ["l2", "cos", "skld", "jsd", "wsd", "swd"])
def test_batched_equals_one_at_a_time(name):
    g = torch.Generator().manual_seed(5)
    ref, dis = torch.randn(5, 3, 17, 24, generator=g), torch.randn(5, 3, 17, 24, generator=g)
    batched = DISTANCES[name](dis, ref)
    single = torch.cat([DISTANCES[name](dis[i:i + 1], ref[i:i + 1]) for i in range(5)])
    assert batched.shape == (5,)
    assert torch.allclose(batched, single, rtol=1e-5, atol=1e-7)


def test_half_precision_inputs_are_compared_in_fp32():
    g = torch.Generator().manual_seed(9)
    ref, dis = torch.randn(2, 2, 16, 8, generator=g), torch.randn(2, 2, 16, 8, generator=g)
    for name in ["l2", "cos", "wsd"]:
        out = DISTANCES[name](dis.half(), ref.half())
        assert out.dtype == torch.float32
        assert torch.allclose(out, DISTANCES[name](dis.half().float(), ref.half().float()))
