"""Shared helpers: user-facing errors, image loading, sliding windows (PROTOCOL.md §1-2)."""
import argparse
import contextlib
import functools
import math
import numbers
import os
import sys
import warnings

import numpy as np
import torch
from PIL import Image

WINDOW = 224
STRIDE = 200


class UserError(Exception):
    """A problem with what the user asked for or gave (files, names, sizes, weights).
    The CLIs print its message on one line and exit with code 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse with its usage errors turned into UserError (one line, exit 2); `doc` (the
    script's docstring, with its examples) is shown by --help as written."""

    def __init__(self, doc, **kwargs):
        super().__init__(description=doc.strip(), formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        raise UserError(message)


def is_integer(x):
    """A Python or numpy integer (a bool is not one here)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def int_option(value, name, minimum, default, below=None, below_text=None):
    """An integer API option in [minimum, below) (None: the default); refuses floats, bools
    and strings with one line naming the option."""
    if value is None:
        return default
    if not is_integer(value) or value < minimum:
        raise UserError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    if below is not None and value >= below:
        raise UserError(f"{name} must be below {below_text or below}, got {value}")
    return int(value)


def seed_option(value):
    """The SWD seed option (default 0): an integer in [0, 2**63), what torch.Generator takes."""
    return int_option(value, "swd_seed", 0, 0, below=2**63, below_text="2**63")


def int_at_least(low, why=""):
    """An argparse type: an integer ≥ low, else a one-line usage error."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{why}, got {value}")
        return value
    return parse


@contextlib.contextmanager
def writing_file(path):
    """An output file (plot, map, table) that cannot be written — a missing or read-only folder,
    a folder in its place, a full disk, an unknown image extension — ends in one line."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise UserError(f"cannot write {path}: {getattr(e, 'strerror', None) or str(e).splitlines()[0]}") from None


def quiet_library_warnings():
    """The clip package's pkg_resources import and timm's deprecation notes are noise on a
    CLI's stderr; real problems still raise."""
    for pattern in (".*pkg_resources.*", ".*deprecated.*", ".*Importing from timm.*"):
        warnings.filterwarnings("ignore", message=pattern)
    # images of 89-179 Mpx are read (the engine compares big images block by block); larger
    # ones are still refused by Pillow's guard, in one line
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def to_json(obj, **dumps_options):
    """json.dumps with NaN/inf written as null (bare NaN is not JSON; jq and browsers reject it)."""
    import json
    import math

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), **dumps_options)


def cli_entry(main):
    """Run a CLI main(): UserError → one line on stderr and exit 2; Ctrl-C → exit 130.
    Whatever main() wrote before stays written."""
    @functools.wraps(main)
    def wrapper(argv=None):
        quiet_library_warnings()
        try:
            return main(argv)
        except UserError as e:
            sys.stderr.write(f"error: {e}\n")
            sys.exit(2)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted: results computed so far are kept\n")
            sys.exit(130)
    return wrapper


def _deep_scale(mode):
    """The divisor that brings a deep grey image to [0, 1]: 65535 for 'I;16*' and 'I' (16-bit
    files open as 32-bit int), 1 for 'F'; None for 8-bit modes."""
    if mode.startswith("I"):
        return 65535.0
    return 1.0 if mode == "F" else None


def as_rgb(im):
    """The protocol's first step, "convert to RGB" (§1), before any resize or robustness
    transform: 8-bit modes → 'RGB' (alpha dropped, palette and CMYK mapped, as published);
    deep grey modes → 'F' in [0, 1] (one grey channel, not clipped to 8 bits as Pillow's
    convert('RGB') would). A deep image whose values lie outside its scale (a float image of
    0-255, a 32-bit integer image, NaN) is refused rather than clipped."""
    top = _deep_scale(im.mode)
    if top is None:
        if im.mode == "RGB":
            return im
        try:
            return (im.convert("LA") if im.mode == "La" else im).convert("RGB")
        except ValueError as e:
            raise UserError(f"cannot convert a {im.mode}-mode image to RGB: {e}") from None
    a = np.asarray(im, dtype=np.float32)  # any byte order ('I;16B' too)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if not (lo >= 0 and hi <= top) or np.isnan(a).any():
        raise UserError(f"a {im.mode}-mode image holds values in [{lo:.6g}, {hi:.6g}] (or NaN), outside [0, {top:g}]: "
                        f"its scale is unknown (save it as 8- or 16-bit, or as float in [0, 1])")
    return Image.fromarray(a / np.float32(top) if top != 1 else a)  # float32 H×W → 'F'


def open_image(path):
    """Open and fully decode an image file with Pillow, converted (`as_rgb`) to 'RGB' or, for
    deep grey files, 'F' in [0, 1]; UserError if missing or unreadable."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = im.copy()
    except Exception as e:  # whatever a decoder raises (truncated, not an image, too large, …)
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    try:
        return as_rgb(im)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def pil_to_tensor(im):
    """Pillow image → tensor [3, H, W]: uint8 for 8-bit modes (exactly what the published
    ToTensor then divides by 255), float32 in [0, 1] for deep grey ones (`as_rgb`)."""
    im = as_rgb(im) if im.mode not in ("RGB", "F") else im
    if im.mode == "F":
        return torch.from_numpy(np.array(im, dtype=np.float32))[None].expand(3, -1, -1).contiguous()
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def to_float(x):
    """uint8 [.., 3, H, W] → float32 in [0, 1] (x / 255); float input passes through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def load_image(path, resize=None):
    """Read an image file as float32 RGB [3, H, W] in [0, 1], whatever its mode
    (L, LA, P, RGBA, I;16, CMYK, …). resize=N: then a bilinear N×N resize."""
    im = open_image(path)
    if resize:
        im = resize_square(im, resize)
    return to_float(pil_to_tensor(im))


def resize_square(im, size):
    """The published optional `-r N`: bilinear resize to N×N (of an `as_rgb` image)."""
    return im.resize((size, size), Image.BILINEAR)


def resize_tensor(x, size):
    """`resize_square` for an image tensor [3, H, W] (uint8, or float in [0, 1]), by the same
    Pillow filter, so a tensor resizes exactly as the same pixels read from a file: uint8 as
    8-bit RGB, float per channel in 'F' mode (no rounding to 8 bits)."""
    if x.dtype == torch.uint8:
        return pil_to_tensor(resize_square(Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).cpu())), size))
    channels = [np.asarray(resize_square(Image.fromarray(c), size)) for c in x.float().cpu().numpy()]
    return torch.from_numpy(np.stack(channels))


@functools.cache
def window_positions(length):
    """Window starts along an axis of `length` px: range(0, L−224, 200) then L−224 (§2)."""
    if length < WINDOW:
        raise UserError(f"image side of {length} px is under {WINDOW} px; pass -r/--resize N (N ≥ {WINDOW}) to resize")
    return tuple(range(0, length - WINDOW, STRIDE)) + (length - WINDOW,)


def window_count(height, width):
    return len(window_positions(height)) * len(window_positions(width))


@functools.lru_cache(maxsize=64)
def _window_index(height, width, device):
    """Row and column indices of every window's pixels, on the device, made once per image
    size (a fresh host→device copy per image would make CUDA sync with its queued work)."""
    offs = torch.arange(WINDOW)
    rows = (torch.tensor(window_positions(height))[:, None] + offs).reshape(-1)
    cols = (torch.tensor(window_positions(width))[:, None] + offs).reshape(-1)
    return rows.to(device), cols.to(device)


def windows(img, select=None):
    """Crop every 224×224 window (rows outer) of img [3, H, W] → [K, 3, 224, 224], or of a
    stack [n, 3, H, W] → [n·K, 3, 224, 224] (image-major), by one gather per axis instead
    of a Python loop over windows. select: a range of window indices (rows-outer order) to
    crop instead of all K, e.g. one block of a reference too large to cache whole."""
    batched = img.dim() == 4
    img = img if batched else img[None]
    n, c, h, w = img.shape
    pr, pc = window_positions(h), window_positions(w)
    offs = torch.arange(WINDOW)
    if select is not None:
        k = torch.as_tensor(list(select))
        rows = (torch.tensor(pr)[k // len(pc), None] + offs).to(img.device, non_blocking=True)
        cols = (torch.tensor(pc)[k % len(pc), None] + offs).to(img.device, non_blocking=True)
        crops = img[:, :, rows[:, :, None], cols[:, None, :]]  # [n, 3, k, 224, 224]
        return crops.transpose(1, 2).reshape(n * len(k), c, WINDOW, WINDOW)
    rows, cols = _window_index(h, w, img.device)
    crops = img[:, :, rows][:, :, :, cols]  # [n, 3, nr*224, nc*224]
    crops = crops.reshape(n, c, len(pr), WINDOW, len(pc), WINDOW).permute(0, 2, 4, 1, 3, 5)
    return crops.reshape(n * len(pr) * len(pc), c, WINDOW, WINDOW)


def pair_problem(ref_wh, dis_wh, shift_pct=0, resized=False):
    """Why a pair cannot be scored, or None: the one place pair usability is decided.

    ref_wh, dis_wh: (width, height) as loaded (after -r N when `resized`); shift_pct: the
    largest translation that will crop the pair (PROTOCOL.md §5). One message per reason;
    the text before ' (' names the reason, the rest gives this pair's sizes."""
    (w, h), (w2, h2) = tuple(ref_wh), tuple(dis_wh)
    if (w, h) != (w2, h2):
        return f"reference and distorted sizes differ ({w}x{h} vs {w2}x{h2}" + (")" if resized else "; or use -r N)")
    cropped = w - math.ceil(shift_pct / 100 * w)
    if min(cropped, h) < WINDOW:
        after = " after the shift" if shift_pct else ""
        return f"a side under {WINDOW} px{after} ({cropped}x{h}" + (")" if resized else "; use -r N, N >= 224)")
    return None


def check_pair(ref_wh, dis_wh, name="pair", shift_pct=0, resized=False):
    """UserError naming the pair when `pair_problem` finds one."""
    problem = pair_problem(ref_wh, dis_wh, shift_pct, resized)
    if problem:
        raise UserError(f"{name}: {problem}")
