"""The one metric core behind the Scorer, the maps and the loss.

`MetricCore` is a metric's setup, built and checked in one place: the backbone's registry
entry, the distances, the loaded extractor, the chosen blocks, the swd seed, the resize. It
holds the one path from features to scores: feature groups → per-window scores
(`window_scores`, every distance from one feature pass) → per-pair scores (the mean of a
pair's windows: `pair_means` for the loss, the engine's running sums for the Scorer). The
maps (maps.py) take their per-position terms from the same formulas (distances.py's `terms`),
so a window's map has the window's score as its mean.

`FrozenBackbone` is the torch-module side that the Scorer and `PerceptualLoss` share: the
core, and with it the backbone, is held outside the module tree (no backbone in `state_dict()`
or `parameters()`), yet `.to()`, `.cuda()`, `.half()` and the like move and cast it with the
module, and the backbone stays in eval mode whatever `.train()` says.
"""
import math
import numbers
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from zsiqa.blocks import as_groups, backbone_layers
from zsiqa.distances import DISTANCES, compute, compute_layers, parse_distances
from zsiqa.errors import UserError
from zsiqa.models import Backbone, FeatureExtractor, get_backbone
from zsiqa.options import bool_option, resize_option, seed_option

Groups = list  # feature groups: [N, L, T, D] stacks, or conv maps [N, L_g, C, H, W] one per shape
DistanceSpec = Union[str, Sequence[str]]
PRECISION_OF = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def range_option(value) -> Tuple[float, float]:
    """input_range as two floats, low < high, each and their span finite and non-zero in float32
    (where the mapping is computed; 1e-300 is 0 there). UserError otherwise."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    low, high = (float(v) for v in value) if ok else (0.0, 0.0)
    f32 = torch.finfo(torch.float32)
    if not ok or not f32.tiny <= high - low <= f32.max or max(abs(low), abs(high)) > f32.max:
        raise UserError(f"input_range must be two finite numbers (low, high) with low < high, e.g. (-1, 1), and a "
                        f"span float32 holds; got {value!r}")
    return low, high


def to_unit_range(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """A float image tensor with values in (low, high) mapped linearly to [0, 1], never clamped;
    computed in float32 or wider (a 16-bit dtype cannot hold every range, 65535), returned in
    x's dtype. (0, 1) is returned as it is."""
    if (low, high) == (0.0, 1.0):
        return x
    wide = torch.promote_types(x.dtype, torch.float32)
    return ((x.to(wide) - low) / (high - low)).to(x.dtype)


def grey_to_rgb(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """A one-channel image tensor as RGB: the grey channel replicated, as Pillow converts an
    'L' file to 'RGB' (R = G = B = L); other tensors as they are."""
    if x.dim() > channel_dim and x.shape[channel_dim] == 1:
        sizes = [-1] * x.dim()
        sizes[channel_dim] = 3
        return x.expand(*sizes)
    return x


class MetricCore:
    """One metric's setup, built once, and its path from windows to per-window scores.

    Args:
        model: backbone registry name (or alias). distances: one name, a comma list, a list or 'all'.
        weights, device, precision, model_norm: as FeatureExtractor takes them.
        layers: the blocks compared ('1-6,9', a list of ints, None for all).
        swd_seed: the seed of swd's random directions. resize: None or N ≥ 224.
        one: None, or the name of a caller that takes one distance only (refused otherwise).
    Every option is checked before the weights are read.
    """

    def __init__(self, model: str, distances: DistanceSpec, *, weights: Optional[str] = None, device="auto",
                 precision: str = "published", model_norm: bool = False, layers=None, swd_seed: int = 0,
                 resize: Optional[int] = None, one: Optional[str] = None):
        self.backbone: Backbone = get_backbone(model)
        self.distances: Tuple[str, ...] = parse_distances(distances, self.backbone)
        if one and len(self.distances) != 1:
            raise UserError(f"{one} takes one distance, got {', '.join(self.distances)}")
        self.swd_seed = seed_option(swd_seed)
        self.resize = resize_option(resize)
        bool_option(model_norm, "model_norm")
        self.extractor = FeatureExtractor(self.backbone, weights, device, precision, model_norm)
        self.block_index = backbone_layers(layers, self.backbone, self.group_sizes)

    @property
    def device(self) -> torch.device:
        return self.extractor.device

    @property
    def distance_batch(self) -> int:
        """Windows compared at a time (bounds the distances' intermediates; on a CPU small
        enough to be reused rather than page-faulted in afresh)."""
        return 128 if self.device.type == "cuda" else 2

    @property
    def group_sizes(self) -> Tuple[int, ...]:
        """Blocks per feature group of the backbone (one group for transformers)."""
        return self.extractor.probe()[0]

    @property
    def blocks(self) -> Tuple[int, ...]:
        """The 1-based numbers of the blocks compared (all of them by default)."""
        index = self.block_index if self.block_index is not None else range(sum(self.group_sizes))
        return tuple(k + 1 for k in index)

    @property
    def layer_distances(self) -> Tuple[str, ...]:
        """The distances that are sums over layers (per-layer scores exist for them)."""
        return tuple(d for d in self.distances if DISTANCES[d].per_layer)

    @property
    def skip_nonfinite(self) -> bool:
        """The published clip_rn50 cosine quirk (inf → 0, NaN left out)."""
        return self.backbone.cos_skip_nonfinite

    @property
    def name(self) -> str:
        """`<backbone>_<distance>` (distances joined by commas when several)."""
        return f"{self.backbone.name}_{','.join(self.distances)}"

    # ---- features
    def encode(self, wins: torch.Tensor) -> Groups:
        """Windows [B, 3, 224, 224] float in [0, 1] → feature groups, no autograd record."""
        return as_groups(self.extractor(wins.to(self.device, non_blocking=True)), self.block_index, self.group_sizes)

    def features(self, wins: torch.Tensor) -> Groups:
        """Windows → feature groups with autograd (the loss)."""
        return as_groups(self.extractor.run(wins), self.block_index, self.group_sizes)

    # ---- features → per-window scores
    def group_scores(self, f_dis: Groups, f_ref: Groups, fused: bool = True) -> torch.Tensor:
        """Per-window scores [B, n_distances] of matching feature groups, summed over groups
        (float32, float64 kept). fused=False: the eager formulas only (they have a backward)."""
        with torch.autocast(self.device.type, enabled=False):
            return sum(compute(self.distances, d, r, self.swd_seed, self.skip_nonfinite, fused=fused)
                       for d, r in zip(f_dis, f_ref, strict=True))

    def window_scores(self, f_dis: Groups, ref_of: Callable[[int, int], Groups],
                      per_layer: bool = False) -> torch.Tensor:
        """Per-window scores [B, n_distances] (float64), in sub-batches of `distance_batch`
        windows (bounding the intermediates' memory); ref_of(a, b) gives the reference groups of windows
        a:b. per_layer: the per-block terms of `layer_distances` follow, flat
        [B, n_distances + n_layer_distances · L] (groups one after another along L)."""
        n, step, out = f_dis[0].shape[0], self.distance_batch, []
        for s in range(0, n, step):
            dis, ref = [d[s:s + step] for d in f_dis], ref_of(s, s + step)
            row = self.group_scores(dis, ref).double()
            if per_layer:
                terms = torch.cat([compute_layers(self.distances, d, r, self.skip_nonfinite)
                                   for d, r in zip(dis, ref, strict=True)], dim=2)
                row = torch.cat([row, terms.flatten(1).double()], dim=1)
            out.append(row)
        return torch.cat(out)


def pair_means(per_window: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """Per-window values [n_pairs · K, ...] (pair-major) → per-pair means [n_pairs, ...]."""
    return per_window.view(n_pairs, -1, *per_window.shape[1:]).mean(1)


class FrozenBackbone(nn.Module):
    """A torch module around a MetricCore kept outside the module tree: its backbone is not in
    `state_dict()` or `parameters()`, yet moves and casts with the module (`_apply`) and stays in
    eval mode (`train`). Subclasses get `cast(dtype)` after a cast changed the backbone's dtype."""

    def __init__(self, core: MetricCore):
        super().__init__()
        object.__setattr__(self, "core", core)  # a plain object: never a submodule

    core: MetricCore

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half(), .bfloat16() and the like: own tensors, then the backbone."""
        super()._apply(fn, recurse)
        model = self.core.extractor.model
        before = next(model.parameters()).dtype
        model._apply(fn)
        first = next(model.parameters())
        self.core.extractor.device = first.device
        if first.dtype != before:
            self.cast(first.dtype)
        return self

    def cast(self, dtype: torch.dtype) -> None:
        """Called once the backbone's parameters were cast to `dtype` (by .half(), .to(dtype), …)."""

    def train(self, mode: bool = True):
        """The backbone stays in eval mode whatever the module is set to."""
        super().train(mode)
        self.core.extractor.model.eval()
        return self

    def extra_repr(self) -> str:
        """What `repr()` shows between the parentheses: the metric and its device."""
        return f"name={self.name!r}, device={self.core.device}"

    @property
    def block_index(self) -> Optional[Tuple[int, ...]]:
        """The 0-based indices of the blocks compared (`blocks` are their 1-based numbers, as --layers
        and `layers=` give them), or None for all."""
        return self.core.block_index

    @property
    def resize(self) -> Optional[int]:
        """The side images are resized to first (-r; None: as they are)."""
        return self.core.resize

    @property
    def swd_seed(self) -> int:
        """The seed of swd's random projections."""
        return self.core.swd_seed

    @property
    def lower_better(self) -> bool:
        """True: a lower score means more alike (every distance here)."""
        return all(DISTANCES[d].lower_better for d in self.core.distances)

    @property
    def name(self) -> str:
        """The metric's name, `<backbone>_<distance>` as `zsiqa.create_metric` takes it."""
        return self.core.name
