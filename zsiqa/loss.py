"""The metric as a differentiable training loss (`PerceptualLoss`), a well-behaved torch module.

    from zsiqa import PerceptualLoss
    criterion = PerceptualLoss("dinov1", "l2").to(device)  # frozen backbone, eval mode
    loss = criterion(output, target)                         # distorted (the prediction) first
    loss.backward()

Same windows, backbone and formulas as the Scorer, so the value equals the Scorer's score for
the same pair in [0, 1] (to float tolerance). Unlike the Scorer, a measuring instrument that
refuses pixels outside [0, 1], the loss takes what a network being trained gives: any finite
values (an image drifting to 1.01 mid-training is scored as it is), generator outputs in
[-1, 1] (`input_range=(-1, 1)`) and crops under 224 px (`resize=224`, bilinear, differentiable).

The backbone is frozen and is not part of the module's tree: a model holding the loss has no
backbone in its `state_dict()` or `parameters()`, yet `.to(device)`, `.to(dtype)`, `.cuda()`,
`.half()` and `.bfloat16()` move and cast it with the loss, which then runs in that device
and dtype. Features are computed with autograd on; distances always take the eager path (the
fused GPU kernels have no backward) and are computed in float32 whatever the backbone's dtype.
"""
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsiqa.blocks import as_groups, backbone_layers
from zsiqa.distances import DISTANCES, Shared, parse_distances
from zsiqa.errors import UserError
from zsiqa.models import FeatureExtractor, get_backbone
from zsiqa.options import resize_option, seed_option
from zsiqa.windows import WINDOW, window_count, windows

REDUCTIONS = ("mean", "sum", "none")


def _input_range(value):
    """input_range as two floats, low < high, each and their span finite and non-zero in float32
    (where the mapping is computed; 1e-300 is 0 there)."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    low, high = (float(v) for v in value) if ok else (0.0, 0.0)
    f32 = torch.finfo(torch.float32)
    if not ok or not f32.tiny <= high - low <= f32.max or max(abs(low), abs(high)) > f32.max:
        raise UserError(f"input_range must be two finite numbers (low, high) with low < high, e.g. (-1, 1), and a "
                        f"span float32 holds; got {value!r}")
    return low, high


class PerceptualLoss(nn.Module):
    """A ZS-IQA distance as a loss: forward(dis, ref) → scalar (or [N] with reduction='none').

    Args:
        model: backbone registry name (as for Scorer).
        distance: one distance name. The default is l2, not the Scorer's wsd: l2's gradient is
            smooth everywhere, while skld, jsd and wsd end in log(x + 1) ** 0.25, whose slope
            grows without bound as two images become alike.
        weights: checkpoint path (else the usual lookup). device: where it starts (auto|cpu|cuda;
            `.to()` moves it later).
        precision: fp32 (default) | bf16 | fp16 (autocast) | published, as for Scorer; or cast the
            module itself with `.to(torch.bfloat16)`.
        layers: compare only these blocks ('1-6,9', as for Scorer).
        reduction: 'mean' or 'sum' over the N pairs, or 'none' (per-pair values [N]).
        swd_seed: the seed of swd's random directions.
        input_range: (low, high) of the images given: (0, 1) by default, (-1, 1) for most
            generators; mapped linearly to [0, 1], never clamped.
        resize: N to resize both images to N×N first (bilinear, differentiable), so that crops
            under 224 px work; None keeps the size (sides must then be at least 224 px).
    """

    def __init__(self, model="dinov1", distance="l2", *, weights=None, device="auto", precision="fp32", layers=None,
                 reduction="mean", swd_seed=0, input_range=(0, 1), resize=None):
        super().__init__()
        backbone = get_backbone(model)
        names = parse_distances(distance, backbone)
        if len(names) != 1:
            raise UserError(f"PerceptualLoss takes one distance, got {', '.join(names)}")
        if reduction not in REDUCTIONS:
            raise UserError(f"unknown reduction '{reduction}'; use one of {', '.join(REDUCTIONS)}")
        self.distance, self.reduction = names[0], reduction
        self.swd_seed = seed_option(swd_seed)
        self.resize = resize_option(resize)
        self._low, high = _input_range(input_range)  # plain floats: the mapping is done in float32 or wider
        self._span = high - self._low
        self.skip_nonfinite = backbone.cos_skip_nonfinite
        extractor = FeatureExtractor(backbone, weights, device, precision)
        object.__setattr__(self, "_extractor", extractor)  # not a submodule: outside state_dict() and parameters()
        self.sizes = extractor.probe()[0]
        self.layers = backbone_layers(layers, backbone, self.sizes)

    @property
    def backbone(self):
        """The frozen backbone (kept outside the module tree; moved and cast with the loss)."""
        return self._extractor.model

    def _apply(self, fn, recurse=True):
        """.to(), .cuda(), .half(), .bfloat16() and the like: the buffers, then the backbone."""
        super()._apply(fn, recurse)
        self._extractor.model._apply(fn)
        self._extractor.device = next(self._extractor.model.parameters()).device
        return self

    def train(self, mode=True):
        """The backbone stays in eval mode whatever the loss module is set to."""
        super().train(mode)
        self._extractor.model.eval()
        return self

    def features(self, wins):
        """Windows [B, 3, 224, 224] → feature groups, with autograd (as FeatureExtractor.forward)."""
        return as_groups(self._extractor.run(wins), self.layers, self.sizes)

    def _check(self, x, name):
        """UserError unless x is a float tensor [N, 3, H, W], N ≥ 1, without NaN or infinity."""
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
            got = list(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise UserError(f"{name}: PerceptualLoss takes tensors [N, 3, H, W], got {got}")
        if not x.is_floating_point():
            raise UserError(f"{name}: PerceptualLoss takes float tensors, got {x.dtype} (divide 8-bit images by 255)")
        if x.shape[0] == 0:
            raise UserError(f"{name}: an empty batch (N = 0) has no loss")
        if x.device.type == "meta":
            raise UserError(f"{name} is on the meta device: it holds no values")
        if not bool(torch.isfinite(x.detach()).all()):
            raise UserError(f"{name} holds NaN or infinite values")

    def _images(self, x, name):
        """A checked batch as the backbone takes it: mapped from input_range to [0, 1], resized."""
        wide = torch.promote_types(x.dtype, torch.float32)  # a 16-bit dtype cannot hold every range (65535)
        x = ((x.to(wide) - self._low) / self._span).to(x.dtype)
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if min(x.shape[-2:]) < WINDOW:
            raise UserError(f"{name}: sides must be at least {WINDOW} px, got {x.shape[-2]}x{x.shape[-1]} (H x W); "
                            f"pass resize={WINDOW} (or more) to resize both images first")
        return x

    def forward(self, dis, ref):
        """dis, ref: float tensors [N, 3, H, W] of the same shape, values in `input_range`
        (the distorted image, e.g. a network's output, first) → the loss (see reduction)."""
        self._check(dis, "dis")
        self._check(ref, "ref")
        if dis.shape != ref.shape:
            raise UserError(f"dis and ref differ in shape: {list(dis.shape)} vs {list(ref.shape)}")
        dis, ref = self._images(dis, "dis"), self._images(ref, "ref")
        f_dis = self.features(windows(dis))
        with torch.set_grad_enabled(torch.is_grad_enabled() and ref.requires_grad):
            f_ref = self.features(windows(ref))
        fn = DISTANCES[self.distance]  # the eager formulas: the fused kernels have no backward
        with torch.autocast(self._extractor.device.type, enabled=False):
            per_window = sum(fn(a, b, shared=Shared(a, b), seed=self.swd_seed, skip_nonfinite=self.skip_nonfinite)
                             for a, b in zip(f_dis, f_ref, strict=True))
        per_pair = per_window.view(dis.shape[0], window_count(*dis.shape[-2:])).mean(1)
        return per_pair if self.reduction == "none" else getattr(per_pair, self.reduction)()
