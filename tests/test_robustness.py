"""Robustness transforms: golden pixels (PROTOCOL.md §5)."""
import numpy as np
import pytest
from PIL import Image

from conftest import GOLDEN, needs_shared
from robustness import Transform, transform
from utils import UserError


@needs_shared
def test_golden_pixels(golden):
    z = np.load(GOLDEN / "robustness.npz")
    assert len(golden["robustness"]) == 36
    for r in golden["robustness"]:
        im = Image.open(GOLDEN / "robustness" / r["image"]).convert("RGB")
        ref, dis = transform(im.copy(), im.copy(), r["kind"], r["pct"])
        out = ref if r["role"] == "ref" else dis
        assert list(out.size) == r["out_size_wh"], r["key"]
        assert np.array_equal(np.asarray(out), z[r["key"]]), r["key"]


def test_reference_untouched_except_translation():
    im = Image.new("RGB", (300, 250), (1, 2, 3))
    assert Transform("tra", 2).changes_reference and not Transform("sca", 2).changes_reference
    for kind in ("sca", "rot"):
        ref, _ = transform(im, im.copy(), kind, 5)
        assert ref is im
    ref, dis = transform(im, im.copy(), "tra", 5)
    assert ref.size == dis.size == (300 - 15, 250)
    with pytest.raises(UserError):
        Transform("flip", 1)
