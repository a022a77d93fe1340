"""The feature extractor: a loaded backbone on a device at a precision, run on a batch of
224×224 windows [N, 3, 224, 224] in [0, 1] to collect its intermediate features [N, L, T, D]
(docs/protocol.md: which blocks and tokens); `resolve_device` picks the device.
"""
import torch
import torch.nn as nn

from zsiqa.blocks import group_sizes
from zsiqa.errors import UserError
from zsiqa.weights import read_state_dict, resolve_weights

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
