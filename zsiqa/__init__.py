"""ZS-IQA: zero-shot full-reference image quality from the intermediate features of frozen
foundation models (CLIP, DINO, …), as in "Foundation Models Boost Low-Level Perceptual
Similarity Metrics" (ICASSP 2025).

    import zsiqa
    metric = zsiqa.create_metric("dinov1_wsd")        # = Scorer("dinov1", "wsd"), a torch module
    metric("dis.png", "ref.png")                      # tensor([score]), float32; lower = more alike
    metric(zsiqa.example("dis_blur.png"), zsiqa.example("ref.png"))   # the bundled example pair
    criterion = zsiqa.create_metric("dinov1_l2", as_loss=True)  # = PerceptualLoss("dinov1", "l2")

The public names:
    Scorer          score pairs of images (paths, PIL, numpy, tensors) with one or more distances
    PerceptualLoss  the metric as a torch loss module
    create_metric   a Scorer (or with as_loss=True the loss) by one name, `<backbone>_<distance>`
    list_metrics    every name create_metric takes
    TorchMetric     a torchmetrics Metric (update / compute; needs `pip install zsiqa[torchmetrics]`)
    DISTANCES       the distance registry {name: Distance}, with each one's `lower_better`
    BACKBONES       the backbone registry {name: Backbone}
    LAYOUTS         the dataset layouts the eval command reads
    list_models     one row per backbone (what `zsiqa models` prints)
    UserError       the error raised for bad input, with a one-line message
    example         the path of a bundled example image (ref.png, dis_blur.png, dis_jpeg.png, dis_noise.png)
They are imported on first use, so `import zsiqa` and the command line's --help stay light
(torch is loaded only when a model or distance is needed, torchmetrics only for TorchMetric).
"""
import importlib
from typing import TYPE_CHECKING, Any, List

from zsiqa.errors import UserError

__version__ = "0.9.0"

_EXPORTS = {"Scorer": "zsiqa.scorer", "PerceptualLoss": "zsiqa.loss", "DISTANCES": "zsiqa.distances",
            "BACKBONES": "zsiqa.models", "list_models": "zsiqa.models", "LAYOUTS": "zsiqa.datasets",
            "create_metric": "zsiqa.metric", "list_metrics": "zsiqa.metric", "TorchMetric": "zsiqa.torchmetric",
            "example": "zsiqa.bundled"}
__all__ = ["BACKBONES", "DISTANCES", "LAYOUTS", "PerceptualLoss", "Scorer", "TorchMetric", "UserError", "__version__",
           "create_metric", "example", "list_metrics", "list_models"]

if TYPE_CHECKING:  # what static tools and IDEs see
    from zsiqa.bundled import example
    from zsiqa.datasets import LAYOUTS
    from zsiqa.distances import DISTANCES
    from zsiqa.loss import PerceptualLoss
    from zsiqa.metric import create_metric, list_metrics
    from zsiqa.models import BACKBONES, list_models
    from zsiqa.scorer import Scorer
    from zsiqa.torchmetric import TorchMetric


def __getattr__(name: str) -> Any:
    """The public names of _EXPORTS, imported from their modules on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zsiqa' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted({*globals(), *_EXPORTS})
