"""Backbones: one registry entry each; a batch of 224×224 windows [N, 3, 224, 224] in [0, 1]
becomes a feature stack [N, L, T, D] (docs/protocol.md: which blocks and tokens).

A backbone is data (`Backbone`): which family builds it from a state dict, which weights file
it reads and where that file comes from, which outputs are compared, which distances apply
and its published precision. Families hold the only architecture-specific code; finding,
verifying and reading weight files lives in zsiqa/weights.py. `FeatureExtractor` runs a loaded
backbone on a device at a precision.
"""
import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsiqa.blocks import group_sizes
from zsiqa.distances import applicable
from zsiqa.errors import UserError
from zsiqa.weights import (
    Weights,
    check_keys,
    clip_model,
    hf_cache,
    hf_vit_to_timm,
    hub_weights,
    join_caches,
    load_strict,
    openai_weights,
    read_state_dict,
    resolve_weights,
    torch_hub_cache,
    visual_only,
)

# ---------------------------------------------------------------- families

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


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Backbone:
    """One registry entry. `output`: 'layers' or 'embed'; `maps`: conv feature maps (only
    l2 and cos exist for them); `cos_skip_nonfinite`: the published clip_rn50 quirk."""
    name: str
    arch: str
    family: Family
    weights: Weights
    output: str
    cuda_published: str           # dtype of the published GPU runs: 'fp16' or 'fp32'
    shape: str                    # compared features per 224-px window, for the listing
    published: bool = True
    maps: bool = False
    cos_skip_nonfinite: bool = False
    norm: tuple = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # --model-norm mean/std
    expect: dict = field(default_factory=dict)   # key → shape checks on the weights file

    @property
    def distances(self):
        """Every registered distance that applies to this backbone's kind of features."""
        return applicable(self.features)

    @property
    def features(self):
        """'embed', 'maps' (conv feature maps) or 'tokens' (token stacks): distances.FEATURE_KINDS."""
        return "embed" if self.output == "embed" else "maps" if self.maps else "tokens"


def with_embed(layers, shape):
    """A 'layers' entry and its `embed_` twin: same model and weights, the compared output is
    the model's embedding of `shape` (only cos applies to it)."""
    return layers, replace(layers, name="embed_" + layers.name, output="embed", shape=shape, maps=False,
                           cos_skip_nonfinite=False)


IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
OPENCLIP_FILE = "open_clip_pytorch_model.bin"

WEIGHTS_CLIP_B32 = openai_weights("ViT-B-32.pt", "ViT-B/32")
WEIGHTS_CLIP_RN50 = openai_weights("RN50.pt", "RN50")
WEIGHTS_DINO_B16 = Weights(
    file="dino_vitbase16_pretrain.pth", url=DINO_URL, source=DINO_URL,
    caches=join_caches(torch_hub_cache("dino_vitbase16_pretrain.pth"),
                       hf_cache("timm/vit_base_patch16_224.dino", "model.safetensors")))
WEIGHTS_OPENCLIP_B32 = hub_weights("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", OPENCLIP_FILE)
WEIGHTS_OPENCLIP_B32_TECOA4 = hub_weights("chs20/TeCoA4-ViT-B-32-laion2B-s34B-b79K", OPENCLIP_FILE)
WEIGHTS_OPENCLIP_CONVNEXT = hub_weights("laion/CLIP-convnext_base_w-laion2B-s13B-b82K", OPENCLIP_FILE)
WEIGHTS_OPENCLIP_CONVNEXT_TECOA4 = hub_weights("chs20/TeCoA4-convnext_base_w-laion2B-s13B-b82K-augreg", OPENCLIP_FILE)
WEIGHTS_DINOV2_B14 = hub_weights("facebook/dinov2-base", "model.safetensors")
WEIGHTS_IMAGENET_VIT_B16 = hub_weights("google/vit-base-patch16-224", "model.safetensors")

# key → shape checks that tell a file for another architecture apart
KEYS_CLIP_VIT_B32 = {"visual.conv1.weight": (768, 3, 32, 32), "visual.proj": (768, 512),
                     "visual.positional_embedding": (50, 768)}
KEYS_CLIP_RN50 = {"visual.conv1.weight": (32, 3, 3, 3), "visual.attnpool.c_proj.weight": (1024, 2048)}
KEYS_OPENCLIP_CONVNEXT = {"visual.head.proj.weight": (640, 1024), "visual.trunk.stem.0.weight": (128, 3, 4, 4)}

CLIP_VIT_B32 = ClipViT()
OPENCLIP_VIT_B32 = ClipViT(openclip=True)
CLIP_RN50 = ClipResNet()
OPENCLIP_CONVNEXT = OpenClipConvNeXt()
DINOV2_VIT_B14 = DinoV2("vit_base_patch14_dinov2", img_size=518)
# The Hugging Face ViT-B/16 (LayerNorm eps 1e-12), which the published DINO and ImageNet ViT runs used.
HF_VIT_B16 = TimmViT("vit_base_patch16_224", norm_layer=partial(nn.LayerNorm, eps=1e-12))

CONVNEXT_MAPS = "36 maps: 3x128x56x56, 3x256x28x28, 27x512x14x14, 3x1024x7x7"
RN50_MAPS = "5 maps: 64x56x56, 256x56x56, 512x28x28, 1024x14x14, 2048x7x7"


def timm_hub_backbone(timm_name, arch, **entry):
    """A backbone that timm builds and loads from its hub repository `timm/<timm_name>`
    (the newer models, not part of the published protocol)."""
    return Backbone(arch=f"{arch} (timm {timm_name})", family=TimmHub(timm_name),
                    weights=hub_weights(f"timm/{timm_name}", "model.safetensors"), output="layers",
                    cuda_published="fp32", published=False, **entry)


BACKBONES: Dict[str, Backbone] = {b.name: b for b in [
    # the paper's two headline backbones
    *with_embed(Backbone(name="clip_vitb32", arch="OpenAI CLIP ViT-B/32", family=CLIP_VIT_B32,
                         weights=WEIGHTS_CLIP_B32, output="layers", cuda_published="fp16", shape="12x50x768",
                         expect=KEYS_CLIP_VIT_B32), shape="1x1x512"),
    *with_embed(Backbone(name="dinov1", arch="DINO ViT-B/16", family=HF_VIT_B16, weights=WEIGHTS_DINO_B16,
                         output="layers", cuda_published="fp32", shape="12x197x768", norm=IMAGENET_NORM),
                shape="1x197x768"),
    # the published code's other backbones
    *with_embed(Backbone(name="clip_rn50", arch="OpenAI CLIP RN50", family=CLIP_RN50, weights=WEIGHTS_CLIP_RN50,
                         output="layers", cuda_published="fp16", shape=RN50_MAPS, maps=True,
                         cos_skip_nonfinite=True, expect=KEYS_CLIP_RN50), shape="1x1x1024"),
    *with_embed(Backbone(name="openclip_vitb32_laion", arch="OpenCLIP ViT-B-32 LAION-2B", family=OPENCLIP_VIT_B32,
                         weights=WEIGHTS_OPENCLIP_B32, output="layers", cuda_published="fp32", shape="12x50x768",
                         expect=KEYS_CLIP_VIT_B32), shape="1x1x512"),
    *with_embed(Backbone(name="openclip_vitb32_laion_tecoa4", arch="OpenCLIP ViT-B-32, TeCoA4 robust",
                         family=OPENCLIP_VIT_B32, weights=WEIGHTS_OPENCLIP_B32_TECOA4, output="layers",
                         cuda_published="fp32", shape="12x50x768", expect=KEYS_CLIP_VIT_B32), shape="1x1x512"),
    *with_embed(Backbone(name="openclip_convnext_base", arch="OpenCLIP ConvNeXt-Base(w) LAION-2B",
                         family=OPENCLIP_CONVNEXT, weights=WEIGHTS_OPENCLIP_CONVNEXT, output="layers",
                         cuda_published="fp32", shape=CONVNEXT_MAPS, maps=True, expect=KEYS_OPENCLIP_CONVNEXT),
                shape="1x1x640"),
    *with_embed(Backbone(name="openclip_convnext_laion_tecoa4", arch="OpenCLIP ConvNeXt-Base(w), TeCoA4 robust",
                         family=OPENCLIP_CONVNEXT, weights=WEIGHTS_OPENCLIP_CONVNEXT_TECOA4, output="layers",
                         cuda_published="fp32", shape=CONVNEXT_MAPS, maps=True, expect=KEYS_OPENCLIP_CONVNEXT),
                shape="1x1x640"),
    *with_embed(Backbone(name="dinov2", arch="DINOv2 ViT-B/14", family=DINOV2_VIT_B14, weights=WEIGHTS_DINOV2_B14,
                         output="layers", cuda_published="fp32", shape="12x257x768", norm=IMAGENET_NORM),
                shape="1x257x768"),
    Backbone(name="imagenet_vit", arch="ImageNet ViT-B/16 (google/vit-base-patch16-224)", family=HF_VIT_B16,
             weights=WEIGHTS_IMAGENET_VIT_B16, output="layers", cuda_published="fp32", shape="12x197x768",
             norm=HALF_NORM),
    # newer foundation models, same rule; not part of the published protocol
    timm_hub_backbone(name="dinov2_reg4", arch="DINOv2 ViT-B/14 with 4 registers",
                      timm_name="vit_base_patch14_reg4_dinov2.lvd142m", shape="12x261x768", norm=IMAGENET_NORM),
    timm_hub_backbone(name="dinov3", arch="DINOv3 ViT-B/16", timm_name="vit_base_patch16_dinov3.lvd1689m",
                      shape="12x201x768", norm=IMAGENET_NORM),
    timm_hub_backbone(name="siglip2", arch="SigLIP 2 ViT-B/16", timm_name="vit_base_patch16_siglip_224.v2_webli",
                      shape="12x196x768", norm=HALF_NORM),
    timm_hub_backbone(name="eva02_clip", arch="EVA-02 CLIP ViT-B/16", timm_name="eva02_base_patch16_clip_224.merged2b",
                      shape="12x197x768"),
]}

# names the golden files and the published tables use for the same entries
ALIASES = {"openclip_vitb32": "openclip_vitb32_laion", "embed_openclip_vitb32": "embed_openclip_vitb32_laion"}


def get_backbone(name: str) -> Backbone:
    """The registry entry of a backbone name or alias; UserError for anything else."""
    if not isinstance(name, str):
        raise UserError(f"the model must be a registry name (a string), got {type(name).__name__}")
    name = ALIASES.get(name, name)
    if name not in BACKBONES:
        raise UserError(f"unknown model '{name}'; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


# ---------------------------------------------------------------- loaded extractor

PRECISIONS = ("published", "fp32", "fp16", "bf16")


def resolve_device(device="auto"):
    """'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N', an int N (cuda:N) or such a
    torch.device → torch.device. Other kinds (mps, xpu, meta, …) are not supported: refused."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UserError(f"unknown or unsupported device '{device}'; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{device}' asked for (--device on the command line), but no CUDA device is available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {dev} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


class _no_tf32_matmul:
    """Context: fp32 matmuls in full fp32 (restores the previous setting)."""

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


class FeatureExtractor(nn.Module):
    """A loaded backbone on a device at a precision: windows [N, 3, 224, 224] in [0, 1]
    → features [N, L, T, D]. 'published' runs CLIP in fp16 and the rest in fp32 on a GPU,
    fp32 on a CPU; fp16/bf16 run the fp32 weights under autocast."""

    def __init__(self, backbone, weights=None, device="auto", precision="published", model_norm=False):
        super().__init__()
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
        self.backbone = backbone
        self.device = resolve_device(device)
        on_gpu = self.device.type == "cuda"
        half = precision == "published" and on_gpu and backbone.cuda_published == "fp16"
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.compute_dtype = torch.float16 if half else self.autocast or torch.float32  # what features are made in
        # 'published' keeps the library defaults, as the published runs did
        self.strict_fp32 = precision == "fp32" and on_gpu
        if weights == "random":  # seeded random init, for speed measurements only
            self.weights_path = "random"
            with torch.random.fork_rng(devices=[]):  # a random init must not move the caller's RNG
                torch.manual_seed(0)
                model = backbone.family.build()
        else:
            self.weights_path = resolve_weights(backbone, weights)
            model = backbone.family.loaded(read_state_dict(self.weights_path), backbone, self.weights_path)
        if half:
            model = backbone.family.half(model)
        self.model = model.eval().to(self.device)
        self.model.requires_grad_(False)
        self.forward_fn = getattr(backbone.family, backbone.output)
        mean, std = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in backbone.norm)
        self.norm = (mean, std) if model_norm else None  # off by default: the protocol feeds raw [0, 1]
        self._probe = None

    def probe(self):
        """(layers per feature group, bytes of one window's features at 4 bytes a value, an upper
        bound at every precision), measured once by a forward pass of the architecture on the meta
        device: shapes, with nothing computed. The engine sizes its reference cache with them."""
        if self._probe is None:
            with torch.device("meta"):
                skeleton = self.backbone.family.build()
            window = torch.empty(1, 3, 224, 224, device="meta")
            feats = getattr(self.backbone.family, self.backbone.output)(skeleton, window)  # never the compiled one
            feats = feats if isinstance(feats, (list, tuple)) else [feats]
            self._probe = (group_sizes(feats), sum(f[0].numel() * 4 for f in feats))
        return self._probe

    def compile(self):
        """Compile the forward pass (torch.compile, fixed shapes): faster batches on a GPU
        once the first one has paid for the compilation; the engine then pads short batches."""
        self.forward_fn = torch.compile(self.forward_fn, dynamic=False)
        return self

    @torch.inference_mode()
    def forward(self, x):
        """Features for scoring, with no autograd record at all."""
        return self.run(x)

    def run(self, x):
        """Windows → features at this extractor's device, normalisation and precision; records
        autograd when the caller does (the differentiable loss, loss.py)."""
        x = x.to(self.device, non_blocking=True)
        if self.norm is not None:
            x = (x - self.norm[0]) / self.norm[1]
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.forward_fn(self.model, x)
        if self.strict_fp32:  # 'fp32' means fp32: no TF32 convolutions or matmuls on a GPU
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), _no_tf32_matmul():
                return self.forward_fn(self.model, x)
        return self.forward_fn(self.model, x)


def list_models() -> List[dict]:
    """One row per registered backbone (the `--list-models` table)."""
    aliases = {v: k for k, v in ALIASES.items()}
    return [{"name": b.name + (f" (alias {aliases[b.name]})" if b.name in aliases else ""), "architecture": b.arch,
             "weights": b.weights.file, "source": b.weights.source, "protocol": "published" if b.published else "new",
             "distances": ",".join(b.distances), "published_precision_gpu": b.cuda_published,
             "feature_shape_224": b.shape} for b in BACKBONES.values()]


WIDE_COLUMNS = ["name", "protocol", "distances", "published_precision_gpu", "feature_shape_224", "architecture",
                "weights"]
NARROW_COLUMNS = {"name": "name", "protocol": "protocol", "distances": "distances", "published_precision_gpu": "gpu",
                  "feature_shape_224": "features"}  # column → its header: fits 100 columns


def format_model_table(rows, wide=False):
    """`list_models()` rows as a text table. The default fits 100 columns: name, protocol,
    distances, published GPU precision and feature shape (a conv net's maps counted), aliases
    listed below; wide=True adds the architecture and the weights file, with every map's shape."""
    if wide:
        header, cells = dict(zip(WIDE_COLUMNS, WIDE_COLUMNS)), [{c: str(r[c]) for c in WIDE_COLUMNS} for r in rows]
    else:
        header = NARROW_COLUMNS
        cells = [{c: str(r[c]).split(" (alias ")[0] if c == "name" else str(r[c]).split(":")[0] for c in header}
                 for r in rows]
    width = {c: max(len(h), *(len(r[c]) for r in cells)) for c, h in header.items()}
    lines = ["  ".join(h.ljust(width[c]) for c, h in header.items()).rstrip()]
    lines += ["  ".join(r[c].ljust(width[c]) for c in header).rstrip() for r in cells]
    if not wide:
        lines += [f"alias {r['name'].split(' (alias ')[1].rstrip(')')} = {r['name'].split(' ')[0]}"
                  for r in rows if " (alias " in r["name"]]
        lines.append("(architecture and weights file: zsiqa models --wide, or --json)")
    return "\n".join(lines)
