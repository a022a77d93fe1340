"""A metric by one name, as pyiqa users create theirs: `create_metric("dinov1_wsd")`.

A metric's name is `<backbone>_<distance>` (`dinov1_wsd`, `clip_vitb32_l2`,
`embed_dinov1_cos`): every backbone of `zsiqa.BACKBONES` (or alias) with every distance that
applies to it. Backbone names hold underscores, so a name is split at the distance it ends with.
"""
from typing import Any, List, Tuple, Union

from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError
from zsiqa.loss import PerceptualLoss
from zsiqa.models import BACKBONES, get_backbone
from zsiqa.scorer import Scorer


def list_metrics() -> List[str]:
    """Every name `create_metric` takes: `<backbone>_<distance>` for each registered backbone
    and each distance that applies to it, in registry order (aliases are taken too, not listed)."""
    return [f"{name}_{d}" for name, backbone in BACKBONES.items() for d in backbone.distances]


def split_name(name: str) -> Tuple[str, str]:
    """A metric name → (backbone, distance), checked; UserError naming the valid forms otherwise."""
    if not isinstance(name, str):
        raise UserError(f"a metric name is a string like 'dinov1_wsd', got {type(name).__name__}")
    for d in sorted(DISTANCES, key=len, reverse=True):
        if name.endswith("_" + d) and len(name) > len(d) + 1:
            model = name[:-len(d) - 1]
            try:
                backbone = get_backbone(model)
            except UserError:
                break
            if d not in backbone.distances:
                raise UserError(f"metric '{name}': distance '{d}' does not apply to {backbone.name}; "
                                f"it takes: {', '.join(backbone.distances)}")
            return model, d
    raise UserError(f"unknown metric '{name}': names are <backbone>_<distance>, e.g. dinov1_wsd, clip_vitb32_l2 "
                    f"(zsiqa.list_metrics() lists all {len(list_metrics())})")


def create_metric(name: str, as_loss: bool = False, **options: Any) -> Union[Scorer, PerceptualLoss]:
    """The metric of one name, as pyiqa's `create_metric`.

    Args:
        name: `<backbone>_<distance>`, one of `list_metrics()` (e.g. 'dinov1_wsd').
        as_loss: give the differentiable `PerceptualLoss` of the same metric instead of the `Scorer`.
        **options: passed on to the Scorer (device, precision, weights, batch_size, …) or the
            loss (device, weights, reduction, input_range, resize, …).

    Returns:
        `Scorer(backbone, distance, **options)` (called, it returns one float32 tensor [N]), or
        `PerceptualLoss(backbone, distance, **options)`; both have `.name` and `.lower_better`.
    """
    model, distance = split_name(name)
    if not isinstance(as_loss, bool):
        raise UserError(f"as_loss must be True or False, got {as_loss!r}")
    return PerceptualLoss(model, distance, **options) if as_loss else Scorer(model, distance, **options)
