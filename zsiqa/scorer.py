"""The Python API: `Scorer`, a backbone with its distances on a device, built once.

    from zsiqa import Scorer
    metric = Scorer("dinov1", "wsd")               # weights found as docs/weights.md says
    metric("dis.png", "ref.png")                   # tensor([score]): the distorted image first
    metric.score("dis.png", "ref.png")             # {"wsd": tensor([score])}: always a dict

The Scorer is a torch module (`.to()`, `.cuda()`, `.half()`, `.eval()`; it may sit inside a
user's module) whose frozen backbone stays out of `state_dict()` and `parameters()`. Options
are resolved and checked once, in its core (core.py); the batched engine (engine.py) does the
work from a one-way `engine.Spec`: windows of many pairs share one forward pass, each reference
is encoded once, every distance comes from the same feature pass. Per-pair score = mean over
its windows of the per-window distance.
"""
import collections
import os
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from zsiqa import engine, maps
from zsiqa.core import PRECISION_OF, DistanceSpec, FrozenBackbone, MetricCore, grey_to_rgb, range_option, to_unit_range
from zsiqa.errors import ScoreWarning, UserError
from zsiqa.images import as_list, image_tensor
from zsiqa.loading import Chunk, load_chunks
from zsiqa.models import Backbone, FeatureExtractor
from zsiqa.options import MAX_WORKERS, bool_option, int_option, is_integer
from zsiqa.weights import identity as weights_identity

# H200 bench (dinov1 bf16, two runs): ~18 s of compilation; eager 1,184–1,218 vs compiled 1,287–1,343
# pairs/s (4–13 %), so it pays from about 180,000–400,000 PIPAL-size pairs (a PIPAL robustness sweep)
COMPILE_MIN_JOBS = 200_000
SCORE_DTYPES = (torch.float32, torch.float64)

Image = Any  # a path, a PIL image, a numpy array or a tensor [C, H, W] / [N, C, H, W]
Images = Union[Image, Sequence[Image]]
Scores = Dict[str, torch.Tensor]


def _dtype_option(dtype: Union[torch.dtype, str]) -> torch.dtype:
    """The scores' dtype: torch.float32 or torch.float64 (or their names)."""
    named = {str(d).split(".")[-1]: d for d in SCORE_DTYPES}
    if isinstance(dtype, str) and dtype in named:
        return named[dtype]
    if dtype not in SCORE_DTYPES:
        raise UserError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


class Scorer(FrozenBackbone):
    """A backbone, its distances and a device, built once; score pairs by calling it.

    Args:
        model: a registry name (see `zsiqa.BACKBONES`).
        distances: one name (default wsd, as the command line), a comma list, a list, or 'all'.
        device: auto|cpu|cuda|cuda:N (`.to()` moves it later). precision: published|fp32|fp16|bf16
            (or cast the module: `.half()`, `.bfloat16()`, `.float()`, `.double()`).
        weights: a checkpoint path (else $ZSIQA_WEIGHTS_DIR, the library caches, then download).
        batch_size: windows per forward pass. workers: image-decoding processes for files.
        resize: optional N ≥ 224 for the published square resize.
        model_norm: feed the backbone its own mean/std-normalised input (not the protocol).
        cache_mb: device memory for cached reference features; a reference larger than that is
            compared block by block (default 4096 on a GPU, 96 on a CPU: LIVE-size references stay cached).
        compile: compile the backbone (torch.compile; pays off on large GPU runs, see docs/speed.md).
        layers: compare only these blocks ('1-6,9', 1-based, or a list of ints; see blocks.py):
            l2/cos become the sum of those blocks' per-layer scores, skld/jsd/wsd/swd the same
            formulas on the sub-stack (outside the published protocol unless all are kept).
        input_range: (low, high) of float image tensors, mapped linearly to [0, 1] (e.g. (-1, 1));
            files, PIL images, arrays and integer tensors are read as always.
        dtype: the scores' dtype, torch.float32 (default) or torch.float64 (the command line's; or
            'float32', 'float64').

    Return rule: `score()` always returns {distance: tensor [N]}; calling the scorer returns
    the same dict, or the one tensor when it was built with a single distance name."""

    def __init__(self, model: str = "dinov1", distances: DistanceSpec = "wsd",
                 device: Union[str, int, torch.device] = "auto", precision: str = "published",
                 weights: Optional[str] = None, batch_size: Optional[int] = None, workers: Optional[int] = None,
                 resize: Optional[int] = None, swd_seed: int = 0,
                 model_norm: bool = False, cache_mb: Optional[int] = None, layers: Any = None, compile: bool = False,
                 input_range: Tuple[float, float] = (0, 1), dtype: Union[torch.dtype, str] = torch.float32) -> None:
        bool_option(compile, "compile")
        low_high, score_dtype = range_option(input_range), _dtype_option(dtype)
        super().__init__(MetricCore(model, distances, weights=weights, device=device, precision=precision,
                                    model_norm=model_norm, layers=layers, swd_seed=swd_seed, resize=resize))
        self.single = isinstance(distances, str) and distances != "all" and "," not in distances
        gpu = self.device.type == "cuda"
        self.batch_size = int_option(batch_size, "batch size", 1, 256 if gpu else 16)
        self.workers = int_option(workers, "workers", 0, min(8, os.cpu_count() or 1) if gpu else 0,
                                  below=MAX_WORKERS + 1, below_text=f"{MAX_WORKERS + 1}")
        self.cache_mb = int_option(cache_mb, "cache_mb", 1, 4096 if gpu else 96)
        self.input_range, self.dtype = low_high, score_dtype
        self.fixed_batch = False  # a compiled backbone gets fixed-shape batches (short ones padded)
        self.precision, self.model_norm = precision, model_norm
        self.weights_id: Optional[dict] = None
        if compile:
            self.compile_backbone()

    # ------------------------------------------------------------ the setup, from the core
    @property
    def backbone(self) -> Backbone:
        """The backbone's registry entry (models.Backbone)."""
        return self.core.backbone

    @property
    def distances(self) -> Tuple[str, ...]:
        """The distances scored, in the order asked for."""
        return self.core.distances

    @property
    def extractor(self) -> FeatureExtractor:
        """The loaded backbone on its device (outside the module tree)."""
        return self.core.extractor

    @property
    def device(self) -> torch.device:
        """Where the backbone runs (follows `.to()`)."""
        return self.core.device

    @property
    def distance_batch(self) -> int:
        """Windows compared at a time (core.py)."""
        return self.core.distance_batch

    @property
    def overlap(self) -> bool:
        """Distances on a CUDA side stream (ZSIQA_OVERLAP=0: off)."""
        return self.device.type == "cuda" and os.environ.get("ZSIQA_OVERLAP", "1") != "0"

    @property
    def group_sizes(self) -> Tuple[int, ...]:
        """Blocks per feature group of the backbone (one group for transformers)."""
        return self.core.group_sizes

    @property
    def blocks(self) -> Tuple[int, ...]:
        """The 1-based numbers of the blocks compared (all of them by default)."""
        return self.core.blocks

    @property
    def layer_distances(self) -> Tuple[str, ...]:
        """The requested distances that are sums over layers (the rows of `layer_scores`)."""
        return self.core.layer_distances

    @property
    def cached_windows(self) -> int:
        """How many reference windows' features fit the cache budget (at least one)."""
        return max(1, self.cache_mb * 2**20 // self.extractor.probe()[1])

    def cast(self, dtype: torch.dtype) -> None:
        """After `.half()`, `.bfloat16()`, `.float()`, `.double()` or `.to(dtype)`: the backbone runs
        in that dtype (no autocast), scores come back in float64 after `.double()`, else float32."""
        self.extractor.autocast = None
        self.extractor.strict_fp32 = dtype == torch.float32
        self.extractor.compute_dtype = dtype  # what the NaN/inf note names
        self.precision = PRECISION_OF.get(dtype, str(dtype))
        self.dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def compile_backbone(self) -> None:
        """Compile the backbone (torch.compile) and give it fixed-shape batches from now on;
        `compile=True` does this at construction, the eval command's --compile auto once it knows the run's size."""
        self.extractor.probe()  # measured before compiling: a batch of one would be compiled for too
        self.extractor.compile()
        self.fixed_batch = True

    @property
    def settings(self) -> dict:
        """What the scores depend on, as results records hold it (the weights file's sha256,
        computed on first use: hashing a backbone's file takes a noticeable part of a second)."""
        if self.weights_id is None:
            self.weights_id = weights_identity(self.extractor.weights_path)
        settings = {"model": self.backbone.name, "precision": self.precision, "device": self.device.type,
                    "model_norm": self.model_norm, "resize": self.resize, "swd_seed": self.swd_seed,
                    "weights": self.weights_id}
        if self.block_index is not None:
            settings["layers"] = ",".join(str(b) for b in self.blocks)
        return settings

    def compile_if_it_pays(self, jobs: int) -> None:
        """Compile (`compile_backbone`) on CUDA when at least COMPILE_MIN_JOBS pairs are to be
        scored, where the compilation's fixed cost is paid back (the --compile auto rule)."""
        if self.device.type == "cuda" and not self.fixed_batch and jobs >= COMPILE_MIN_JOBS:
            self.compile_backbone()

    # ------------------------------------------------------------ the one-call API
    def __call__(self, dis: Images, ref: Images) -> Union[torch.Tensor, Scores]:
        """Score pairs, the distorted image first: `forward` through the module's call (hooks run)."""
        return super().__call__(dis, ref)

    def forward(self, dis: Images, ref: Images) -> Union[torch.Tensor, Scores]:
        """Score pairs (see `score`): the one tensor [N] when built with one distance name,
        else {distance: tensor [N]}."""
        result = self.score(dis, ref)
        return result[self.distances[0]] if self.single else result

    def score(self, dis: Images, ref: Images) -> Scores:
        """Score pairs, the distorted image first (as pyiqa, piq and the loss take them).

        Args:
            dis, ref: the distorted images and their references, each a path, a PIL image, a
                numpy HWC uint8 array, a tensor [C, H, W] or [N, C, H, W] with C = 3 or 1 (grey,
                read as a grey file is; float in `input_range`, uint8 or uint16), or a list of those.

        Returns:
            {distance: tensor [N]}, float32 (float64 with dtype=torch.float64 or after `.double()`).
        """
        return self._score(dis, ref, per_layer=False)

    def layer_scores(self, dis: Images, ref: Images) -> Scores:
        """Per-block scores of the distances that are sums over layers (l2, cos).

        Args:
            dis, ref: as for `score`.

        Returns:
            {distance: tensor [N, L]} in the scores' dtype, L = len(self.blocks) in forward order
            (a conv net's groups one after another); the sum over L is the score to float32 rounding.
        """
        return self._score(dis, ref, per_layer=True)

    def _score(self, dis: Images, ref: Images, per_layer: bool) -> Scores:
        dises, refs = as_list(dis), as_list(ref)
        if len(refs) != len(dises):
            raise UserError(f"{len(dises)} distorted images but {len(refs)} references")
        keys = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else id(r) for r in refs]
        groups: Dict[Any, List[int]] = collections.OrderedDict()
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        chunks = (Chunk(k, self.image_tensor(refs[idx[0]]), [self.image_tensor(dises[i]) for i in idx], idx)
                  for k, idx in groups.items())
        names = self.layer_distances if per_layer else self.distances
        shape = (len(refs), len(names)) + ((len(self.blocks),) if per_layer else ())
        out, seen = np.zeros(shape), np.zeros(len(refs), bool)
        for i, *row in self.score_chunks(chunks, per_layer=per_layer):
            out[i], seen[i] = row[-1], True
        if not seen.all():  # every pair must come back: never a silent placeholder
            raise RuntimeError(f"internal error: {int((~seen).sum())} pair(s) were not scored")
        bad = (~np.isfinite(out)).reshape(len(refs), len(names), -1).any(axis=2).sum(axis=0)
        if bad.any():
            warnings.warn(self.nonfinite_note(dict(zip(names, bad.tolist())), len(refs)), ScoreWarning, stacklevel=3)
        return {d: torch.from_numpy(out[:, j]).to(self.dtype) for j, d in enumerate(names)}

    def nonfinite_note(self, counts, total):
        """The line that says which distances scored NaN or inf and the likely cause.

        Args:
            counts: {distance: how many pairs it scored NaN or inf} (zeros are left out).
            total: the pairs scored.

        Returns:
            One line, e.g. "l2 scored NaN or inf for 1 of 1 pair(s): …; try --precision fp32".
        """
        which = ", ".join(f"{d} scored NaN or inf for {n} of {total} pair(s)" for d, n in counts.items() if n)
        dtype = str(self.extractor.compute_dtype).removeprefix("torch.")
        if dtype != "float32":
            return (f"{which}: the backbone's features overflowed in {dtype} (precision {self.precision}); try "
                    "--precision fp32 (precision='fp32' in the API)")
        return f"{which}: the backbone's features are not finite even in float32 (weights or images of extreme scale?)"

    def image_tensor(self, x: Image) -> torch.Tensor:
        """One image as this scorer reads it → [3, H, W]: a one-channel tensor as grey (replicated
        to RGB), a float tensor mapped from `input_range`, then `images.image_tensor` with its resize."""
        if torch.is_tensor(x) and x.dim() == 3 and x.layout == torch.strided and x.device.type != "meta":
            x = grey_to_rgb(x, 0).contiguous()  # the message of anything else is images.image_tensor's
            if x.is_floating_point():
                x = to_unit_range(x, *self.input_range)
        return image_tensor(x, self.resize)

    def maps(self, dis: Image, ref: Image) -> Dict[str, np.ndarray]:
        """Where a pair differs: per distance a map at the image's size (see maps.py).

        Args:
            dis, ref: one image each (path, PIL image, numpy array or tensor [3, H, W]).

        Returns:
            {distance: float32 numpy array [H, W]}: l2/cos per patch token (or conv map
            position), other distances per window; overlapping windows averaged.
        """
        return maps.image_maps(self.core, self.batch_size, self.image_tensor, dis, ref)

    def window_maps(self, dis: Image, ref: Image) -> Scores:
        """Each window's 224×224 map: {distance: tensor [K, 224, 224]}, rows-outer window
        order; a window's mean is its score as the engine computes it (see maps.py)."""
        return maps.window_maps(self.core, self.batch_size, self.image_tensor, dis, ref)

    def score_files(self, pairs: Sequence[Tuple[Any, Any]], variants: Optional[Sequence[Optional[Callable]]] = None,
                    jobs: Optional[Iterable[Tuple[int, int]]] = None, on_error: Optional[Callable] = None,
                    per_layer: bool = False) -> Iterator[tuple]:
        """Score (dis_path, ref_path) pairs read from disk (decoded in `workers` processes).

        Args:
            pairs: list of (dis_path, ref_path), the distorted image first as everywhere in the API.
            variants: None, or a list of None or transforms (ref_pil, dis_pil) → (ref, dis)
                (e.g. robustness shifts); every job names one.
            jobs: the (variant index, pair index) jobs to score; default every pair under
                every variant (variant 0 alone without variants).
            on_error: None to raise UserError when a file cannot be decoded, or a function
                (job, message) called for each pair that cannot be, which is then skipped.
            per_layer: also yield each pair's per-block scores, from the same pass.

        Yields:
            ((variant index, pair index), np.array of float64 scores in self.distances order), as
            pairs finish, grouped by reference; with per_layer a third item, np.array
            [len(self.layer_distances), len(self.blocks)] (rows: distances, columns: blocks).
            Scores that are NaN or inf are given as they are, and once every pair has been
            given, one ScoreWarning (zsiqa.errors) counts them per distance and names the likely
            cause (`score` warns in the same way).
        """
        variants, pairs = list(variants or (None,)), list(pairs)
        _check_pairs(pairs)
        pairs = [(ref, dis) for dis, ref in pairs]  # the loader groups by reference
        jobs = [(v, i) for v in range(len(variants)) for i in range(len(pairs))] if jobs is None else list(jobs)
        _check_jobs(jobs, len(variants), len(pairs))
        chunks = load_chunks(pairs, variants, self.resize, jobs, self.workers, self.device.type == "cuda")
        counts, scored = np.zeros(len(self.distances), dtype=np.int64), 0
        for item in self.score_chunks(_report_failures(chunks, on_error), per_layer=per_layer):
            counts += ~np.isfinite(item[1])
            scored += 1
            yield item
        if counts.any():  # once, when every pair has been given: ScoreWarning
            warnings.warn(self.nonfinite_note(dict(zip(self.distances, counts.tolist())), scored), ScoreWarning,
                          stacklevel=2)

    # ------------------------------------------------------------ what the engine is given
    def encode(self, windows_batch: torch.Tensor) -> list:
        """Windows [B, 3, 224, 224] float in [0, 1] → list of feature groups (one stack
        [B, L, T, D] for token backbones, one per map shape for conv nets)."""
        return self.core.encode(windows_batch)

    def window_scores(self, f_dis: list, ref_of: Callable[[int, int], list], per_layer: bool = False) -> torch.Tensor:
        """Per-window scores [B, n_distances] (float64), `MetricCore.window_scores`: ref_of(a, b)
        gives the reference groups of windows a:b; per_layer: the per-block terms of
        `layer_distances` follow, [B, n_distances + n_layer_distances · L]."""
        return self.core.window_scores(f_dis, ref_of, per_layer)

    def engine_spec(self, per_layer: bool = False) -> engine.Spec:
        """What the engine needs for one run, handed over once (it never calls back)."""
        return engine.Spec(device=self.device, batch_size=self.batch_size, fixed_batch=self.fixed_batch,
                           overlap=self.overlap, resized=bool(self.resize), cached_windows=self.cached_windows,
                           columns=len(self.distances),
                           layer_columns=len(self.layer_distances) * len(self.blocks) if per_layer else 0,
                           encode=self.encode, window_scores=self.window_scores, per_layer=per_layer)

    def score_chunks(self, chunks: Iterable[Chunk], per_layer: bool = False) -> Iterator[tuple]:
        """The batched engine over Chunks (engine.run): yields (job, scores) as pairs finish,
        or (job, scores, per-block scores [n_layer_distances, L]) with per_layer."""
        if per_layer and not self.layer_distances:
            raise UserError(f"none of {', '.join(self.distances)} is a sum over layers "
                            f"(per-layer scores exist for l2, cos)")
        return engine.run(self.engine_spec(per_layer), chunks, len(self.layer_distances))


def _report_failures(chunks, on_error):
    """Pass chunks on; their unreadable pairs go to on_error, or raise without one."""
    for chunk in chunks:
        for job, message in chunk.failed:
            if on_error is None:
                raise UserError(message)
            on_error(job, message)
        yield chunk


def _check_pairs(pairs):
    """score_files takes a list of (dis_path, ref_path): anything else is one clear error."""
    for k, pair in enumerate(pairs):  # tuples, lists, numpy rows (a DataFrame's .values) of two paths
        if isinstance(pair, (str, bytes, os.PathLike)) or not hasattr(pair, "__len__") or len(pair) != 2 or \
                not all(isinstance(p, (str, os.PathLike)) for p in pair):
            raise UserError(f"score_files takes (dis_path, ref_path) pairs; item {k} is {pair!r}")


def _check_jobs(jobs, n_variants, n_pairs):
    """Every job is (variant index, pair index) within range."""
    for job in jobs:
        ok = isinstance(job, (tuple, list)) and len(job) == 2 and all(is_integer(x) for x in job)
        if not ok or not (0 <= job[0] < n_variants and 0 <= job[1] < n_pairs):
            raise UserError(f"job {job!r} is not a (variant, pair) index within {n_variants} variant(s) and "
                            f"{n_pairs} pair(s)")
