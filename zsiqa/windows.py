"""Sliding 224×224 windows: where they sit, cropping them, and whether a pair can be scored.

Along an axis of length L ≥ 224 the windows start at range(0, L − 224, 200) and then L − 224;
a pair's windows are every (row, column) start, rows outer, cropped alike from both images
(docs/protocol.md). Its score is the mean of the per-window distances.
"""
import functools
import math

import torch

from zsiqa.errors import UserError

WINDOW = 224
STRIDE = 200


@functools.cache
def window_positions(length):
    """Window starts along an axis of `length` px: range(0, L−224, 200) then L−224."""
    if length < WINDOW:
        raise UserError(f"image side of {length} px is under {WINDOW} px; resize it first (resize=N, -r N; "
                        f"N ≥ {WINDOW})")
    return tuple(range(0, length - WINDOW, STRIDE)) + (length - WINDOW,)


def window_count(height, width):
    """How many windows an image of this size has."""
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
    """Every 224×224 window of an image, by one gather per axis (no loop over windows).

    Args:
        img: [3, H, W], or a stack [n, 3, H, W].
        select: a range of window indices (rows-outer order) to crop instead of all K, e.g.
            one block of a reference too large to cache whole.

    Returns:
        [K, 3, 224, 224], or [n·K, 3, 224, 224] image-major for a stack.
    """
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

    Args:
        ref_wh, dis_wh: (width, height) as loaded (after the resize when `resized`).
        shift_pct: the largest translation that will crop the pair (a robustness shift).
        resized: the images were resized already (the hint to resize is then left out).

    Returns:
        None, or one message per reason: the text before ' (' names the reason, the rest
        gives this pair's sizes.
    """
    (w, h), (w2, h2) = tuple(ref_wh), tuple(dis_wh)
    if (w, h) != (w2, h2):
        return f"reference and distorted sizes differ ({w}x{h} vs {w2}x{h2}" + (")" if resized else
                                                                             "; or resize both: resize=N, -r N)")
    cropped = w - math.ceil(shift_pct / 100 * w)
    if min(cropped, h) < WINDOW:
        after = " after the shift" if shift_pct else ""
        return f"a side under {WINDOW} px{after} ({cropped}x{h}" + (")" if resized else
                                                                  "; resize both: resize=N, -r N, N >= 224)")
    return None


def check_pair(ref_wh, dis_wh, name="pair", shift_pct=0, resized=False):
    """UserError naming the pair when `pair_problem` finds one."""
    problem = pair_problem(ref_wh, dis_wh, shift_pct, resized)
    if problem:
        raise UserError(f"{name}: {problem}")
