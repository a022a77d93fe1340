"""Robustness transforms: golden pixels (PROTOCOL.md §5)."""
import numpy as np
import pytest
from PIL import Image

from helpers import GOLDEN
from zsiqa.errors import UserError
from zsiqa.robustness import Transform


@pytest.mark.golden
def test_golden_pixels(golden):
    z = np.load(GOLDEN / "robustness.npz")
    assert len(golden["robustness"]) == 36
    for r in golden["robustness"]:
        im = Image.open(GOLDEN / "robustness" / r["image"]).convert("RGB")
        ref, dis = Transform(r["kind"], r["pct"])(im.copy(), im.copy())
        out = ref if r["role"] == "ref" else dis
        assert list(out.size) == r["out_size_wh"], r["key"]
        assert np.array_equal(np.asarray(out), z[r["key"]]), r["key"]


def test_reference_untouched_except_translation():
    im = Image.new("RGB", (300, 250), (1, 2, 3))
    assert Transform("tra", 2).changes_reference and not Transform("sca", 2).changes_reference
    for kind in ("sca", "rot"):
        ref, _ = Transform(kind, 5)(im, im.copy())
        assert ref is im
    ref, dis = Transform("tra", 5)(im, im.copy())
    assert ref.size == dis.size == (300 - 15, 250)
    with pytest.raises(UserError):
        Transform("flip", 1)


@pytest.mark.parametrize("kind,pct,match", [("tra", -5, "0 to 99"), ("tra", 100, "0 to 99"), ("tra", 250, "0 to 99"),
                                            ("sca", -1, "0 to 100"), ("sca", 101, "0 to 100"), ("rot", 1.5, "integer"),
                                            ("sca", "2", "integer")])
def test_magnitudes_outside_the_protocol_refused(kind, pct, match):
    """A negative shift would pad with black, 100 % would leave nothing: the API refuses too."""
    with pytest.raises(UserError, match=match):
        Transform(kind, pct)


def test_any_integer_rotation_and_zero_magnitudes_accepted():
    im = Image.new("RGB", (300, 250), (9, 9, 9))
    for kind, pct in (("rot", -30), ("rot", 400), ("tra", 0), ("tra", 99), ("sca", 0), ("sca", 100)):
        ref, dis = Transform(kind, pct)(im, im.copy())
        assert dis.size[1] == 250
