"""The fused Triton kernels (CUDA path for skld/jsd/wsd) against the eager definitions and
the golden values, run in Triton's CPU interpreter in a separate process."""
import os
import subprocess
import sys

import pytest

from conftest import GOLDEN, HAVE_SHARED, ROOT

pytest.importorskip("triton", reason="Triton is not installed; the fused GPU path is then never used")

SCRIPT = r"""
import json, sys, numpy as np, torch
import fused
from distances import DISTANCES, compute, to_columns
names = ("skld", "jsd", "wsd")
g = torch.Generator().manual_seed(7)
for shape in [(5, 4, 33, 24), (2, 12, 50, 96), (3, 2, 197, 40), (2, 3, 14, 13)]:
    a = torch.randn(shape, generator=g)
    b = a + 0.3 * torch.randn(shape, generator=g)
    got = fused.distribution_distances(to_columns(a), to_columns(b))
    for n in names:
        want = DISTANCES[n](a, b)
        assert torch.allclose(got[n], want, rtol=1e-5, atol=1e-7), (shape, n, got[n], want)
    every = ("l2",) + names + ("cos",)
    mixed = compute(every, a, b)  # the dispatch picks the fused kernels here (l2 too when only padding)
    assert torch.allclose(mixed, torch.stack([DISTANCES[n](a, b) for n in every], 1), rtol=1e-5, atol=1e-7), shape
    assert torch.allclose(fused.token_cosine(a, b), DISTANCES["cos"](a, b), rtol=1e-5, atol=1e-7)
if len(sys.argv) > 1:
    rows = json.load(open(sys.argv[1] + "/expected.json"))["distances"]
    z = np.load(sys.argv[1] + "/distances.npz")
    for r in rows:
        ref = torch.from_numpy(z[f"case{r['case']}_ref"].astype(np.float32))
        dis = torch.from_numpy(z[f"case{r['case']}_dis"].astype(np.float32))
        got = fused.distribution_distances(to_columns(dis), to_columns(ref))
        got["cos"] = fused.token_cosine(dis, ref)
        got.update(dict(zip(("l2",), compute(("l2", "skld"), dis, ref)[:, 0])))
        for n in names + ("cos", "l2"):
            assert abs(got[n].item() - r[n]) <= 1e-4 * abs(r[n]) + 1e-6, (r["case"], n)
print("ok")
"""


def test_fused_kernels_match_eager_and_golden():
    args = [sys.executable, "-c", SCRIPT] + ([str(GOLDEN)] if HAVE_SHARED else [])
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
