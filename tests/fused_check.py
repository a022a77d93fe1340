"""Check the fused Triton kernels against the eager distances (and, given the golden folder,
the golden values); run by test_fused.py in its own process with TRITON_INTERPRET=1, so the
kernels run in Triton's CPU interpreter. Usage: python tests/fused_check.py [GOLDEN_DIR]"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from zsiqa import fused  # noqa: E402
from zsiqa.distances import DISTANCES, compute, to_columns  # noqa: E402

NAMES = ("skld", "jsd", "wsd")


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def check_against_eager():
    g = torch.Generator().manual_seed(7)
    for shape in [(5, 4, 33, 24), (2, 12, 50, 96), (3, 2, 197, 40), (2, 3, 14, 13)]:
        a = torch.randn(shape, generator=g)
        b = a + 0.3 * torch.randn(shape, generator=g)
        got = fused.distribution_distances(to_columns(a), to_columns(b))
        for n in NAMES:
            assert close(got[n], DISTANCES[n](a, b)), (shape, n)
        every = ("l2",) + NAMES + ("cos",)
        mixed = compute(every, a, b)  # the dispatch picks the fused kernels here (l2 too when only padding)
        assert close(mixed, torch.stack([DISTANCES[n](a, b) for n in every], 1)), shape
        assert close(fused.token_cosine(a, b), DISTANCES["cos"](a, b)), shape


def check_against_golden(folder):
    rows = json.load(open(os.path.join(folder, "expected.json")))["distances"]
    z = np.load(os.path.join(folder, "distances.npz"))
    for r in rows:
        ref = torch.from_numpy(z[f"case{r['case']}_ref"].astype(np.float32))
        dis = torch.from_numpy(z[f"case{r['case']}_dis"].astype(np.float32))
        got = fused.distribution_distances(to_columns(dis), to_columns(ref))
        got["cos"] = fused.token_cosine(dis, ref)
        got["l2"] = compute(("l2", "skld"), dis, ref)[:, 0]
        for n in NAMES + ("cos", "l2"):
            assert abs(got[n].item() - r[n]) <= 1e-4 * abs(r[n]) + 1e-6, (r["case"], n)


if __name__ == "__main__":
    check_against_eager()
    if len(sys.argv) > 1:
        check_against_golden(sys.argv[1])
    print("ok")
