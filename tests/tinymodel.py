"""The tiny test backbone (a seeded 2-block, 32-wide ViT/16) and its weights, registered by
the `tiny` fixture (tests/conftest.py) and by tests/tiny_run.py (subprocess runs)."""
import torch

from zsiqa import models

TINY = "tiny_vit_test"
TINY_VIT = models.TimmViT("vit_base_patch16_224", depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)
TINY_WEIGHTS = models.Weights(file="tiny_vit.pth", url=None, caches=list, source="the test suite")


def tiny_backbones(name=TINY):
    """The tiny entry `name` and its `embed_` twin."""
    return models.with_embed(models.Backbone(name=name, arch="tiny ViT", family=TINY_VIT, weights=TINY_WEIGHTS,
                                             output="layers", cuda_published="fp32", shape="2x197x32"),
                             shape="1x197x32")


def register_tiny(backbones, setitem=None):
    """Add the tiny entries to `backbones` (models.BACKBONES); `setitem`: pytest's
    monkeypatch.setitem for a registration that ends with the test."""
    for b in tiny_backbones():
        (setitem or type(backbones).__setitem__)(backbones, b.name, b)


def make_tiny_weights(path):
    """Save the seeded tiny ViT's state dict (timm layout) to `path`; returns the path."""
    import timm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2, embed_dim=32,
                              num_heads=2, mlp_ratio=2)
    torch.save(m.state_dict(), path)
    return str(path)
