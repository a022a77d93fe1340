"""Spatial maps of where a pair differs (`Scorer.maps`, `zsiqa score --maps DIR`).

l2 and cos are sums over layers of means over positions, so each window's score splits into
per-position shares. Token backbones: each patch token's share (summed over layers) is laid
on the window's patch grid (14×14 for ViT-B/16, 7×7 for ViT-B/32 at 224 px) and upsampled
(nearest) to the window's 224×224 pixels. Prefix tokens (class, registers) have no position:
their share is spread evenly over the window. Conv maps: each layer's map is upsampled to
224×224 and the layers summed; `cos` runs along the width axis (as published), so its map
varies by row only. skld/jsd/wsd/swd mix positions (their columns are not spatial): their
map is the window's score over the whole window. In every case a window's 224×224 map has
the window's score as its mean. Overlapping windows are averaged into the image-size map.
"""
import math

import torch
import torch.nn.functional as F

from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError
from zsiqa.images import to_float
from zsiqa.windows import WINDOW, check_pair, window_positions, windows

SPATIAL = tuple(name for name, d in DISTANCES.items() if d.spatial)  # l2, cos


def token_density(terms):
    """Per-token terms [N, L, T] (layer score = mean over T) → [N, g, g], summed over layers,
    whose mean is the window's score; the T − g² prefix tokens' share spread evenly."""
    n, _, t = terms.shape
    g = math.isqrt(t)
    terms = terms.sum(1)
    grid = terms[:, t - g * g:].reshape(n, g, g) * (g * g) + terms[:, :t - g * g].sum(1)[:, None, None]
    return grid / t


def conv_density(terms):
    """A conv group's terms [N, L, C, H, W] (l2) or [N, L, C, H] (cos, the published cosine
    running along the width) → density [N, H, W or 1] summed over layers whose mean is the
    group's score; NaN terms (left out, as the published nanmean) count for nothing."""
    if terms.dim() == 5:
        return terms.mean(2).sum(1)
    valid = ~terms.isnan()
    rows = torch.where(valid, terms, 0).sum(2) * terms.shape[-1] / valid.sum((2, 3), keepdim=True)[..., 0]
    return rows.sum(1)[..., None]


def density(name, f_dis, f_ref, grids, skip_nonfinite=False):
    """The per-position density of a spatial distance on one feature group → [N, 224, 224]:
    its terms (distances.py, the formulas the score is the mean of) laid out in space."""
    terms = DISTANCES[name].terms(f_dis, f_ref, skip_nonfinite=skip_nonfinite)
    if grids:
        dens = conv_density(terms)
    else:
        dens = token_density(terms.mean(-1) if terms.dim() == 4 else terms)  # l2: a token's mean over channels
    return F.interpolate(dens[:, None], size=(WINDOW, WINDOW), mode="nearest")[:, 0]


def _batch_maps(core, fd, fr, extra=()):
    """One batch of windows' features → {distance: [b, 224, 224]}, for the core's distances and
    the spatial distances `extra` (a per-position map beside per-window ones)."""
    grids = core.backbone.features == "grids"
    scores = core.window_scores(fd, lambda a, b: [f[a:b] for f in fr]).float()
    out = {}
    for j, d in enumerate(core.distances):
        if d in SPATIAL:
            out[d] = sum(density(d, a, b, grids, core.skip_nonfinite) for a, b in zip(fd, fr, strict=True))
        else:
            out[d] = scores[:, j, None, None].expand(-1, WINDOW, WINDOW)
    for d in extra:
        if d not in out:
            out[d] = sum(density(d, a, b, grids, core.skip_nonfinite) for a, b in zip(fd, fr, strict=True))
    return out


def _pair(image_tensor, resized, dis, ref):
    """One pair as the Scorer reads it (`image_tensor`) → (ref, dis) float tensors [3, H, W] of the
    same size (a tensor [1, 3, H, W] is that one image; maps are made for one pair at a time)."""
    for x in (dis, ref):
        if torch.is_tensor(x) and x.dim() == 4 and x.shape[0] != 1:
            raise UserError(f"maps are made for one pair at a time: got a batch of {x.shape[0]} images")
    ref, dis = (to_float(image_tensor(x[0] if torch.is_tensor(x) and x.dim() == 4 else x)) for x in (ref, dis))
    check_pair(ref.shape[:0:-1], dis.shape[:0:-1], "pair", resized=resized)
    return ref, dis


def window_batches(core, batch_size, ref, dis, extra=()):
    """Yield (first window index, {distance: [b, 224, 224]}) per batch of windows of a
    prepared pair (float tensors [3, H, W]); `extra` spatial distances beside the core's."""
    wr, wd = windows(ref), windows(dis)
    for s in range(0, wr.shape[0], batch_size):
        fr, fd = core.encode(wr[s:s + batch_size]), core.encode(wd[s:s + batch_size])
        yield s, {d: m.cpu() for d, m in _batch_maps(core, fd, fr, extra).items()}


def window_maps(core, batch_size, image_tensor, dis, ref):
    """{distance: tensor [K, 224, 224]}: each window's map, rows-outer order (`image_tensor` reads
    an image as the Scorer does)."""
    pair = _pair(image_tensor, bool(core.resize), dis, ref)
    parts = [m for _, m in window_batches(core, batch_size, *pair)]
    return {d: torch.cat([p[d] for p in parts]) for d in core.distances}


def _pixel_index(first, count, pr, pc, w):
    """Flat canvas indices [count, 224, 224] of the pixels of windows first..first+count−1
    (rows-outer order over the row positions pr and column positions pc)."""
    k = torch.arange(first, first + count)
    rows = torch.as_tensor(pr)[k // len(pc)][:, None] + torch.arange(WINDOW)
    cols = torch.as_tensor(pc)[k % len(pc)][:, None] + torch.arange(WINDOW)
    return rows[:, :, None] * w + cols[:, None, :]


def image_maps(core, batch_size, image_tensor, dis, ref, extra=()):
    """{distance: float32 numpy [H, W]}: window maps placed and overlaps averaged, for the core's
    distances and the spatial ones in `extra` (e.g. l2's per-position map for a wsd run)."""
    ref, dis = _pair(image_tensor, bool(core.resize), dis, ref)
    h, w = dis.shape[-2:]
    pr, pc = window_positions(h), window_positions(w)
    names = tuple(dict.fromkeys((*core.distances, *extra)))
    canvas = {d: torch.zeros(h * w, dtype=torch.float64) for d in names}
    count = torch.zeros(h * w, dtype=torch.float64)
    for s, batch in window_batches(core, batch_size, ref, dis, extra):
        idx = _pixel_index(s, next(iter(batch.values())).shape[0], pr, pc, w).flatten()
        count.index_add_(0, idx, torch.ones(idx.shape, dtype=torch.float64))
        for d, m in batch.items():
            canvas[d].index_add_(0, idx, m.flatten().double())
    return {d: (canvas[d] / count).view(h, w).float().numpy() for d in names}
