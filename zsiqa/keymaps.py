"""Checkpoint keys onto an architecture: `check_keys`/`load_strict` give one-line misfit
messages, `visual_only` takes a CLIP checkpoint's image tower, `hf_vit_to_timm` renames Hugging
Face ViT keys to timm's.
"""
import torch

from zsiqa.errors import UserError


def check_keys(sd, expect, backbone, path):
    """Fail clearly when a file is for another architecture (shape or key mismatch)."""
    for key, shape in expect.items():
        if key not in sd or tuple(sd[key].shape) != tuple(shape):
            got = tuple(sd[key].shape) if key in sd else "missing"
            raise UserError(f"weights file {path} does not fit {backbone.name} ({backbone.arch}): "
                            f"{key} is {got}, expected {tuple(shape)}")


def load_strict(module, sd, backbone, path, assign=False):
    """load_state_dict (assign=True: the tensors become the parameters, for a module built on
    the meta device), with a mismatch summarised in one line (counts and first keys)."""
    misfit = f"weights file {path} does not fit {backbone.name} ({backbone.arch})"
    try:
        result = module.load_state_dict(sd, strict=False, assign=assign)
    except RuntimeError as e:  # shape mismatches
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), "shape mismatch")
        raise UserError(f"{misfit}: {detail[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{misfit}: {len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})")


def visual_only(sd, prefix="visual."):
    """The `visual.*` part of a CLIP/OpenCLIP checkpoint, prefix removed (text tower ignored)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


HF_VIT_RENAMES = (  # Hugging Face ViT/DINOv2 names → timm's (docs/protocol.md)
    ("embeddings.cls_token", "cls_token"), ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."), ("encoder.layer.", "blocks."),
    (".attention.output.dense.", ".attn.proj."), (".layernorm_before.", ".norm1."), (".layernorm_after.", ".norm2."),
    (".intermediate.dense.", ".mlp.fc1."), (".output.dense.", ".mlp.fc2."),
    (".layer_scale1.lambda1", ".ls1.gamma"), (".layer_scale2.lambda1", ".ls2.gamma"), ("layernorm.", "norm."),
)


def hf_vit_to_timm(sd):
    """Hugging Face ViT / DINOv2 / DINO (`facebook/dino-vitb16`) keys onto timm's ViT;
    timm-layout files pass through. query/key/value are concatenated into qkv."""
    if not any(".attention.attention.query." in k for k in sd):
        return sd
    sd = {k[4:] if k.startswith("vit.") else k: v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        if k.startswith(("classifier.", "pooler.")) or k == "embeddings.mask_token" or ".attention.attention." in k:
            continue
        for old, new in HF_VIT_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    for k in [k for k in sd if ".attention.attention.query." in k]:
        block = k.split(".attention.attention.query.")[0].replace("encoder.layer.", "blocks.")
        kind = k.rsplit(".", 1)[1]
        parts = [sd[k.replace(".query.", f".{n}.")] for n in ("query", "key", "value")]
        out[f"{block}.attn.qkv.{kind}"] = torch.cat(parts, 0)
    return out
