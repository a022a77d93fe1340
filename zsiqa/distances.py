"""Distances between feature stacks, exactly as the published protocol (docs/protocol.md).

Every distance takes two stacks of shape [N, L, T, D] (N windows, L layers, T tokens, D
channels) and returns one score per window, shape [N], higher = more different. Conv maps
[N, L, C, H, W] are accepted by `l2` and `cos` (the cosine runs along the last axis, width,
as the published code did). Pure torch, any device, vectorised over windows, layers and
columns. Inputs are promoted to float32: half-precision features are compared in fp32.

`DISTANCES` is the one table: adding a distance is one entry, and every backbone whose
features it applies to takes it.
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from zsiqa import fused
from zsiqa.errors import UserError

EPS_SOFTMAX = 1e-10


def _fp32(*xs):
    """Half and single precision → float32; float64 stays (gradient checks run in it)."""
    return [x if x.dtype == torch.float64 else x.float() for x in xs]


def _op(t, name, *args):
    """t.name_(*args) in place, or out of place when t takes part in a gradient (an
    in-place op would overwrite what the backward pass needs). Same values either way."""
    return getattr(t, name)(*args) if t.requires_grad else getattr(t, name + "_")(*args)


def l2_terms(f_dis, f_ref):
    """The l2 terms: the squared difference of every value → [N, L, ...] (float32, float64
    kept). A layer's l2 is their mean; a position's (maps.py) their mean over its channels."""
    f_dis, f_ref = _fp32(f_dis, f_ref)
    return (f_dis - f_ref).pow(2)


def l2_layers(f_dis, f_ref):
    """Per layer, the mean over everything else of the squared difference → [N, L]."""
    return l2_terms(f_dis, f_ref).flatten(2).mean(-1)


def l2(f_dis, f_ref):
    """Σ over layers of the mean over everything else of the squared difference."""
    return l2_layers(f_dis, f_ref).sum(1)


def one_minus_cos(f_dis, f_ref):
    """1 − cos along the last axis (eps 1e-8), in float32 (float64 kept): [N, L, ...]."""
    f_dis, f_ref = _fp32(f_dis, f_ref)
    return 1 - F.cosine_similarity(f_dis, f_ref, dim=-1, eps=1e-8)


def cos_terms(f_dis, f_ref, skip_nonfinite=False):
    """The cos terms: 1 − cos along the last axis per position → [N, L, ...]. skip_nonfinite
    (the published clip_rn50 quirk): inf set to 0, NaN kept, to be left out of every mean."""
    one_minus = one_minus_cos(f_dis, f_ref)
    return one_minus.masked_fill(one_minus.isinf(), 0) if skip_nonfinite else one_minus


def cos_layers(f_dis, f_ref, skip_nonfinite=False):
    """Per layer, the mean over tokens of 1 − cos along the last axis → [N, L].

    skip_nonfinite reproduces the published clip_rn50 quirk: inf set to 0, NaN left out."""
    terms = cos_terms(f_dis, f_ref, skip_nonfinite).flatten(2)
    return terms.nanmean(-1) if skip_nonfinite else terms.mean(-1)


def cos(f_dis, f_ref, skip_nonfinite=False):
    """Σ over layers of the mean over tokens of 1 − cos along the last axis (eps 1e-8)."""
    return cos_layers(f_dis, f_ref, skip_nonfinite).sum(1)


def pad_amounts(t, d):
    """Rows and columns added (negative: cropped) to reach multiples of 8, the published
    way: round(x / 8) · 8 − x with Python's round (half to even)."""
    return round(t / 8) * 8 - t, round(d / 8) * 8 - d


def to_columns(f):
    """[N, L, T, D] → [N, 64, M]: pad/crop T and D to multiples of 8 the published way
    (zeros at the bottom rows and left columns; a negative amount crops there), then view
    the flat buffer of each window as 64 rows. Columns are not spatial patches."""
    n = f.shape[0]
    row, col = pad_amounts(*f.shape[-2:])
    f = F.pad(f, (col, 0, 0, row))  # F.pad crops on negative amounts, like ZeroPad2d
    return f.reshape(n, 64, -1)


def _l2_weight(dist):
    """The published weight of the L2 term: 1 / (sqrt(exp(−1/(d+10))) · (d+10)²)."""
    return 1 / (torch.sqrt(torch.exp(-1 / (dist + 10))) * (dist + 10) ** 2)


def _softmax_rows(x):
    """softmax over the 64 rows + 1e-10. The published clamp at 1e-10 that followed is a
    no-op here (a softmax is ≥ 0), so it is not spent."""
    return _op(torch.softmax(x, dim=1), "add", EPS_SOFTMAX)


def _finish(value):
    """Mean over columns, then log(raw + 1) ** 0.25 (the published squashing). The fourth
    root's slope is infinite at 0: a window at distance 0 gets the subgradient 0 there, so
    the differentiable loss has no NaN gradients (same values)."""
    squashed = torch.log(value.mean(-1) + 1)
    zero = squashed == 0  # NaN is not zero: it stays NaN
    return torch.where(zero, 0, torch.where(zero, 1, squashed) ** 0.25)


TILE_VALUES = 1 << 14  # values per side in one CPU tile (64 KiB in float32): a tile's temporaries stay in L2


def tiled_on(*ts):
    """The CPU path for these stacks: on the CPU, no gradient asked (ZSIQA_TILED=0: the eager
    formulas). It computes skld, jsd and wsd tile of columns by tile, on one thread."""
    return (os.environ.get("ZSIQA_TILED", "1") != "0" and all(t.device.type == "cpu" for t in ts)
            and not any(t.requires_grad for t in ts))


@contextlib.contextmanager
def one_thread(on=True):
    """Torch's intra-op threads set to 1 inside the block (restored after). The CPU distances
    are many short memory-bound ops: split over threads, each op waits for the slowest, which on
    a busy 2-core machine costs more than the op (a tiled pass went from 70 ms to 800 ms)."""
    threads = torch.get_num_threads()
    if not on or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def column_values(x, y, names, tile=TILE_VALUES):
    """Per-column raw values of the distribution distances among `names`, the same formulas
    as skld, jsd and wsd below, computed tile of columns by tile so that every intermediate
    stays in cache (eagerly each of ~90 passes reads and writes the whole column tensor).

    Args:
        x, y: column tensors [N, 64, M] (to_columns, float32 or float64).
        names: the distances wanted (others in it are ignored).
        tile: values per side in one tile.

    Returns:
        {'sq': Σ_rows (x − y)² [N, M], and for each of 'skld', 'jsd', 'wsd' asked for its value
        per column before the mean over columns (the L2 term added for skld and wsd)}.
    """
    n, rows, m = x.shape
    want = [k for k in ("skld", "jsd", "wsd") if k in names]
    raw = x.new_empty(4, n, m)  # Σ_rows of: (x − y)², (p − q)(log p − log q), the two jsd terms, |cdf gap|
    width = max(8, tile // (rows * n))
    u, v = (torch.softmax(x, dim=-1), torch.softmax(y, dim=-1)) if "wsd" in want else (None, None)
    for c in range(0, m, width):  # tiles of columns (~30 ops each), never single columns
        s = slice(c, c + width)
        xb, yb = x[..., s], y[..., s]
        torch.sum((xb - yb).pow_(2), 1, out=raw[0, :, s])
        if "skld" in want or "jsd" in want:
            _row_terms(xb, yb, want, raw[1, :, s], raw[2, :, s])
        if u is not None:
            torch.sum(u[..., s].cumsum(1).sub_(v[..., s].cumsum(1))[:, :-1].abs_(), 1, out=raw[3, :, s])
    out = {"sq": raw[0]}
    if "skld" in want:
        kld = raw[1] / 2
        out["skld"] = kld + raw[0] * _l2_weight(kld)
    if "jsd" in want:
        out["jsd"] = raw[2] / 2
    if "wsd" in want:
        out["wsd"] = raw[3] + raw[0] * _l2_weight(raw[3])
    return out


def _row_terms(xb, yb, want, kld_out, js_out):
    """One tile's row-softmax terms: Σ_rows (p − q)(log p − log q) into kld_out and
    Σ_rows p(log p − log m) + q(log q − log m) into js_out (the formulas of skld and jsd)."""
    p, q = _softmax_rows(xb), _softmax_rows(yb)
    log_p, log_q = p.log(), q.log()
    if "skld" in want:
        torch.sum((p - q).mul_(log_p - log_q), 1, out=kld_out)
    if "jsd" in want:
        log_m = (p + q).div_(2).add_(1e-17).log_()
        torch.add(log_p.sub_(log_m).mul_(p).sum(1), log_q.sub_(log_m).mul_(q).sum(1), out=js_out)


class Shared:
    """Intermediates that skld, jsd and wsd have in common (column layout, squared
    difference, row softmaxes and their logs), computed once when several are asked for.
    names: the distances that will be asked for (the CPU path computes those in one pass)."""

    def __init__(self, f_dis, f_ref, names=()):
        self.f_dis, self.f_ref, self.names = f_dis, f_ref, tuple(names)
        self.tiled = tiled_on(f_dis, f_ref)
        self._cache = {}

    def get(self, name):
        if name not in self._cache:
            self._cache[name] = getattr(self, "_" + name)()
        return self._cache[name]

    def column_value(self, name):
        """A distribution distance's value per column [N, M] (the CPU path), computed with the
        others of `names` in one tiled pass."""
        values = self.get("columns")
        if name not in values:  # asked for without being named: one more pass
            values.update(column_values(*self.get("layout"), (name,)))
        return values[name]

    def _columns(self):
        with one_thread():
            return column_values(*self.get("layout"), self.names)

    def _layout(self):
        return tuple(to_columns(f) for f in _fp32(self.f_dis, self.f_ref))

    def _cols(self):
        x, y = self.get("layout")
        return x, y, (x - y).pow(2).sum(1)

    def _rows(self):
        x, y = self.get("layout")
        p, q = _softmax_rows(x), _softmax_rows(y)
        return p, q, p.log(), q.log()


def skld(f_dis, f_ref, shared=None):
    """Symmetric KL between softmax-over-rows column distributions, plus a weighted L2 term."""
    shared = shared or Shared(f_dis, f_ref, ("skld",))
    if shared.tiled:
        return _finish(shared.column_value("skld"))
    _, _, sq = shared.get("cols")
    p, q, log_p, log_q = shared.get("rows")
    # p(log p − log q) + q(log q − log p) = (p − q)(log p − log q). The published code set
    # infinite terms to 0; with p, q ≥ 1e-10 every term is finite, so that pass is not spent.
    kld = _op(p - q, "mul", log_p - log_q).sum(1) / 2
    return _finish(kld + sq * _l2_weight(kld))


def jsd(f_dis, f_ref, shared=None):
    """Jensen-Shannon divergence between softmax-over-rows column distributions (no L2 term)."""
    shared = shared or Shared(f_dis, f_ref, ("jsd",))
    if shared.tiled:
        return _finish(shared.column_value("jsd"))
    p, q, log_p, log_q = shared.get("rows")
    log_m = _op(_op(_op(p + q, "div", 2), "add", 1e-17), "log")
    value = (_op(log_p - log_m, "mul", p).sum(1) + _op(log_q - log_m, "mul", q).sum(1)) / 2
    return _finish(value)


def wsd(f_dis, f_ref, shared=None):
    """1-D Wasserstein-1 per column on support 0…63 with softmax-over-columns weights (not
    re-normalised per column, as POT 0.9 wasserstein_1d saw them), plus a weighted L2 term.
    With a shared integer support, W = Σ_{x<63} |cdf_u(x) − cdf_v(x)| exactly."""
    shared = shared or Shared(f_dis, f_ref, ("wsd",))
    if shared.tiled:
        return _finish(shared.column_value("wsd"))
    x, y, sq = shared.get("cols")
    cu = torch.softmax(x, dim=-1).cumsum(1)
    cv = torch.softmax(y, dim=-1).cumsum(1)
    w = (cu - cv)[:, :-1].abs().sum(1)
    return _finish(w + sq * _l2_weight(w))


def _sort_last(t):
    """t sorted along its last axis. On the CPU without a gradient by numpy, whose SIMD sort is
    some 30× faster than torch's there (the same values: a sort has one answer; ZSIQA_TILED=0:
    torch's)."""
    if tiled_on(t):
        return torch.from_numpy(np.sort(t.numpy(), axis=-1))
    return t.sort(-1).values


def swd(f_dis, f_ref, seed=0):
    """Sliced Wasserstein over positions: the L-dim vector at each of the T·D positions is
    projected on L seeded random unit directions; sorted projections are compared."""
    f_dis, f_ref = _fp32(f_dis, f_ref)
    n, layers = f_dis.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    dirs = F.normalize(torch.randn(layers, layers, generator=gen), dim=1)
    dirs = dirs.to(f_dis.device, f_dis.dtype, non_blocking=True)
    proj_dis = _sort_last(torch.einsum("kl,nlp->nkp", dirs, f_dis.reshape(n, layers, -1)))
    proj_ref = _sort_last(torch.einsum("kl,nlp->nkp", dirs, f_ref.reshape(n, layers, -1)))
    return (proj_dis - proj_ref).pow(2).mean(1).sum(-1)


# token stacks [N, L, T, D], conv feature grids [N, L, C, H, W], embeddings [N, 1, 1, E]
FEATURE_KINDS = ("tokens", "grids", "embed")


@dataclass(frozen=True)
class Distance:
    """A registered distance, callable as `DISTANCES[name](f_dis, f_ref)` → [N].

    applies_to: the feature kinds it is defined on (FEATURE_KINDS); a backbone takes every
    distance that applies to its features. options: the per-run arguments its function
    accepts, by name, out of those `compute` offers (shared, seed, skip_nonfinite); others
    are dropped. layers_fn: the per-layer terms [N, L] whose sum over L is the score (None:
    the score is not a sum over layers). terms_fn: the per-value terms [N, L, ...] whose mean
    per layer is `layers` (None: the distance mixes positions; maps.py lays the terms out in
    space). lower_better: a lower score means more alike (all distances here)."""
    fn: Callable
    applies_to: tuple
    summary: str
    options: tuple = ()
    layers_fn: Optional[Callable] = None
    lower_better: bool = True
    terms_fn: Optional[Callable] = None

    @property
    def per_layer(self):
        """The score is a sum over layers (`layers` gives the terms)."""
        return self.layers_fn is not None

    def _options(self, options):
        return {k: v for k, v in options.items() if k in self.options}

    def __call__(self, f_dis, f_ref, **options):
        return self.fn(f_dis, f_ref, **self._options(options))

    def layers(self, f_dis, f_ref, **options):
        """The per-layer terms [N, L] (float32, float64 kept) of a per-layer distance."""
        return self.layers_fn(f_dis, f_ref, **self._options(options))

    @property
    def spatial(self):
        """Its terms have a place in the image (`terms`): l2 and cos."""
        return self.terms_fn is not None

    def terms(self, f_dis, f_ref, **options):
        """The per-value terms [N, L, ...] of a spatial distance (`terms_fn`)."""
        return self.terms_fn(f_dis, f_ref, **self._options(options))


DISTANCES: Dict[str, Distance] = {
    "l2": Distance(l2, ("tokens", "grids"), "Σ_layers mean squared difference", layers_fn=l2_layers,
                   terms_fn=l2_terms),
    "cos": Distance(cos, FEATURE_KINDS, "Σ_layers mean (1 − cosine) over tokens", ("skip_nonfinite",),
                    layers_fn=cos_layers, terms_fn=cos_terms),
    "skld": Distance(skld, ("tokens",), "symmetric KL of column distributions + weighted L2", ("shared",)),
    "jsd": Distance(jsd, ("tokens",), "Jensen-Shannon of column distributions", ("shared",)),
    "wsd": Distance(wsd, ("tokens",), "Wasserstein-1 of column distributions + weighted L2", ("shared",)),
    "swd": Distance(swd, ("tokens",), "sliced Wasserstein over layer vectors (seeded)", ("seed",)),
}


def applicable(feature_kind: str) -> Tuple[str, ...]:
    """Names of the distances defined on a feature kind, in table order."""
    return tuple(name for name, d in DISTANCES.items() if feature_kind in d.applies_to)


def _fused(names, f_dis, f_ref, shared, cos_skip_nonfinite):
    """The distances the fused Triton kernels give for these stacks ({} off CUDA): skld, jsd,
    wsd, cos, and l2 when the column layout only pads (ZSIQA_FUSED=0: none)."""
    if os.environ.get("ZSIQA_FUSED", "1") == "0" or not fused.available(f_dis.device):
        return {}
    fast = {}
    if any(n in ("skld", "jsd", "wsd") for n in names):
        fast = fused.distribution_distances(*shared.get("layout"))
        t, d = f_dis.shape[-2:]
        if min(pad_amounts(t, d)) >= 0:
            fast["l2"] = fast["sq_total"] / (t * d)  # padding adds zeros on both sides: Σ_l mean_l = Σ / (T·D)
    if "cos" in names and not cos_skip_nonfinite:
        fast["cos"] = fused.token_cosine(f_dis.float(), f_ref.float())
    return fast


def compute(names, f_dis, f_ref, swd_seed=0, cos_skip_nonfinite=False, fused=True):
    """Several distances of the same stacks → [N, len(names)], intermediates shared. On CUDA
    the fused kernels of fused.py read each side once or twice instead of ~90 times; on the
    CPU (no gradient) skld/jsd/wsd go tile by tile through the cache, one thread, and swd sorts
    with numpy (fused=False: the eager formulas only on CUDA, which have a backward)."""
    shared = Shared(f_dis, f_ref, names)
    fast = _fused(names, f_dis, f_ref, shared, cos_skip_nonfinite) if fused else {}
    options = {"shared": shared, "seed": swd_seed, "skip_nonfinite": cos_skip_nonfinite}
    with one_thread(shared.tiled):  # on the CPU (see one_thread)
        return torch.stack([fast[n] if n in fast else DISTANCES[n](f_dis, f_ref, **options) for n in names], dim=1)


def compute_layers(names, f_dis, f_ref, cos_skip_nonfinite=False):
    """The per-layer terms of the per-layer distances among `names` → [N, n, L] (eager)."""
    names = [n for n in names if DISTANCES[n].per_layer]
    return torch.stack([DISTANCES[n].layers(f_dis, f_ref, skip_nonfinite=cos_skip_nonfinite) for n in names], dim=1)


def parse_distances(distances: Union[str, Sequence[str]], backbone) -> Tuple[str, ...]:
    """The distances asked for, checked against a backbone.

    Args:
        distances: one name, a comma list ('l2,cos'), a list of names, or 'all'.
        backbone: a registry entry (models.Backbone): its name, feature kind and distances.

    Returns:
        tuple of distance names, duplicates merged, in the order given. Raises UserError for
        an empty, unknown or inapplicable name.
    """
    if not isinstance(distances, (str, list, tuple)) or not all(isinstance(d, str) for d in distances):
        raise UserError(f"distances must be a name, a comma list, a list of names or 'all', got {distances!r}")
    if isinstance(distances, str):
        distances = backbone.distances if distances == "all" else [d.strip() for d in distances.split(",") if d.strip()]
    distances = tuple(dict.fromkeys(distances))
    if not distances:
        raise UserError("no distance given")
    for d in distances:
        if d not in DISTANCES:
            raise UserError(f"unknown distance '{d}'; known: {', '.join(DISTANCES)}")
        if d not in backbone.distances:
            why = {"grids": " (conv feature maps: the published code defines only l2 and cos on them)",
                   "embed": " (an embedding: only cos applies)"}.get(backbone.features, "")
            raise UserError(f"distance '{d}' does not apply to {backbone.name}; "
                            f"it takes: {', '.join(backbone.distances)}{why}")
    return distances
