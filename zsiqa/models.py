"""Backbones: the entry point for every name about them, re-exported from the modules that do
the work, so `from zsiqa.models import …` keeps working. A batch of 224×224 windows
[N, 3, 224, 224] in [0, 1] becomes a feature stack [N, L, T, D] (docs/protocol.md: which blocks
and tokens).

zsiqa/registry.py: the `Backbone` entries, one per model in the one table `BACKBONES` (which
family builds it, which weights file it reads and where that file comes from, which outputs are
compared, which distances apply, its published precision), `get_backbone`, `list_models`.
zsiqa/families.py: how each family is built from a state dict and which blocks it exposes (the
only architecture-specific code). zsiqa/extractor.py: `FeatureExtractor`, a loaded backbone run
on a device at a precision. Finding, verifying and reading weight files: zsiqa/weights.py.
"""
from zsiqa.extractor import PRECISIONS, FeatureExtractor, resolve_device
from zsiqa.families import (
    ClipResNet,
    ClipViT,
    DinoV2,
    Family,
    Fp32LayerNorm,
    OpenClipConvNeXt,
    TimmHub,
    TimmViT,
    run_stacked,
)
from zsiqa.registry import (
    ALIASES,
    BACKBONES,
    CLIP_RN50,
    CLIP_VIT_B32,
    CONVNEXT_MAPS,
    DINO_URL,
    DINOV2_VIT_B14,
    HALF_NORM,
    HF_VIT_B16,
    IMAGENET_NORM,
    KEYS_CLIP_RN50,
    KEYS_CLIP_VIT_B32,
    KEYS_OPENCLIP_CONVNEXT,
    NARROW_COLUMNS,
    OPENCLIP_CONVNEXT,
    OPENCLIP_FILE,
    OPENCLIP_VIT_B32,
    RN50_MAPS,
    WEIGHTS_CLIP_B32,
    WEIGHTS_CLIP_RN50,
    WEIGHTS_DINO_B16,
    WEIGHTS_DINOV2_B14,
    WEIGHTS_IMAGENET_VIT_B16,
    WEIGHTS_OPENCLIP_B32,
    WEIGHTS_OPENCLIP_B32_TECOA4,
    WEIGHTS_OPENCLIP_CONVNEXT,
    WEIGHTS_OPENCLIP_CONVNEXT_TECOA4,
    WIDE_COLUMNS,
    Backbone,
    format_model_table,
    get_backbone,
    list_models,
    timm_hub_backbone,
    with_embed,
)
from zsiqa.weights import Weights

__all__ = [
    # the registry (zsiqa/registry.py)
    "Backbone", "BACKBONES", "ALIASES", "get_backbone", "list_models", "format_model_table", "with_embed",
    "timm_hub_backbone", "IMAGENET_NORM", "HALF_NORM", "DINO_URL", "OPENCLIP_FILE", "WEIGHTS_CLIP_B32",
    "WEIGHTS_CLIP_RN50", "WEIGHTS_DINO_B16", "WEIGHTS_OPENCLIP_B32", "WEIGHTS_OPENCLIP_B32_TECOA4",
    "WEIGHTS_OPENCLIP_CONVNEXT", "WEIGHTS_OPENCLIP_CONVNEXT_TECOA4", "WEIGHTS_DINOV2_B14", "WEIGHTS_IMAGENET_VIT_B16",
    "KEYS_CLIP_VIT_B32", "KEYS_CLIP_RN50", "KEYS_OPENCLIP_CONVNEXT", "CLIP_VIT_B32", "OPENCLIP_VIT_B32", "CLIP_RN50",
    "OPENCLIP_CONVNEXT", "DINOV2_VIT_B14", "HF_VIT_B16", "CONVNEXT_MAPS", "RN50_MAPS", "WIDE_COLUMNS",
    "NARROW_COLUMNS",
    # the families (zsiqa/families.py)
    "Family", "ClipViT", "ClipResNet", "OpenClipConvNeXt", "TimmViT", "DinoV2", "TimmHub", "Fp32LayerNorm",
    "run_stacked",
    # the extractor (zsiqa/extractor.py)
    "FeatureExtractor", "PRECISIONS", "resolve_device",
    # where a backbone's weights come from (zsiqa/weights.py)
    "Weights",
]
