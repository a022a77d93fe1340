"""Backbones: one registry entry each; a batch of 224×224 windows [N, 3, 224, 224] in [0, 1]
becomes a feature stack [N, L, T, D] (PROTOCOL.md §3).

A backbone is data (`Backbone`): which family builds it from a state dict, which weights file
it reads and where that file comes from, which outputs are compared, which distances apply
and its published precision. Families hold the only architecture-specific code.
"""
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError

ALL_DISTANCES = ("l2", "cos", "skld", "jsd", "wsd", "swd")


# ---------------------------------------------------------------- weight files

@dataclass(frozen=True)
class Weights:
    """Where a backbone's weights come from. `file` is the official release's file name,
    looked for in $ZSIQA_WEIGHTS_DIR; `caches` are the places the upstream libraries keep it;
    `url` is the official download (sha256 prefix checked when known)."""
    file: str
    url: Optional[str]               # 'clip:NAME' = the URL the clip package lists for NAME
    caches: Callable[[], list]
    source: str                      # one line for humans: where to get the file
    sha256_prefix: Optional[str] = None

    def download_url(self):
        """(url, sha256 prefix); OpenAI's URLs carry the file's sha256 as their folder name."""
        if self.url and self.url.startswith("clip:"):
            import clip.clip
            url = clip.clip._MODELS[self.url[5:]]
            return url, url.split("/")[-2][:10]
        return self.url, self.sha256_prefix


def _clip_cache(file):
    return lambda: [os.path.join(os.path.expanduser("~/.cache/clip"), file)]


def _torch_hub_cache(file):
    return lambda: [os.path.join(torch.hub.get_dir(), "checkpoints", file)]


def _hf_cache(repo, file):
    """The Hugging Face hub cache (used by timm and transformers), read offline."""
    def paths():
        try:
            from huggingface_hub import try_to_load_from_cache
            hit = try_to_load_from_cache(repo, file)
        except Exception:  # hub library missing or cache unreadable: nothing cached there
            hit = None
        return [hit if isinstance(hit, str) else f"the Hugging Face hub cache ({repo}/{file})"]
    return paths


def _join(*caches):
    return lambda: [p for c in caches for p in c()]


def weight_candidates(w):
    """Every place looked at, in order: $ZSIQA_WEIGHTS_DIR, then the library caches."""
    places = []
    if os.environ.get("ZSIQA_WEIGHTS_DIR"):
        places.append(os.path.join(os.environ["ZSIQA_WEIGHTS_DIR"], w.file))
    return places + w.caches()


def _offline():
    return any(os.environ.get(v, "") not in ("", "0") for v in ("ZSIQA_OFFLINE", "HF_HUB_OFFLINE"))


def resolve_weights(backbone, explicit=None):
    """The weights file to use: the explicit path, else the first existing candidate, else
    a download into the first library cache. UserError naming every place looked at."""
    w = backbone.weights
    if explicit:
        if not os.path.isfile(explicit):
            raise UserError(f"weights file not found: {explicit}")
        return explicit
    places = weight_candidates(w)
    for p in places:
        if os.path.isfile(p):
            return p
    why = "offline (ZSIQA_OFFLINE/HF_HUB_OFFLINE set)" if _offline() or not w.url else None
    if why is None:
        target = w.caches()[0]
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            url, sha = w.download_url()
            torch.hub.download_url_to_file(url, target, hash_prefix=sha, progress=True)
            return target
        except Exception as e:  # any network or disk failure ends in the one-line message
            why = f"download failed ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    raise UserError(f"weights for {backbone.name} not found: need {w.file} from {w.source}; "
                    f"looked in {', '.join(places) or '(no places)'}; {why}. "
                    f"Pass --weights PATH or put the file in $ZSIQA_WEIGHTS_DIR")


def _is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n for n in z.namelist())


def read_state_dict(path):
    """Read a checkpoint in any official format: TorchScript archive (OpenAI CLIP), pickled
    state dict (.pt/.pth/.bin), safetensors. Training checkpoints are unwrapped."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        if _is_torchscript(path):  # OpenAI's CLIP releases are TorchScript archives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return {k: v for k, v in torch.jit.load(path, map_location="cpu").state_dict().items()}
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable file ends in the same one-line message
        raise UserError(f"cannot read weights file {path}: not a TorchScript archive, PyTorch "
                        f"state dict or safetensors file (corrupt or truncated?)") from None
    for key in ("state_dict", "model", "teacher"):  # training checkpoints wrap the weights
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise UserError(f"weights file {path} holds no state dict of tensors")
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _check_keys(sd, expect, backbone, path):
    """Fail clearly when a file is for another architecture (shape or key mismatch)."""
    for key, shape in expect.items():
        if key not in sd or tuple(sd[key].shape) != tuple(shape):
            got = tuple(sd[key].shape) if key in sd else "missing"
            raise UserError(f"weights file {path} does not fit {backbone.name} ({backbone.arch}): "
                            f"{key} is {got}, expected {tuple(shape)}")


def _load_strict(module, sd, backbone, path):
    """load_state_dict, with a mismatch summarised in one line (counts and first keys)."""
    misfit = f"weights file {path} does not fit {backbone.name} ({backbone.arch})"
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        detail = next((l.strip() for l in str(e).splitlines()[1:] if l.strip()), "shape mismatch")
        raise UserError(f"{misfit}: {detail[:200]}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{misfit}: {len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:2]}), "
                        f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:2]})")


# ---------------------------------------------------------------- families

class Family:
    """How one family of architectures is built from a state dict and run. `layers` returns
    the stacked block outputs [N, L, T, D]; `embed` the compared embedding [N, 1, T, D]."""

    def build(self, sd, backbone, path, half):
        raise NotImplementedError

    def layers(self, model, x):
        raise NotImplementedError

    def embed(self, model, x):
        raise NotImplementedError


class ClipViT(Family):
    """OpenAI CLIP vision transformer from the `clip` package (sequence-first blocks)."""

    def __init__(self, patch=32, width=768, layers=12, heads=12, output_dim=512):
        self.dims = (patch, width, layers, heads, output_dim)

    def build(self, sd, backbone, path, half):
        import clip.model
        if sd is None:  # random init (benchmarks): the same module the release builds
            patch, width, layers, heads, out = self.dims
            visual = clip.model.VisionTransformer(224, patch, width, layers, heads, out)
            if half:
                clip.model.convert_weights(visual)
            return visual
        _check_keys(sd, backbone.expect, backbone, path)
        try:
            model = clip.model.build_model(dict(sd))  # fp16 where CLIP's release is fp16
        except (KeyError, RuntimeError, ValueError) as e:
            raise UserError(f"weights file {path} does not fit {backbone.name} ({backbone.arch}): {str(e).splitlines()[0][:200]}") from None
        visual = model.visual
        return visual if half else visual.float()

    def _tokens(self, visual, x):
        x = visual.conv1(x.type(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x).permute(1, 0, 2)  # NLD → LND, as the clip package runs

    def layers(self, visual, x):
        x = self._tokens(visual, x)
        outs = []
        for block in visual.transformer.resblocks:
            x = block(x)
            outs.append(x)
        return torch.stack(outs).permute(2, 0, 1, 3)  # [L, T, N, D] → [N, L, T, D]

    def embed(self, visual, x):
        x = visual.transformer(self._tokens(visual, x)).permute(1, 0, 2)
        e = visual.ln_post(x[:, 0, :]) @ visual.proj
        return F.normalize(e.float(), dim=-1)[:, None, None, :]


class TimmViT(Family):
    """A timm VisionTransformer; block outputs with prefix tokens, before the final norm."""

    def __init__(self, arch, **kwargs):
        self.arch, self.kwargs = arch, kwargs

    def build(self, sd, backbone, path, half):
        import timm
        model = timm.create_model(self.arch, pretrained=False, num_classes=0, **self.kwargs)
        if sd is not None:
            _load_strict(model, sd, backbone, path)
        return model

    def _run(self, model, x):
        x = model.patch_embed(x)
        x = model._pos_embed(x)
        x = model.norm_pre(model.patch_drop(x))
        outs = []
        for block in model.blocks:
            x = block(x)
            outs.append(x)
        return outs

    def layers(self, model, x):
        return torch.stack(self._run(model, x), dim=1)

    def embed(self, model, x):
        return F.normalize(model.norm(self._run(model, x)[-1]).float(), dim=-1)[:, None]


# ---------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Backbone:
    """One registry entry. `output` is 'layers' (stacked block outputs) or 'embed'."""
    name: str
    arch: str
    family: Family
    weights: Weights
    output: str
    cuda_published: str           # dtype of the published GPU runs: 'fp16' or 'fp32'
    shape: tuple                  # feature shape per window (L, T, D)
    published: bool = True
    expect: dict = field(default_factory=dict)   # key → shape checks on the weights file

    @property
    def distances(self):
        return ("cos",) if self.output == "embed" else ALL_DISTANCES


_CLIP_B32 = Weights(
    "ViT-B-32.pt", "clip:ViT-B/32", _clip_cache("ViT-B-32.pt"),
    "OpenAI CLIP (the clip package downloads it as 'ViT-B/32')")

_DINO_B16 = Weights(
    "dino_vitbase16_pretrain.pth",
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    _join(_torch_hub_cache("dino_vitbase16_pretrain.pth"), _hf_cache("timm/vit_base_patch16_224.dino", "model.safetensors")),
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth")

_CLIP_B32_KEYS = {"visual.conv1.weight": (768, 3, 32, 32), "visual.proj": (768, 512),
                  "visual.positional_embedding": (50, 768)}
# The published DINO runs used the Hugging Face ViT, whose LayerNorm eps is 1e-12 (§3).
_DINO_FAMILY = TimmViT("vit_base_patch16_224", norm_layer=partial(nn.LayerNorm, eps=1e-12))

BACKBONES = {b.name: b for b in [
    Backbone("clip_vitb32", "OpenAI CLIP ViT-B/32", ClipViT(), _CLIP_B32, "layers", "fp16", (12, 50, 768), expect=_CLIP_B32_KEYS),
    Backbone("embed_clip_vitb32", "OpenAI CLIP ViT-B/32", ClipViT(), _CLIP_B32, "embed", "fp16", (1, 1, 512), expect=_CLIP_B32_KEYS),
    Backbone("dinov1", "DINO ViT-B/16", _DINO_FAMILY, _DINO_B16, "layers", "fp32", (12, 197, 768)),
    Backbone("embed_dinov1", "DINO ViT-B/16", _DINO_FAMILY, _DINO_B16, "embed", "fp32", (1, 197, 768)),
]}


def get_backbone(name):
    if name not in BACKBONES:
        raise UserError(f"unknown model '{name}'; known: {', '.join(BACKBONES)}")
    return BACKBONES[name]


# ---------------------------------------------------------------- loaded extractor

PRECISIONS = ("published", "fp32", "fp16", "bf16")


def resolve_device(device="auto"):
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device '{device}'; use auto, cpu or cuda") from None


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

    def __init__(self, backbone, weights=None, device="auto", precision="published"):
        super().__init__()
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
        self.backbone = backbone
        self.device = resolve_device(device)
        on_gpu = self.device.type == "cuda"
        half = precision == "published" and on_gpu and backbone.cuda_published == "fp16"
        self.autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.strict_fp32 = precision == "fp32" and on_gpu  # 'published' keeps the library defaults, as the published runs did
        if weights == "random":  # seeded random init: for speed measurements only
            torch.manual_seed(0)
            self.weights_path, sd = "random", None
        else:
            self.weights_path = resolve_weights(backbone, weights)
            sd = read_state_dict(self.weights_path)
        self.model = backbone.family.build(sd, backbone, self.weights_path, half).eval().to(self.device)
        self.model.requires_grad_(False)
        self.forward_fn = getattr(backbone.family, backbone.output)

    @torch.inference_mode()
    def forward(self, x):
        x = x.to(self.device, non_blocking=True)
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.forward_fn(self.model, x)
        if self.strict_fp32:  # 'fp32' means fp32: no TF32 convolutions or matmuls on a GPU
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), _no_tf32_matmul():
                return self.forward_fn(self.model, x)
        return self.forward_fn(self.model, x)


def list_models():
    """One row per registered backbone (the `--list-models` table)."""
    return [{"name": b.name, "architecture": b.arch, "weights": b.weights.file,
             "source": b.weights.source, "protocol": "published" if b.published else "new",
             "distances": ",".join(b.distances), "published_precision_gpu": b.cuda_published,
             "feature_shape_224": "x".join(map(str, b.shape))} for b in BACKBONES.values()]


def format_model_table(rows):
    cols = ["name", "architecture", "protocol", "distances", "published_precision_gpu", "feature_shape_224", "weights"]
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
    return "\n".join(lines)
