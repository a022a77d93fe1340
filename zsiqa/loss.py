"""The metric as a differentiable training loss (`PerceptualLoss`).

    from zsiqa import PerceptualLoss
    criterion = PerceptualLoss("dinov1", "l2")      # frozen backbone, eval mode
    loss = criterion(output, target)                 # [N, 3, H, W] in [0, 1], H, W ≥ 224
    loss.backward()

Same windows, backbone and formulas as the Scorer, so the value equals the Scorer's score for
the same pair (to float tolerance), but features are computed with autograd on (the
extractor's own forward runs under inference mode) and the distances always take the eager
path (the fused GPU kernels have no backward). Distances are computed in float32 even under
a bf16/fp16 autocast (the backbone itself runs in the autocast's precision).
"""
import torch
import torch.nn as nn

from zsiqa.blocks import chosen_layers, select_layers
from zsiqa.distances import DISTANCES, Shared, parse_distances
from zsiqa.errors import UserError
from zsiqa.models import FeatureExtractor, get_backbone
from zsiqa.options import seed_option
from zsiqa.windows import WINDOW, window_count, windows

REDUCTIONS = ("mean", "sum", "none")


def check_images(x, name):
    """UserError unless x is a float tensor [N, 3, H, W] in [0, 1] with H, W ≥ 224."""
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != 3:
        got = list(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise UserError(f"{name}: PerceptualLoss takes tensors [N, 3, H, W], got {got}")
    if not x.is_floating_point():
        raise UserError(f"{name}: PerceptualLoss takes float tensors in [0, 1], got {x.dtype} "
                        f"(divide 8-bit images by 255)")
    if x.shape[0] == 0:
        raise UserError(f"{name}: an empty batch (N = 0) has no loss")
    if min(x.shape[-2:]) < WINDOW:
        raise UserError(f"{name}: sides must be at least {WINDOW} px, got {x.shape[-2]}x{x.shape[-1]} (H x W)")
    lo, hi = torch.aminmax(x.detach())
    if not (lo >= 0 and hi <= 1):  # NaN fails too
        raise UserError(f"{name}: values must lie in [0, 1], got [{float(lo):.3g}, {float(hi):.3g}] (clamp first)")


class PerceptualLoss(nn.Module):
    """A ZS-IQA distance as a loss: forward(dis, ref) → scalar (or [N] with reduction='none').

    Args:
        model: backbone registry name (as for Scorer). distance: one distance name.
        weights: checkpoint path (else the usual lookup). device: auto|cpu|cuda.
        precision: fp32|bf16|fp16|published (as for Scorer; default fp32).
        layers: compare only these blocks ('1-6,9', as for Scorer).
        reduction: 'mean' or 'sum' over the N pairs, or 'none' (per-pair values [N]).
    """

    def __init__(self, model="dinov1", distance="l2", weights=None, device="auto", precision="fp32", layers=None,
                 reduction="mean", swd_seed=0):
        super().__init__()
        backbone = get_backbone(model)
        names = parse_distances(distance, backbone)
        if len(names) != 1:
            raise UserError(f"PerceptualLoss takes one distance, got {', '.join(names)}")
        if reduction not in REDUCTIONS:
            raise UserError(f"unknown reduction '{reduction}'; use one of {', '.join(REDUCTIONS)}")
        self.distance, self.reduction = names[0], reduction
        self.swd_seed = seed_option(swd_seed)
        self.skip_nonfinite = backbone.cos_skip_nonfinite
        self.extractor = FeatureExtractor(backbone, weights, device, precision)
        self.sizes = self.extractor.probe()[0]
        self.layers = None if layers is None else chosen_layers(layers, sum(self.sizes))

    def train(self, mode=True):
        """The backbone stays in eval mode whatever the loss module is set to."""
        super().train(mode)
        self.extractor.eval()
        return self

    def features(self, wins):
        """Windows [B, 3, 224, 224] → feature groups, with autograd (as FeatureExtractor.forward)."""
        feats = self.extractor.run(wins)
        feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
        return select_layers(feats, self.layers, self.sizes)

    def forward(self, dis, ref):
        """dis, ref: float tensors [N, 3, H, W] in [0, 1], same size → the loss (see reduction)."""
        check_images(dis, "dis")
        check_images(ref, "ref")
        if dis.shape != ref.shape:
            raise UserError(f"dis and ref differ in shape: {list(dis.shape)} vs {list(ref.shape)}")
        dis, ref = dis.float(), ref.float()  # float16/float64 images: the backbone's weights are float32
        f_dis = self.features(windows(dis))
        with torch.set_grad_enabled(torch.is_grad_enabled() and ref.requires_grad):
            f_ref = self.features(windows(ref))
        fn = DISTANCES[self.distance]  # the eager formulas: the fused kernels have no backward
        with torch.autocast(self.extractor.device.type, enabled=False):
            per_window = sum(fn(a, b, shared=Shared(a, b), seed=self.swd_seed, skip_nonfinite=self.skip_nonfinite)
                             for a, b in zip(f_dis, f_ref, strict=True))
        per_pair = per_window.view(dis.shape[0], window_count(*dis.shape[-2:])).mean(1)
        return per_pair if self.reduction == "none" else getattr(per_pair, self.reduction)()
