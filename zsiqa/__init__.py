"""ZS-IQA: zero-shot full-reference image quality from the intermediate features of frozen
foundation models (CLIP, DINO, …), as in "Foundation Models Boost Low-Level Perceptual
Similarity Metrics" (ICASSP 2025).

    from zsiqa import Scorer, PerceptualLoss
    metric = Scorer("dinov1", "wsd")                  # a backbone and its distance(s), built once
    metric("dis.png", "ref.png")                      # tensor([score]): the distorted image first;
                                                      # higher = more different
    criterion = PerceptualLoss("dinov1", "l2")        # the same metric as a differentiable loss

The public names:
    Scorer          score pairs of images (paths, PIL, numpy, tensors) with one or more distances
    PerceptualLoss  the metric as a torch loss module
    DISTANCES       the distance registry {name: Distance}, with each one's `lower_better`
    BACKBONES       the backbone registry {name: Backbone}
    LAYOUTS         the dataset layouts the eval command reads
    list_models     one row per backbone (what `zsiqa models` prints)
    UserError       the error raised for bad input, with a one-line message
They are imported on first use, so `import zsiqa` and the command line's --help stay light
(torch is loaded only when a model or distance is needed).
"""
import importlib
from typing import TYPE_CHECKING

from zsiqa.errors import UserError

__version__ = "0.9.0"

_EXPORTS = {"Scorer": "zsiqa.scorer", "PerceptualLoss": "zsiqa.loss", "DISTANCES": "zsiqa.distances",
            "BACKBONES": "zsiqa.models", "list_models": "zsiqa.models", "LAYOUTS": "zsiqa.datasets"}
__all__ = ["BACKBONES", "DISTANCES", "LAYOUTS", "PerceptualLoss", "Scorer", "UserError", "__version__", "list_models"]

if TYPE_CHECKING:  # what static tools and IDEs see
    from zsiqa.datasets import LAYOUTS
    from zsiqa.distances import DISTANCES
    from zsiqa.loss import PerceptualLoss
    from zsiqa.models import BACKBONES, list_models
    from zsiqa.scorer import Scorer


def __getattr__(name):
    """The public names of _EXPORTS, imported from their modules on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zsiqa' has no attribute '{name}'")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *_EXPORTS})
