"""Every input → image tensor rule: files, PIL images, numpy arrays and tensors, any mode and
bit depth, checked and converted the one way the protocol reads them.

The protocol's first step is "read with Pillow, convert to RGB" (docs/protocol.md): 8-bit modes
become 'RGB' as Pillow converts them; deep grey images (16-bit, float) keep their precision in
[0, 1] instead of being clipped to 8 bits. An image becomes a tensor [3, H, W] that is uint8
(scaled ÷ 255 window by window, so 8-bit and float images may share a batch) or float32 in [0, 1].
"""
import os
import warnings
from collections import Counter

import numpy as np
import torch
from PIL import Image

from zsiqa.errors import ImageNoteWarning, UserError, check_readable, file_problem
from zsiqa.windows import pair_problem


def _deep_scale(mode):
    """The divisor that brings a deep grey image to [0, 1]: 65535 for 'I;16*' and 'I' (16-bit
    files open as 32-bit int), 1 for 'F'; None for 8-bit modes."""
    if mode.startswith("I"):
        return 65535.0
    return 1.0 if mode == "F" else None


def as_rgb(im):
    """The protocol's "convert to RGB", before any resize or robustness transform.

    8-bit modes → 'RGB' (alpha dropped, palette and CMYK mapped, as published); deep grey modes
    → 'F' in [0, 1] (one grey channel, not clipped to 8 bits as Pillow's convert('RGB') would).
    A deep image whose values lie outside its scale (a float image of 0-255, a 32-bit integer
    image, NaN) is refused rather than clipped."""
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


EXIF_ORIENTATION = 0x0112
NOTES = {  # what an image note means for its score: the published code reads images the same way
    "rotated": "carry an EXIF orientation other than 'normal': scored as stored, not rotated",
    "animated": "are animated: scored by their first frame",
}


def image_notes(im):
    """What about an open image is scored as the published code scores it, though a user may not
    expect it: 'rotated' (a non-default EXIF orientation) and 'animated' (several frames), as a
    tuple of `NOTES` keys."""
    try:
        rotated = im.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
    except Exception:  # a damaged EXIF block: no orientation to honour
        rotated = False
    return ("rotated",) * rotated + ("animated",) * bool(getattr(im, "is_animated", False))


def notes_text(counts, examples):
    """One line per note of `pair_problems`' counts: how many images, an example, what it means."""
    return [f"{n} image(s) {NOTES[k]} (e.g. {examples[k]})" for k, n in counts.items()]


def open_image(path, resize=None):
    """Open and fully decode an image file, converted by `as_rgb` to 'RGB' or (deep grey) 'F',
    then (resize=N) resized by `resize_square`. Only regular files are opened (a FIFO would
    block forever). UserError if missing or unreadable."""
    path = check_readable(os.fspath(path), "image")
    try:
        with Image.open(path) as im:
            notes = image_notes(im)
            im.load()
            im = im.copy()
    except Exception as e:  # whatever a decoder raises (truncated, not an image, too large, …)
        raise UserError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if notes:  # once per message by Python's default filter; the commands say it up front instead
        warnings.warn(f"some images {'; some '.join(NOTES[k] for k in notes)}", ImageNoteWarning, stacklevel=2)
    try:
        im = as_rgb(im)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return resize_square(im, resize) if resize else im


def header_size(path):
    """An image file's (width, height) read from its header alone (fast), or why it cannot be
    read: ((w, h), None) or (None, reason), the reason one of 'missing', 'a folder', 'not a
    regular file …' (a FIFO would block the reader), 'too large …' (over Pillow's
    decompression-bomb guard), 'unreadable …'."""
    return _header(path)[:2]


def _header(path):
    """`header_size`'s (size, reason), and the image's `image_notes` (() when unreadable)."""
    problem = file_problem(path)
    if problem:
        return None, problem, ()
    try:
        with Image.open(path) as im:
            return im.size, None, image_notes(im)
    except Image.DecompressionBombError:
        return None, f"too large (over Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} px)", ()
    except Exception:  # whatever a decoder raises on a file it cannot identify
        return None, "unreadable (not an image Pillow can open)", ()


def pair_problems(pairs, resize=None, shift_pct=0, warn=None):
    """Why each pair of image files [(ref, dis)] cannot be scored, from headers alone (fast):
    [(reason, the file it is about)], (None, None) for a usable pair. A file's reason is
    `header_size`'s; a pair's is `windows.pair_problem`'s (sizes differ, a side under 224 px,
    also after a shift of shift_pct % crops it), with its file None. resize: the side the images
    will be resized to first. warn: called with one line per kind of `image_notes` found (a
    count and an example), once for all the pairs."""
    sizes, unreadable, counts, examples = {}, {}, Counter(), {}
    for path in dict.fromkeys(p for pair in pairs for p in pair):
        size, why, notes = _header(path)
        counts.update(notes)
        examples.update({k: path for k in notes if k not in examples})
        if why:
            unreadable[path] = why
        else:
            sizes[path] = (resize, resize) if resize else size
    out = []
    for ref, dis in pairs:
        bad = next((p for p in (ref, dis) if p in unreadable), None)
        out.append((unreadable[bad], bad) if bad else (pair_problem(sizes[ref], sizes[dis], shift_pct, bool(resize)),
                                                       None))
    for line in notes_text(counts, examples) if warn else ():
        warn(line)
    return out


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
    """An image file as float32 RGB [3, H, W] in [0, 1], whatever its mode (L, LA, P, RGBA,
    I;16, CMYK, …). resize=N: then a bilinear N×N resize."""
    return to_float(pil_to_tensor(open_image(path, resize)))


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


# ---------------------------------------------------------------- what the API accepts

def image_tensor(x, resize=None):
    """One image as the API takes it → [3, H, W], uint8 (8-bit sources, scaled later) or float
    in [0, 1], resized to N×N when `resize` is given.

    Args:
        x: a path, a PIL image (any mode), a numpy H×W×3/4 or H×W uint8 array or H×W uint16,
            or a tensor [3, H, W] that is uint8, uint16 or float in [0, 1].
        resize: None, or the side N of the published square resize.

    Returns:
        torch tensor [3, H, W]. Raises UserError for anything else, NaN/inf, floats outside
        [0, 1] and integer dtypes whose scale is ambiguous.
    """
    if torch.is_tensor(x):
        x = checked_tensor(x)
        return resize_tensor(x, resize) if resize else x
    if isinstance(x, np.ndarray):
        x = _array_to_pil(x)
    elif not isinstance(x, (str, os.PathLike, Image.Image)):
        raise UserError(f"cannot score a {type(x).__name__}: give a path, a PIL image, a numpy HWC uint8 array "
                        f"or a tensor [3, H, W]")
    im = as_rgb(_loaded(x)) if isinstance(x, Image.Image) else open_image(x)
    return pil_to_tensor(resize_square(im, resize) if resize else im)


def checked_tensor(x):
    """An image tensor → [3, H, W], uint8 or float in [0, 1]; wrong ranges are refused."""
    if x.layout != torch.strided:
        raise UserError(f"image tensors must be dense, got a {x.layout} tensor (call .to_dense())")
    if x.device.type == "meta":
        raise UserError("an image tensor on the meta device holds no values")
    if x.dim() != 3 or x.shape[0] != 3:
        raise UserError(f"image tensors must be [3, H, W] or [N, 3, H, W], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.uint16:
        return x.float().div_(65535)
    if not x.is_floating_point():
        raise UserError(f"image tensors of dtype {x.dtype} are ambiguous: give uint8 (0-255), uint16 (0-65535) "
                        f"or float in [0, 1]")
    x = x.float()
    if not torch.isfinite(x).all():
        raise UserError("image tensor holds NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise UserError(f"float image tensors must hold values in [0, 1], got [{_exact(x.min())}, {_exact(x.max())}] "
                        "(the loss, PerceptualLoss, takes any values)")
    return x


def _exact(value):
    """A tensor's scalar as the shortest decimal that is exactly it (float32 1.0000003 prints as
    1.0000004, not as the 1 that a rounded format would make of it)."""
    return str(value.detach().cpu().numpy())


def _loaded(im):
    """A PIL image given to the API, decoded (a lazily opened file whose handle was closed is
    refused in one line, not with Pillow's AssertionError)."""
    try:
        im.load()
    except Exception as e:
        raise UserError(f"cannot read the PIL image given: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                        f"(open it inside a `with` block and call .load(), or pass the path)") from None
    return im


def _array_to_pil(a):
    """A numpy image (H×W or H×W×3/4 uint8, H×W uint16) as Pillow reads it; others refused."""
    ok = (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))) or \
         (a.dtype == np.uint16 and a.ndim == 2)
    if not ok:
        raise UserError(f"numpy images must be H×W×3 (or ×4, or H×W) uint8, or H×W uint16; "
                        f"got {a.dtype} {list(a.shape)}")
    return Image.fromarray(np.ascontiguousarray(a))


def as_list(x):
    """The API's images argument as a list: a batch tensor [N, 3, H, W] by image, a list or
    tuple as it is, anything else as one image."""
    if torch.is_tensor(x) and x.dim() == 4:
        return list(x.unbind(0))
    return list(x) if isinstance(x, (list, tuple)) else [x]
