"""The seeded stand-in checkpoints of the golden tests, written by the project itself.

The real CLIP / DINO / … weights are not downloadable on an offline machine; these files have
the key names, shapes and dtypes of the official releases (so the loaders read them as they read
the official files) and seeded noise as values. tests/golden/expected.json holds the scores the
published code computed with exactly these files: the values below (order of the keys, the
generator, each tensor's scale) must not change, or every golden model test fails. `--digest`
prints the content digests that tests/golden/README.md lists.

  clip_vitb32   OpenAI CLIP ViT-B/32 state dict (fp16); the text tower shrunk to one 64-wide layer
  dinov1        DINO ViT-B/16 backbone state dict (fp32)
  clip_rn50     OpenAI CLIP RN50 state dict (fp16; the key template from the clip package's model)
  dinov2        Hugging Face facebook/dinov2-base (safetensors, fp32)
  imagenet_vit  Hugging Face google/vit-base-patch16-224 (safetensors, fp32, with its classifier)
  openclip_vitb32         OpenCLIP ViT-B-32 vision tower, `visual.*` keys (fp32)
  openclip_convnext_base  OpenCLIP convnext_base_w vision tower, `visual.*` keys (fp32; timm's trunk)

Usage: python tests/checkpoints.py OUTDIR [--seed N] [--only NAME] [--digest]
Writes OUTDIR/<name>_seed<N>.<ext>; all seven take about 2 GB.
"""
import argparse
import hashlib
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vit_blocks(prefix, width, layers, names):
    """{key: shape} of `layers` transformer blocks: names maps a key suffix to its shape in
    units of the width (e.g. "mlp.fc1.weight": (4, 1))."""
    return {f"{prefix}{i}.{key}": tuple(width * n for n in shape)
            for i in range(layers) for key, shape in names.items()}


CLIP_BLOCK = {"attn.in_proj_weight": (3, 1), "attn.in_proj_bias": (3,), "attn.out_proj.weight": (1, 1),
              "attn.out_proj.bias": (1,), "ln_1.weight": (1,), "ln_1.bias": (1,), "mlp.c_fc.weight": (4, 1),
              "mlp.c_fc.bias": (4,), "mlp.c_proj.weight": (1, 4), "mlp.c_proj.bias": (1,), "ln_2.weight": (1,),
              "ln_2.bias": (1,)}
TIMM_BLOCK = {"norm1.weight": (1,), "norm1.bias": (1,), "attn.qkv.weight": (3, 1), "attn.qkv.bias": (3,),
              "attn.proj.weight": (1, 1), "attn.proj.bias": (1,), "norm2.weight": (1,), "norm2.bias": (1,),
              "mlp.fc1.weight": (4, 1), "mlp.fc1.bias": (4,), "mlp.fc2.weight": (1, 4), "mlp.fc2.bias": (1,)}
HF_ATTENTION = {f"attention.attention.{n}.{p}": (1, 1) if p == "weight" else (1,)
                for n in ("query", "key", "value") for p in ("weight", "bias")}
HF_ATTENTION.update({"attention.output.dense.weight": (1, 1), "attention.output.dense.bias": (1,)})


def clip_vitb32_shapes():
    """OpenAI's ViT-B/32: the full vision tower, a one-layer 64-wide text tower (never used)."""
    w, patch, grid, embed, text = 768, 32, 7, 512, 64
    shapes = {"visual.class_embedding": (w,), "visual.positional_embedding": (grid * grid + 1, w),
              "visual.proj": (w, embed), "visual.conv1.weight": (w, 3, patch, patch),
              "visual.ln_pre.weight": (w,), "visual.ln_pre.bias": (w,),
              "visual.ln_post.weight": (w,), "visual.ln_post.bias": (w,)}
    shapes.update(vit_blocks("visual.transformer.resblocks.", w, 12, CLIP_BLOCK))
    shapes.update({"positional_embedding": (77, text), "text_projection": (text, embed), "logit_scale": (),
                   "token_embedding.weight": (49408, text), "ln_final.weight": (text,), "ln_final.bias": (text,)})
    shapes.update(vit_blocks("transformer.resblocks.", text, 1, CLIP_BLOCK))
    return shapes


def dinov1_shapes():
    """DINO's ViT-B/16 backbone (timm's key names)."""
    w, patch, grid = 768, 16, 14
    shapes = {"cls_token": (1, 1, w), "pos_embed": (1, grid * grid + 1, w),
              "patch_embed.proj.weight": (w, 3, patch, patch), "patch_embed.proj.bias": (w,),
              "norm.weight": (w,), "norm.bias": (w,)}
    shapes.update(vit_blocks("blocks.", w, 12, TIMM_BLOCK))
    return shapes


def clip_rn50_shapes():
    """OpenAI's RN50: the clip package's own model class gives the keys (text tower shrunk)."""
    sys.path.insert(0, ROOT)
    from zsiqa.weights import clip_model
    model = clip_model().CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 64, 1, 1)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def dinov2_shapes():
    """facebook/dinov2-base in the Hugging Face layout."""
    w, patch, grid = 768, 14, 37
    shapes = {"embeddings.cls_token": (1, 1, w), "embeddings.mask_token": (1, w),
              "embeddings.position_embeddings": (1, grid * grid + 1, w),
              "embeddings.patch_embeddings.projection.weight": (w, 3, patch, patch),
              "embeddings.patch_embeddings.projection.bias": (w,), "layernorm.weight": (w,), "layernorm.bias": (w,)}
    block = {**HF_ATTENTION, "norm1.weight": (1,), "norm1.bias": (1,), "norm2.weight": (1,), "norm2.bias": (1,),
             "layer_scale1.lambda1": (1,), "layer_scale2.lambda1": (1,), "mlp.fc1.weight": (4, 1),
             "mlp.fc1.bias": (4,), "mlp.fc2.weight": (1, 4), "mlp.fc2.bias": (1,)}
    shapes.update(vit_blocks("encoder.layer.", w, 12, block))
    return shapes


def imagenet_vit_shapes():
    """google/vit-base-patch16-224 in the Hugging Face layout, with its 1000-class head."""
    w, patch, grid = 768, 16, 14
    shapes = {"vit.embeddings.cls_token": (1, 1, w), "vit.embeddings.position_embeddings": (1, grid * grid + 1, w),
              "vit.embeddings.patch_embeddings.projection.weight": (w, 3, patch, patch),
              "vit.embeddings.patch_embeddings.projection.bias": (w,), "vit.layernorm.weight": (w,),
              "vit.layernorm.bias": (w,), "classifier.weight": (1000, w), "classifier.bias": (1000,)}
    block = {**HF_ATTENTION, "layernorm_before.weight": (1,), "layernorm_before.bias": (1,),
             "layernorm_after.weight": (1,), "layernorm_after.bias": (1,), "intermediate.dense.weight": (4, 1),
             "intermediate.dense.bias": (4,), "output.dense.weight": (1, 4), "output.dense.bias": (1,)}
    shapes.update(vit_blocks("vit.encoder.layer.", w, 12, block))
    return shapes


def openclip_vitb32_shapes():
    """OpenCLIP's ViT-B-32 vision tower: OpenAI's `visual.*` keys."""
    return {k: v for k, v in clip_vitb32_shapes().items() if k.startswith("visual.")}


def openclip_convnext_base_shapes():
    """OpenCLIP's convnext_base_w vision tower: timm's convnext_base trunk and a 640-wide projection."""
    import timm
    trunk = timm.create_model("convnext_base", pretrained=False, num_classes=0)
    shapes = {"visual.trunk." + k: tuple(v.shape) for k, v in trunk.state_dict().items()}
    shapes["visual.head.proj.weight"] = (640, 1024)
    return shapes


NORM_PARTS = ("ln_", "norm", "bn", "downsample.0", "downsample.1", "stem.1")


def seeded_value(name, shape, x, conv_gain):
    """The stand-in value of tensor `name` from its standard-normal draw x: norms near 1,
    biases and embeddings small, layer scales near 0.3, weights scaled by 1/sqrt(fan-in)
    (convolutions also by conv_gain), running statistics of batch norms plausible."""
    is_norm = any(t in name for t in NORM_PARTS) and len(shape) == 1
    if name.endswith("running_var"):
        return 1.0 + 0.1 * x.abs()
    if name.endswith("running_mean"):
        return 0.1 * x
    if name.endswith(("gamma", "lambda1")):
        return 0.3 + 0.05 * x
    if name == "logit_scale":
        return torch.tensor(math.log(1 / 0.07))
    if is_norm and name.endswith("weight"):
        return 1.0 + 0.1 * x
    if name.endswith("bias") or len(shape) == 1 or name in ("cls_token", "pos_embed") or "positional" in name:
        return 0.02 * x
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return x * (conv_gain if len(shape) == 4 else 1.0) / math.sqrt(fan_in)


def fill(shapes, seed, dtype, conv_gain=1.0):
    """{key: tensor}: one seeded generator draws every tensor in sorted key order (never dict
    order); batch norms' counters are zero."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        x = torch.randn(shapes[name], generator=g, dtype=torch.float32)  # drawn for every key, counters too
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros((), dtype=torch.long)
        else:
            out[name] = seeded_value(name, shapes[name], x, conv_gain).to(dtype).contiguous()
    return out


# name: (its shapes, dtype, file name pattern, gain of convolution weights)
KINDS = {
    "clip_vitb32": (clip_vitb32_shapes, torch.float16, "clip_vitb32_seed{}.pt", 1.0),
    "dinov1": (dinov1_shapes, torch.float32, "dinov1_seed{}.pth", 1.0),
    "clip_rn50": (clip_rn50_shapes, torch.float16, "clip_rn50_seed{}.pt", math.sqrt(2)),
    "dinov2": (dinov2_shapes, torch.float32, "dinov2_seed{}.safetensors", 1.0),
    "imagenet_vit": (imagenet_vit_shapes, torch.float32, "imagenet_vit_seed{}.safetensors", 1.0),
    "openclip_vitb32": (openclip_vitb32_shapes, torch.float32, "openclip_vitb32_seed{}.bin", 1.0),
    "openclip_convnext_base": (openclip_convnext_base_shapes, torch.float32, "openclip_convnext_base_seed{}.bin", 1.0),
}


def save(state, path):
    """safetensors for .safetensors files, else torch.save (the release formats)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)


def load(path):
    """The state dict of a file written by save()."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu")


def make(name, outdir, seed=0):
    """The path of stand-in `name` for `seed` in outdir, written first if absent (through a
    temporary file beside it, so an interrupted write leaves no half file under the real name).

    Args:
        name: one of KINDS.
        outdir: the folder (made if missing).
        seed: the generator's seed (the golden values use 0).
    Returns:
        The file's path (str).
    """
    shapes, dtype, pattern, gain = KINDS[name]
    path = os.path.join(outdir, pattern.format(seed))
    if not os.path.exists(path):
        os.makedirs(outdir, exist_ok=True)
        tmp = path + ".tmp" + os.path.splitext(path)[1]  # torch.save names its archive after the file: kept as is
        save(fill(shapes(), seed, dtype, gain), tmp)
        os.replace(tmp, path)
    return path


def state_digest(state):
    """Content digest of a state dict: sha256 over the sorted key names and each tensor's raw
    bytes, 16 hex digits (what tests/golden/README.md lists).

    Args:
        state: {key: tensor}.
    Returns:
        The digest (str).
    """
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def digest(path):
    """state_digest of a file written by make().

    Args:
        path: the file.
    Returns:
        The digest (str).
    """
    return state_digest(load(path))


def cache_dir():
    """Where the test suite keeps the stand-ins: $ZSIQA_TEST_CKPT_DIR, else .cache/test-checkpoints/
    <this file's digest>/ in the checkout (a changed writer writes into a new folder)."""
    with open(os.path.abspath(__file__), "rb") as f:
        key = hashlib.sha256(f.read()).hexdigest()[:12]
    return os.environ.get("ZSIQA_TEST_CKPT_DIR") or os.path.join(ROOT, ".cache", "test-checkpoints", key)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=sorted(KINDS))
    ap.add_argument("--digest", action="store_true")
    a = ap.parse_args(argv)
    for name in [a.only] if a.only else sorted(KINDS):
        path = make(name, a.outdir, a.seed)
        print(path, digest(path) if a.digest else "")


if __name__ == "__main__":
    main()
