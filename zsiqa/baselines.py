"""The classical baselines restoration papers report beside a new metric: PSNR, SSIM, MS-SSIM
(no weights) and LPIPS (AlexNet), computed by torchmetrics' image metrics (the optional extra
`pip install zsiqa[torchmetrics]`) on the whole image in [0, 1] RGB, the images decoded exactly
as for the backbones (loading.load_chunks: 8-bit and deep grey rules, -r, robustness transforms).

    psnr        10·log10(1 / MSE) per image, the MSE over every pixel and channel (data_range 1)
    ssim        torchmetrics' SSIM with its defaults: gaussian window 11, sigma 1.5, k1 0.01, k2 0.03
    ms_ssim     torchmetrics' MS-SSIM with its defaults: 5 scales, the same window (sides ≥ 161 px)
    lpips_alex  torchmetrics' LPIPS, AlexNet: its bundled linear layers and torchvision's ImageNet
                AlexNet weights (found as a backbone's are: $ZSIQA_WEIGHTS_DIR, torch.hub's cache,
                then a download; refused offline in one line)

`BaselineScorer` scores pairs from disk as `Scorer.score_files` does (one row per pair, in its
`distances` order), batching pairs of one size.
"""
import math
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from zsiqa.errors import UserError
from zsiqa.images import to_float
from zsiqa.loading import load_chunks
from zsiqa.models import resolve_device
from zsiqa.options import MAX_WORKERS, int_option
from zsiqa.weights import Weights, read_state_dict, resolve_weights, torch_hub_cache
from zsiqa.weights import identity as weights_identity

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
ALEXNET_URL = f"https://download.pytorch.org/models/{ALEXNET_FILE}"
# torchmetrics' LPIPS takes AlexNet's features in five slices: features.<i> → net.slice<k>.<i>
ALEXNET_SLICES = ((1, range(0, 2)), (2, range(2, 5)), (3, range(5, 8)), (4, range(8, 10)), (5, range(10, 12)))
ELEMENTS_PER_BATCH = 1 << 23  # float64 values of one side of a batch (about 64 MiB): SSIM's intermediates stay small


class Baseline(NamedTuple):
    """A baseline: its name (-m NAME, --baselines NAME), whether higher means more alike, what it is."""
    name: str
    higher_better: bool
    about: str


BASELINES = {b.name: b for b in (
    Baseline("psnr", True, "PSNR, 10·log10(1/MSE) over all pixels and channels in [0, 1]"),
    Baseline("ssim", True, "SSIM, torchmetrics' defaults (gaussian 11, sigma 1.5), data range 1"),
    Baseline("ms_ssim", True, "MS-SSIM, torchmetrics' defaults (5 scales), data range 1"),
    Baseline("lpips_alex", False, "LPIPS with AlexNet (torchmetrics; ImageNet AlexNet weights)"),
)}
INSTALL = "pip install zsiqa[torchmetrics]"


class AlexNetWeights(NamedTuple):
    """What `resolve_weights` looks for: torchvision's ImageNet AlexNet, as LPIPS uses it."""
    name: str = "lpips_alex"
    weights: Weights = Weights(ALEXNET_FILE, ALEXNET_URL, torch_hub_cache(ALEXNET_FILE),
                               f"{ALEXNET_URL} (torchvision's AlexNet ImageNet weights)", "7be5be79")


def is_baseline(name):
    """Whether `name` (a -m value) is a baseline rather than a backbone."""
    return name in BASELINES


def parse_baselines(spec):
    """A comma list of baseline names (--baselines psnr,ssim) → tuple, each known and given once.

    Args:
        spec: the flag's text, or None.

    Returns:
        the names in the order given (() for None). UserError naming the known ones otherwise.
    """
    if spec is None:
        return ()
    names = [x.strip() for x in spec.split(",") if x.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise UserError(f"unknown baseline {unknown[0] if unknown else spec!r}; --baselines takes a comma list of "
                        f"{', '.join(BASELINES)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"--baselines lists {', '.join(twice)} more than once")
    return tuple(names)


def require_torchmetrics():
    """torchmetrics' image metrics (`torchmetrics.functional.image`), or UserError in one line
    naming the extra to install."""
    try:
        import torchmetrics.functional.image as image_metrics
    except ImportError:
        raise UserError(f"the baselines (psnr, ssim, ms_ssim, lpips_alex) are computed by torchmetrics, which is not "
                        f"installed: {INSTALL}") from None
    return image_metrics


def lpips_net(weights=None, device="cpu"):
    """torchmetrics' LPIPS module (AlexNet, its bundled linear layers) with the ImageNet AlexNet
    weights found as a backbone's are (`weights`: an explicit file). Returns (module, weights path);
    UserError in one line when the file is not found (offline, or the download failed)."""
    require_torchmetrics()
    from torchmetrics.functional.image.lpips import _NoTrainLpips  # torchmetrics' own LPIPS, weights given by us

    path = resolve_weights(AlexNetWeights(), weights)
    sd = read_state_dict(path)
    features = {}
    for k, indices in ALEXNET_SLICES:
        for i in indices:
            features.update({f"net.slice{k}.{i}.{p}": sd[f"features.{i}.{p}"] for p in ("weight", "bias")
                             if f"features.{i}.{p}" in sd})
    if len(features) != 10:
        raise UserError(f"weights file {path} is not torchvision's AlexNet (features.0/3/6/8/10 weights and biases)")
    net = _NoTrainLpips(net="alex", pretrained=True, pnet_rand=True)  # linear layers loaded; AlexNet's next
    missing = [k for k in net.state_dict() if k.startswith("net.") and k not in features]
    if missing:
        raise UserError(f"weights file {path} does not fit LPIPS' AlexNet (lacks {missing[0]})")
    net.load_state_dict(features, strict=False)
    return net.eval().to(device), path


class BaselineScorer:
    """Baselines (BASELINES names) on a device, scoring pairs read from disk as a Scorer does.

    Args:
        names: the baselines, in the order of each row's scores.
        device: auto|cpu|cuda|cuda:N. resize: optional N ≥ 224 (as -r). batch_size: pairs per batch
            at most (default 64 on a GPU, 16 on a CPU; fewer for large images). workers: decoding
            processes. weights: LPIPS' AlexNet file (else found as docs/weights.md says).
    """

    blocks: Tuple[int, ...] = ()  # no per-layer scores
    layer_distances: Tuple[str, ...] = ()
    precision = "fp64"  # psnr, ssim, ms_ssim in float64 (no TF32 on a GPU); lpips_alex in float32

    def __init__(self, names: Sequence[str], device: Any = "auto", resize: Optional[int] = None,
                 batch_size: Optional[int] = None, workers: Optional[int] = None, weights: Optional[str] = None):
        self.metrics = require_torchmetrics()
        self.distances = tuple(names)
        self.device = resolve_device(device)
        gpu = self.device.type == "cuda"
        self.resize = resize
        self.batch_size = int_option(batch_size, "batch size", 1, 64 if gpu else 16)
        self.workers = int_option(workers, "workers", 0, 8 if gpu else 0, below=MAX_WORKERS + 1,
                                  below_text=f"{MAX_WORKERS + 1}")
        self.lpips, self.lpips_weights = (lpips_net(weights, self.device) if "lpips_alex" in self.distances
                                          else (None, None))

    def settings_of(self, name):
        """What baseline `name`'s scores depend on, as results records hold it (`Scorer.settings`'s fields)."""
        weights = weights_identity(self.lpips_weights) if name == "lpips_alex" else "none"
        return {"model": name, "precision": "fp32" if name == "lpips_alex" else self.precision,
                "device": self.device.type, "model_norm": False, "resize": self.resize, "swd_seed": 0,
                "weights": weights}

    def compile_if_it_pays(self, jobs):
        """Nothing to compile (the eval command asks every scorer)."""

    def score_batch(self, dis, ref):
        """Scores of stacked pairs (float [n, 3, H, W] in [0, 1], on the device) → float64 numpy [n, len(distances)]."""
        m, out = self.metrics, []
        d64, r64 = dis.double(), ref.double()
        for name in self.distances:
            if name == "psnr":
                s = m.peak_signal_noise_ratio(d64, r64, data_range=1.0, reduction="none", dim=(1, 2, 3))
            elif name == "ssim":
                s = m.structural_similarity_index_measure(d64, r64, data_range=1.0, reduction="none")
            elif name == "ms_ssim":
                s = m.multiscale_structural_similarity_index_measure(d64, r64, data_range=1.0, reduction="none")
            else:
                with torch.no_grad():
                    s = self.lpips(dis.float(), ref.float(), normalize=True)
            out.append(s.detach().reshape(len(dis)).double().cpu().numpy())
        return np.stack(out, axis=1)

    def score_files(self, pairs, variants=None, jobs=None, on_error=None):
        """Score (dis_path, ref_path) pairs from disk (`Scorer.score_files`' arguments, no per_layer).

        Yields:
            ((variant index, pair index), float64 numpy row in `distances` order), a batch at a time.
        """
        variants, pairs = list(variants or (None,)), [(ref, dis) for dis, ref in pairs]
        jobs = [(v, i) for v in range(len(variants)) for i in range(len(pairs))] if jobs is None else list(jobs)
        chunks = load_chunks(pairs, variants, self.resize, jobs, self.workers, self.device.type == "cuda")
        refs, pending = {}, {}
        for chunk in chunks:
            for job, message in chunk.failed:
                if on_error is None:
                    raise UserError(message)
                on_error(job, message)
            if chunk.ref is not None:
                refs[chunk.ref_key] = chunk.ref
            ref = refs.pop(chunk.ref_key, None) if chunk.last else refs.get(chunk.ref_key)
            for start, run in chunk.dis_runs():
                key = tuple(run.shape[1:])
                batch = pending.setdefault(key, [])
                batch.append((ref, run, chunk.jobs[start:start + len(run)]))
                if sum(len(r) for _, r, _ in batch) >= self.pairs_per_batch(key):
                    yield from self.flush(pending.pop(key))
        for batch in pending.values():
            yield from self.flush(batch)

    def pairs_per_batch(self, shape):
        """Pairs of images of `shape` (3, H, W) per batch: batch_size at most, fewer for large images."""
        return max(1, min(self.batch_size, ELEMENTS_PER_BATCH // math.prod(shape)))

    def flush(self, batch):
        """Score a batch [(reference, distorted stack, jobs)]: yields (job, row) per pair."""
        dis = torch.cat([to_float(run.to(self.device, non_blocking=True)) for _, run, _ in batch])
        ref = torch.cat([to_float(r.to(self.device, non_blocking=True))[None].expand(len(run), -1, -1, -1)
                         for r, run, _ in batch])
        rows = self.score_batch(dis, ref)
        yield from zip([job for _, _, jobs in batch for job in jobs], rows)
