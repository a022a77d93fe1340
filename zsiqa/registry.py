"""The backbone registry: one `Backbone` entry per model in the one table `BACKBONES` (which
family builds it, which weights file it reads and where that file comes from, which outputs are
compared, which distances apply, its published precision), names and aliases looked up by
`get_backbone`, and the `zsiqa models` listing (`list_models`, `format_model_table`).
"""
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Dict, List

import torch.nn as nn

from zsiqa.distances import applicable
from zsiqa.errors import UserError
from zsiqa.families import ClipResNet, ClipViT, DinoV2, Family, OpenClipConvNeXt, TimmHub, TimmViT
from zsiqa.weights import Weights, hf_cache, hub_weights, join_caches, openai_weights, torch_hub_cache


@dataclass(frozen=True)
class Backbone:
    """One registry entry. `output`: 'layers' or 'embed'; `grid`: conv feature grids (only
    l2 and cos exist for them); `cos_skip_nonfinite`: the published clip_rn50 quirk."""
    name: str
    arch: str
    family: Family
    weights: Weights
    output: str
    cuda_published: str           # dtype of the published GPU runs: 'fp16' or 'fp32'
    shape: str                    # compared features per 224-px window, for the listing
    published: bool = True
    grid: bool = False
    cos_skip_nonfinite: bool = False
    norm: tuple = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # --model-norm mean/std
    expect: dict = field(default_factory=dict)   # key → shape checks on the weights file

    @property
    def distances(self):
        """Every registered distance that applies to this backbone's kind of features."""
        return applicable(self.features)

    @property
    def features(self):
        """'embed', 'grids' (conv feature grids [N, L, C, H, W]) or 'tokens' (token stacks): distances.FEATURE_KINDS."""
        return "embed" if self.output == "embed" else "grids" if self.grid else "tokens"


def with_embed(layers, shape):
    """A 'layers' entry and its `embed_` twin: same model and weights, the compared output is
    the model's embedding of `shape` (only cos applies to it)."""
    return layers, replace(layers, name="embed_" + layers.name, output="embed", shape=shape, grid=False,
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
                         output="layers", cuda_published="fp16", shape=RN50_MAPS, grid=True,
                         cos_skip_nonfinite=True, expect=KEYS_CLIP_RN50), shape="1x1x1024"),
    *with_embed(Backbone(name="openclip_vitb32_laion", arch="OpenCLIP ViT-B-32 LAION-2B", family=OPENCLIP_VIT_B32,
                         weights=WEIGHTS_OPENCLIP_B32, output="layers", cuda_published="fp32", shape="12x50x768",
                         expect=KEYS_CLIP_VIT_B32), shape="1x1x512"),
    *with_embed(Backbone(name="openclip_vitb32_laion_tecoa4", arch="OpenCLIP ViT-B-32, TeCoA4 robust",
                         family=OPENCLIP_VIT_B32, weights=WEIGHTS_OPENCLIP_B32_TECOA4, output="layers",
                         cuda_published="fp32", shape="12x50x768", expect=KEYS_CLIP_VIT_B32), shape="1x1x512"),
    *with_embed(Backbone(name="openclip_convnext_base", arch="OpenCLIP ConvNeXt-Base(w) LAION-2B",
                         family=OPENCLIP_CONVNEXT, weights=WEIGHTS_OPENCLIP_CONVNEXT, output="layers",
                         cuda_published="fp32", shape=CONVNEXT_MAPS, grid=True, expect=KEYS_OPENCLIP_CONVNEXT),
                shape="1x1x640"),
    *with_embed(Backbone(name="openclip_convnext_laion_tecoa4", arch="OpenCLIP ConvNeXt-Base(w), TeCoA4 robust",
                         family=OPENCLIP_CONVNEXT, weights=WEIGHTS_OPENCLIP_CONVNEXT_TECOA4, output="layers",
                         cuda_published="fp32", shape=CONVNEXT_MAPS, grid=True, expect=KEYS_OPENCLIP_CONVNEXT),
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
