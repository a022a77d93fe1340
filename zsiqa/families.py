"""Backbone families: how each kind of architecture (CLIP ViT and ResNet, OpenCLIP ConvNeXt,
timm/Hugging Face ViT, DINOv2, timm hub models) is built, takes a checkpoint's tensors, is cast
to its published half precision, and which blocks it exposes: `layers` gives the compared
feature groups, `embed` the compared embedding. The only architecture-specific code; the
registry (zsiqa/registry.py) names which family each backbone uses.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsiqa.errors import UserError
from zsiqa.keymaps import check_keys, hf_vit_to_timm, load_strict, visual_only
from zsiqa.weights import clip_model


def run_stacked(blocks, x, layer_dim):
    """Run x through the blocks in turn, each output written into one preallocated stack
    along `layer_dim`: no list of outputs copied again by torch.stack (half the peak)."""
    out = None
    for i, block in enumerate(blocks):
        x = block(x)
        if out is None:
            shape = list(x.shape)
            shape.insert(layer_dim, len(blocks))
            out = x.new_empty(shape)
        out.select(layer_dim, i).copy_(x)
    return out


class Family:
    """One family of architectures: `build()` gives the architecture (parameters uninitialised
    when built on the meta device), `state(sd)` a checkpoint's tensors under its names,
    `half(model)` the published fp16 form, `layers`/`embed` run it. `layers` gives the compared
    feature groups: one stack [N, L, T, D] for transformers, one [N, L_g, C, H, W] per map shape
    for conv nets; `embed` the compared embedding [N, 1, T, D]."""

    def build(self):
        raise NotImplementedError

    def state(self, sd):
        return sd

    def checkpoint(self, model):
        """The tensors of `model` as this family's weights files hold them (the inverse of `state`)."""
        return model.state_dict()

    def half(self, model):
        return model.half()

    def loaded(self, sd, backbone, path):
        """The architecture holding the checkpoint's tensors: built on the meta device (nothing
        initialised that the checkpoint would overwrite), loaded with assign=True, in float32."""
        with torch.device("meta"):
            model = self.build()
        check_keys(sd, backbone.expect, backbone, path)
        load_strict(model, self.state(sd), backbone, path, assign=True)
        return model.float()

    def layers(self, model, x):
        raise NotImplementedError

    def embed(self, model, x):
        raise NotImplementedError


class Fp32LayerNorm(nn.LayerNorm):
    """The clip package's LayerNorm (computed in float32, output in the input's dtype), also when
    the module was cast to half or bfloat16: its own weights are taken in float32 too (a no-op
    for the float32 weights of every published run). A float64 input stays float64 (.double()
    for gradient checks): float32 is the least precision, never a cap."""

    def forward(self, x):
        dtype = torch.promote_types(x.dtype, torch.float32)
        w, b = (None if t is None else t.to(dtype) for t in (self.weight, self.bias))
        return F.layer_norm(x.to(dtype), self.normalized_shape, w, b, self.eps).type(x.dtype)


def _fp32_layer_norms(module):
    for m in module.modules():
        if type(m).__name__ == "LayerNorm" and type(m).__module__ == "clip.model":
            m.__class__ = Fp32LayerNorm
    return module


class ClipViT(Family):
    """CLIP's vision transformer built from the `clip` package's module (sequence-first
    blocks). openclip=True: OpenCLIP's ViT, the same but with GELU instead of QuickGELU."""

    def __init__(self, patch=32, width=768, layers=12, heads=12, output_dim=512, openclip=False):
        self.dims, self.openclip = (patch, width, layers, heads, output_dim), openclip

    def build(self):
        code = clip_model()
        patch, width, layers, heads, out = self.dims
        visual = code.VisionTransformer(224, patch, width, layers, heads, out)
        if self.openclip:
            for block in visual.transformer.resblocks:
                block.mlp.gelu = nn.GELU()
        return _fp32_layer_norms(visual)

    def state(self, sd):
        return visual_only(sd)

    def checkpoint(self, model):
        return {f"visual.{k}": v for k, v in model.state_dict().items()}

    def half(self, model):
        """What clip.load gives on a GPU: convolutions, linears, attention in fp16 (LayerNorms stay fp32)."""
        clip_model().convert_weights(model)
        return model

    def _tokens(self, visual, x):
        x = visual.conv1(x.type(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x).permute(1, 0, 2)  # NLD → LND, as the clip package runs

    def layers(self, visual, x):
        stack = run_stacked(visual.transformer.resblocks, self._tokens(visual, x), 0)  # [L, T, N, D]
        return stack.permute(2, 0, 1, 3)

    def embed(self, visual, x):
        x = visual.transformer(self._tokens(visual, x)).permute(1, 0, 2)
        e = visual.ln_post(x[:, 0, :]) @ visual.proj.to(x.dtype)
        return F.normalize(e.float(), dim=-1)[:, None, None, :]


class ClipResNet(Family):
    """CLIP's modified ResNet (`clip` package). Maps: the stem after its average pool, then
    layer1…layer4 (not the attention pool), each its own group [N, 1, C, H, W]."""

    def __init__(self, layers=(3, 4, 6, 3), width=64, output_dim=1024):
        self.blocks, self.width, self.output_dim = layers, width, output_dim

    def build(self):
        return clip_model().ModifiedResNet(self.blocks, self.output_dim, self.width * 32 // 64, 224, self.width)

    state, checkpoint, half = ClipViT.state, ClipViT.checkpoint, ClipViT.half

    def layers(self, v, x):
        x = x.type(v.conv1.weight.dtype)
        x = v.relu1(v.bn1(v.conv1(x)))
        x = v.relu2(v.bn2(v.conv2(x)))
        x = v.avgpool(v.relu3(v.bn3(v.conv3(x))))
        outs = [x]
        for stage in (v.layer1, v.layer2, v.layer3, v.layer4):
            x = stage(x)
            outs.append(x)
        return [o[:, None] for o in outs]

    def embed(self, v, x):
        return F.normalize(v(x.type(v.conv1.weight.dtype)).float(), dim=-1)[:, None, None, :]


class _TrunkAndProjection(nn.Module):
    """OpenCLIP's timm-tower: `trunk` (a timm model without classifier) and `head.proj`."""

    def __init__(self, trunk, in_dim, out_dim):
        super().__init__()
        self.trunk = trunk
        self.head = nn.Module()
        self.head.proj = nn.Linear(in_dim, out_dim, bias=False)


class OpenClipConvNeXt(Family):
    """OpenCLIP convnext_base_w: timm's convnext_base trunk; maps = the output of each of the
    36 blocks in forward order, stacked per stage (4 groups [N, L_s, C, H, W])."""

    def build(self):
        import timm
        return _TrunkAndProjection(timm.create_model("convnext_base", pretrained=False, num_classes=0), 1024, 640)

    state, checkpoint = ClipViT.state, ClipViT.checkpoint

    def layers(self, model, x):
        t = model.trunk
        x = t.stem(x.type(t.stem[0].weight.dtype))
        groups = []
        for stage in t.stages:
            x = stage.downsample(x)
            outs = []
            for block in stage.blocks:
                x = block(x)
                outs.append(x)
            groups.append(torch.stack(outs, dim=1))
        return groups

    def embed(self, model, x):
        x = x.type(model.trunk.stem[0].weight.dtype)
        return F.normalize(model.head.proj(model.trunk(x)).float(), dim=-1)[:, None, None, :]


class TimmViT(Family):
    """A timm VisionTransformer; block outputs with prefix tokens, before the final norm.
    Reads timm/DINO-layout and Hugging Face-layout state dicts alike."""

    def __init__(self, arch, **kwargs):
        self.arch, self.kwargs = arch, kwargs

    def build(self):
        import timm
        return timm.create_model(self.arch, pretrained=False, num_classes=0, **self.kwargs)

    def state(self, sd):
        return hf_vit_to_timm(sd)

    def _embed_tokens(self, model, x):
        x = x.type(model.patch_embed.proj.weight.dtype)
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    def layers(self, model, x):
        return run_stacked(model.blocks, self._embed_tokens(model, x), 1)

    def embed(self, model, x):
        return F.normalize(model.norm(model.blocks(self._embed_tokens(model, x))).float(), dim=-1)[:, None]


class DinoV2(TimmViT):
    """DINOv2 ViT-B/14 whose 37×37 position grid is resampled for a 224-px window (16×16
    patches) exactly as Hugging Face transformers 4.44 did: bicubic by scale factor
    (16 + 0.1)/37 in float32, class position kept apart."""

    def _embed_tokens(self, model, x):
        patch = model.patch_embed.proj.kernel_size[0]
        h, w = x.shape[-2] // patch, x.shape[-1] // patch
        tokens = model.patch_embed.proj(x.type(model.patch_embed.proj.weight.dtype)).flatten(2).transpose(1, 2)
        tokens = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        pos = model.pos_embed
        grid = int(math.sqrt(pos.shape[1] - 1))
        patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos.float(), scale_factor=((h + 0.1) / grid, (w + 0.1) / grid),
                                  mode="bicubic", align_corners=False).to(pos.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
        return tokens + torch.cat([pos[:, :1], patch_pos], dim=1)


class TimmHub(Family):
    """A timm model with weights from its timm hub repository, built for 224-px windows
    (timm adapts position embeddings when loading). Features: every block's output, prefix
    tokens (class, registers) included, via forward hooks (works for ViT and EVA classes)."""

    def __init__(self, name):
        self.name = name

    def build(self):
        import timm
        return timm.create_model(self.name, pretrained=False, num_classes=0, img_size=224)

    def loaded(self, sd, backbone, path):
        """timm's own loader reads the file (already read once by read_state_dict, which
        gives the clear message for an unreadable file), because it carries each model's
        filter that adapts the position embeddings to 224 px."""
        import timm
        try:
            return timm.create_model(self.name, pretrained=True, pretrained_cfg_overlay=dict(file=path),
                                     num_classes=0, img_size=224)
        except Exception as e:  # whatever timm's loader raises for a misfit file: one line
            raise UserError(f"weights file {path} does not fit {backbone.name} ({backbone.arch}): "
                            f"{str(e).splitlines()[0][:200]}") from None

    def layers(self, model, x):
        outs = []
        hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
        try:
            model.forward_features(x.type(model.patch_embed.proj.weight.dtype))
        finally:
            for h in hooks:
                h.remove()
        return torch.stack(outs, dim=1)
