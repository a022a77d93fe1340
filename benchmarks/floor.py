#!/usr/bin/env python3
"""The floor of a first score: what any tool must do to score one 224-px pair on a CPU, and no
more. Imports torch and the model library, builds the architecture on the meta device (no
random initialisation), loads the checkpoint with load_state_dict(assign=True), and runs the
two forward passes (reference, distorted) that a 224-px pair needs. Independent of zsiqa, so
that benchmarks/first_score.py can compare `run_single_img.py` against it.

  python benchmarks/floor.py dinov1 WEIGHTS REF DIS
  python benchmarks/floor.py clip_vitb32 WEIGHTS REF DIS
"""
import sys
from functools import partial

import numpy as np
import torch
from PIL import Image


def window(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def dinov1(weights):
    import timm
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                                  norm_layer=partial(torch.nn.LayerNorm, eps=1e-12))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=False, assign=True)

    def layers(x):
        x = model.norm_pre(model._pos_embed(model.patch_embed(x)))
        outs = []
        for block in model.blocks:
            x = block(x)
            outs.append(x)
        return torch.stack(outs, 1)
    return layers


def clip_vitb32(weights):
    import clip.model
    with torch.device("meta"):
        visual = clip.model.VisionTransformer(224, 32, 768, 12, 12, 512)
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    visual.load_state_dict({k[7:]: v for k, v in sd.items() if k.startswith("visual.")}, assign=True)
    visual.float()

    def layers(x):
        x = visual.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1) + visual.positional_embedding
        x = visual.ln_pre(x).permute(1, 0, 2)
        outs = []
        for block in visual.transformer.resblocks:
            x = block(x)
            outs.append(x)
        return torch.stack(outs, 0).permute(2, 0, 1, 3)
    return layers


if __name__ == "__main__":
    name, weights, ref, dis = sys.argv[1:5]
    layers = {"dinov1": dinov1, "clip_vitb32": clip_vitb32}[name](weights)
    with torch.inference_mode():
        f_ref, f_dis = layers(window(ref)), layers(window(dis))
    print(float((f_dis - f_ref).pow(2).mean((2, 3)).sum()))
