"""Robustness transforms: small shifts, zooms and rotations applied when a pair is loaded, on
Pillow images, exactly as the published runs did (docs/robustness.md)."""
import math
import numbers

from PIL import Image

from zsiqa.errors import UserError


def _even(x):
    return math.ceil(x / 2) * 2


def translate(ref, dis, pct):
    """Shift by pct % of the width: the reference keeps the left part, the distorted image
    the right part, off = ceil(pct/100 · W) columns apart."""
    w, h = dis.size
    off = math.ceil(pct / 100 * w)
    return ref.crop((0, 0, w - off, h)), dis.crop((off, 0, w, h))


def zoom(ref, dis, pct):
    """Zoom the distorted image in by about pct %: enlarge by an even number of pixels, crop
    the centre, resize back (bilinear both ways). The reference is untouched."""
    w, h = dis.size
    dw, dh = _even(pct / 100 * w), _even(pct / 100 * h)
    big = dis.resize((w + dw, h + dh), Image.BILINEAR)
    cx, cy = (w + dw) // 2, (h + dh) // 2
    hw, hh = math.ceil(w / 2), math.ceil(h / 2)
    return ref, big.crop((cx - hw, cy - hh, cx + hw, cy + hh)).resize((w, h), Image.BILINEAR)


def rotate(ref, dis, pct):
    """Rotate the distorted image pct degrees clockwise (nearest, no expand, black corners)."""
    return ref, dis.rotate(-pct)


TRANSFORMS = {"tra": translate, "sca": zoom, "rot": rotate}


def check(kind, pct):
    """UserError unless (kind, pct) is a transform the protocol defines: pct an integer; a
    shift of 0-99 % of the width (100 % would leave nothing, a negative one pads with black);
    a zoom of 0-100 %; a rotation by any number of degrees."""
    if kind not in TRANSFORMS:
        raise UserError(f"unknown robustness transform '{kind}'; use one of {', '.join(TRANSFORMS)}")
    if isinstance(pct, bool) or not isinstance(pct, numbers.Integral):
        raise UserError(f"robustness magnitude must be an integer, got {pct!r}")
    if kind == "tra" and not 0 <= pct < 100:
        raise UserError(f"-rob tra -pct {pct}: a shift takes 0 to 99 (% of the width)")
    if kind == "sca" and not 0 <= pct <= 100:
        raise UserError(f"-rob sca -pct {pct}: a zoom-in takes 0 to 100 (%)")


class Transform:
    """A picklable (kind, pct) transform for DataLoader workers; refuses what `check` refuses."""

    def __init__(self, kind, pct=1):
        check(kind, pct)
        self.kind, self.pct = kind, int(pct)
        self.changes_reference = kind == "tra"  # only the shift crops the reference too

    def __call__(self, ref, dis):
        return TRANSFORMS[self.kind](ref, dis, self.pct)
