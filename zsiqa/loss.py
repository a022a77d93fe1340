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
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from zsiqa.core import FrozenBackbone, MetricCore, grey_to_rgb, pair_means, range_option, to_unit_range
from zsiqa.errors import UserError
from zsiqa.windows import WINDOW, windows

REDUCTIONS = ("mean", "sum", "none")


class PerceptualLoss(FrozenBackbone):
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

    def __init__(self, model: str = "dinov1", distance: str = "l2", *, weights: Optional[str] = None,
                 device="auto", precision: str = "fp32", layers=None, reduction: str = "mean", swd_seed: int = 0,
                 input_range: Sequence[float] = (0, 1), resize: Optional[int] = None) -> None:
        if reduction not in REDUCTIONS:
            raise UserError(f"unknown reduction '{reduction}'; use one of {', '.join(REDUCTIONS)}")
        low_high = range_option(input_range)  # plain floats: the mapping is done in float32 or wider
        super().__init__(MetricCore(model, distance, weights=weights, device=device, precision=precision,
                                    layers=layers, swd_seed=swd_seed, resize=resize, one="PerceptualLoss"))
        self.distance, self.reduction = self.core.distances[0], reduction
        self.input_range: Tuple[float, float] = low_high

    @property
    def backbone(self) -> torch.nn.Module:
        """The frozen backbone (kept outside the module tree; moved and cast with the loss)."""
        return self.core.extractor.model

    @property
    def sizes(self) -> Tuple[int, ...]:
        """Blocks per feature group of the backbone."""
        return self.core.group_sizes

    @property
    def skip_nonfinite(self) -> bool:
        return self.core.skip_nonfinite

    def features(self, wins: torch.Tensor) -> list:
        """Windows [B, 3, 224, 224] → feature groups, with autograd (as FeatureExtractor.forward)."""
        return self.core.features(wins)

    def _check(self, x, name):
        """UserError unless x is a float tensor [N, 3 or 1, H, W], N ≥ 1, without NaN or infinity."""
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] not in (1, 3):
            got = list(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise UserError(f"{name}: PerceptualLoss takes tensors [N, 3, H, W] (or [N, 1, H, W], grey), got {got}")
        if not x.is_floating_point():
            raise UserError(f"{name}: PerceptualLoss takes float tensors, got {x.dtype} (divide 8-bit images by 255)")
        if x.shape[0] == 0:
            raise UserError(f"{name}: an empty batch (N = 0) has no loss")
        if x.device.type == "meta":
            raise UserError(f"{name} is on the meta device: it holds no values")
        if not bool(torch.isfinite(x.detach()).all()):
            raise UserError(f"{name} holds NaN or infinite values")

    def _images(self, x, name):
        """A checked batch as the backbone takes it: grey made RGB, mapped from input_range to [0, 1], resized."""
        x = to_unit_range(grey_to_rgb(x, 1), *self.input_range)
        if self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False)
        if min(x.shape[-2:]) < WINDOW:
            raise UserError(f"{name}: sides must be at least {WINDOW} px, got {x.shape[-2]}x{x.shape[-1]} (H x W); "
                            f"pass resize={WINDOW} (or more) to resize both images first")
        return x

    def forward(self, dis: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
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
        per_window = self.core.group_scores(f_dis, f_ref, fused=False)[:, 0]  # the fused kernels have no backward
        per_pair = pair_means(per_window, dis.shape[0])
        return per_pair if self.reduction == "none" else getattr(per_pair, self.reduction)()
