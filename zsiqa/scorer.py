"""The Python API: `Scorer`, a backbone with its distances on a device, built once.

    from zsiqa import Scorer
    metric = Scorer("dinov1", "wsd")               # weights found as docs/weights.md says
    metric("dis.png", "ref.png")                   # tensor([score]): the distorted image first
    metric.score("dis.png", "ref.png")             # {"wsd": tensor([score])}: always a dict

Options are resolved and checked once, here; the batched engine (engine.py) does the work:
windows of many pairs share one forward pass, each reference is encoded once, every distance
comes from the same feature pass. Per-pair score = mean over its windows of the per-window
distance.
"""
import collections
import functools
import os
import warnings

import numpy as np
import torch

from zsiqa import engine, maps
from zsiqa.blocks import as_groups, backbone_layers
from zsiqa.distances import DISTANCES, compute, compute_layers, parse_distances
from zsiqa.errors import ScoreWarning, UserError
from zsiqa.images import as_list, prepare
from zsiqa.loading import Chunk, load_chunks
from zsiqa.models import FeatureExtractor, get_backbone
from zsiqa.options import MAX_WORKERS, bool_option, int_option, is_integer, resize_option, seed_option
from zsiqa.weights import identity as weights_identity

# H200 bench (dinov1 bf16, two runs): ~18 s of compilation; eager 1,184–1,218 vs compiled 1,287–1,343
# pairs/s (4–13 %), so it pays from about 180,000–400,000 PIPAL-size pairs (a PIPAL robustness sweep)
COMPILE_MIN_JOBS = 200_000


class Scorer:
    """A backbone, its distances and a device, built once; score pairs by calling it.

    Args:
        model: a registry name (see `zsiqa.BACKBONES`).
        distances: one name (default wsd, as the command line), a comma list, a list, or 'all'.
        device: auto|cpu|cuda|cuda:N. precision: published|fp32|fp16|bf16.
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

    Return rule: `score()` always returns {distance: tensor [N]}; calling the scorer returns
    the same dict, or the one tensor when it was built with a single distance name."""

    def __init__(self, model="dinov1", distances="wsd", device="auto", precision="published", weights=None,
                 batch_size=None, workers=None, resize=None, swd_seed=0, model_norm=False, cache_mb=None,
                 layers=None, compile=False):
        self.backbone = get_backbone(model)
        self.distances = parse_distances(distances, self.backbone)
        self.single = isinstance(distances, str) and distances != "all" and "," not in distances
        self.resize = resize_option(resize)
        self.swd_seed = seed_option(swd_seed)
        bool_option(model_norm, "model_norm")
        bool_option(compile, "compile")
        self.extractor = FeatureExtractor(self.backbone, weights, device, precision, model_norm)
        self.device = self.extractor.device
        gpu = self.device.type == "cuda"
        self.batch_size = int_option(batch_size, "batch size", 1, 256 if gpu else 16)
        self.workers = int_option(workers, "workers", 0, min(8, os.cpu_count() or 1) if gpu else 0,
                                  below=MAX_WORKERS + 1, below_text=f"{MAX_WORKERS + 1}")
        self.cache_mb = int_option(cache_mb, "cache_mb", 1, 4096 if gpu else 96)
        self.distance_batch = 128 if gpu else 2
        self.overlap = gpu and os.environ.get("ZSIQA_OVERLAP", "1") != "0"  # distances on a side stream
        self.layers = backbone_layers(layers, self.backbone, self.group_sizes)
        self.fixed_batch = False  # a compiled backbone gets fixed-shape batches (short ones padded)
        if compile:
            self.compile_backbone()
        self.precision, self.model_norm = precision, model_norm

    def compile_backbone(self):
        """Compile the backbone (torch.compile) and give it fixed-shape batches from now on;
        `compile=True` does this at construction, the eval command's --compile auto once it knows the run's size."""
        self.extractor.probe()  # measured before compiling: a batch of one would be compiled for too
        self.extractor.compile()
        self.fixed_batch = True

    @functools.cached_property
    def settings(self):
        """What the scores depend on, as results records hold it (the weights file's sha256,
        computed here on first use: hashing a backbone's file takes a noticeable part of a second)."""
        settings = {"model": self.backbone.name, "precision": self.precision, "device": self.device.type,
                    "model_norm": self.model_norm, "resize": self.resize, "swd_seed": self.swd_seed,
                    "weights": weights_identity(self.extractor.weights_path)}
        if self.layers is not None:
            settings["layers"] = ",".join(str(b) for b in self.blocks)
        return settings

    def compile_if_it_pays(self, jobs):
        """Compile (`compile_backbone`) on CUDA when at least COMPILE_MIN_JOBS pairs are to be
        scored, where the compilation's fixed cost is paid back (the --compile auto rule)."""
        if self.device.type == "cuda" and not self.fixed_batch and jobs >= COMPILE_MIN_JOBS:
            self.compile_backbone()

    @property
    def lower_better(self):
        """{distance: True when a lower score means more alike} (all published distances)."""
        return {d: DISTANCES[d].lower_better for d in self.distances}

    @property
    def cached_windows(self):
        """How many reference windows' features fit the cache budget (at least one)."""
        return max(1, self.cache_mb * 2**20 // self.extractor.probe()[1])

    @property
    def group_sizes(self):
        """Blocks per feature group of the backbone (one group for transformers)."""
        return self.extractor.probe()[0]

    @property
    def blocks(self):
        """The 1-based numbers of the blocks compared (all of them by default)."""
        return tuple(k + 1 for k in (self.layers if self.layers is not None else range(sum(self.group_sizes))))

    @property
    def layer_distances(self):
        """The requested distances that are sums over layers (the rows of `layer_scores`)."""
        return tuple(d for d in self.distances if DISTANCES[d].per_layer)

    # ------------------------------------------------------------ the one-call API
    def __call__(self, dis, ref):
        """Score pairs (see `score`): the one tensor [N] when built with one distance name,
        else {distance: tensor [N]}."""
        result = self.score(dis, ref)
        return result[self.distances[0]] if self.single else result

    def score(self, dis, ref):
        """Score pairs, the distorted image first (as pyiqa, piq and the loss take them).

        Args:
            dis, ref: the distorted images and their references, each a path, a PIL image, a
                numpy HWC uint8 array, a tensor [3, H, W] or [N, 3, H, W] (float in [0, 1], uint8
                or uint16), or a list of those.

        Returns:
            {distance: float64 tensor [N]}.
        """
        return self._score(dis, ref, per_layer=False)

    def layer_scores(self, dis, ref):
        """Per-block scores of the distances that are sums over layers (l2, cos).

        Args:
            dis, ref: as for `score`.

        Returns:
            {distance: float64 tensor [N, L]}, L = len(self.blocks) in forward order (a conv
            net's groups one after another); the sum over L is the score to float32 rounding.
        """
        return self._score(dis, ref, per_layer=True)

    def _score(self, dis, ref, per_layer):
        dises, refs = as_list(dis), as_list(ref)
        if len(refs) != len(dises):
            raise UserError(f"{len(dises)} distorted images but {len(refs)} references")
        keys = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else id(r) for r in refs]
        groups = collections.OrderedDict()
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        chunks = (Chunk(k, self.prepare(refs[idx[0]]), [self.prepare(dises[i]) for i in idx], idx)
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
        return {d: torch.from_numpy(out[:, j]) for j, d in enumerate(names)}

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

    def prepare(self, x):
        """One image as this scorer reads it (`images.prepare` with its resize) → [3, H, W]."""
        return prepare(x, self.resize)

    def maps(self, dis, ref):
        """Where a pair differs: per distance a map at the image's size (see maps.py).

        Args:
            dis, ref: one image each (path, PIL image, numpy array or tensor [3, H, W]).

        Returns:
            {distance: float32 numpy array [H, W]}: l2/cos per patch token (or conv map
            position), other distances per window; overlapping windows averaged.
        """
        return maps.image_maps(self, dis, ref)

    def window_maps(self, dis, ref):
        """Each window's 224×224 map: {distance: tensor [K, 224, 224]}, rows-outer window
        order; a window's mean is its score as the engine computes it (see maps.py)."""
        return maps.window_maps(self, dis, ref)

    def score_files(self, pairs, variants=None, jobs=None, on_error=None, per_layer=False):
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
            ((variant index, pair index), np.array of scores in self.distances order), as
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

    # ------------------------------------------------------------ what the engine calls
    def encode(self, windows_batch):
        """Windows [B, 3, 224, 224] float in [0, 1] → list of feature groups (one stack
        [B, L, T, D] for token backbones, one per map shape for conv nets)."""
        return as_groups(self.extractor(windows_batch.to(self.device, non_blocking=True)), self.layers,
                         self.group_sizes)

    def window_scores(self, f_dis, ref_of, per_layer=False):
        """Per-window scores [B, n_distances] (float64).

        Args:
            f_dis: feature groups of B distorted windows.
            ref_of: ref_of(a, b) gives the matching reference groups of windows a:b.
            per_layer: the per-block terms of `layer_distances` follow,
                [B, n_distances + n_layer_distances · L].

        Done in sub-batches of `distance_batch` windows, which bounds the intermediates' memory
        (and on a CPU keeps them small enough to be reused rather than page-faulted in afresh)."""
        n, step, out = f_dis[0].shape[0], self.distance_batch, []
        skip = self.backbone.cos_skip_nonfinite
        for s in range(0, n, step):
            pairs = list(zip((d[s:s + step] for d in f_dis), ref_of(s, s + step), strict=True))
            row = sum(compute(self.distances, d, r, self.swd_seed, skip) for d, r in pairs).double()
            if per_layer:  # groups one after another along L: [b, n_layer_distances, L] → flat
                terms = torch.cat([compute_layers(self.distances, d, r, skip) for d, r in pairs], dim=2)
                row = torch.cat([row, terms.flatten(1).double()], dim=1)
            out.append(row)
        return torch.cat(out)

    def score_chunks(self, chunks, per_layer=False):
        """The batched engine over Chunks (engine.run): yields (job, scores) as pairs finish,
        or (job, scores, per-block scores [n_layer_distances, L]) with per_layer."""
        if per_layer and not self.layer_distances:
            raise UserError(f"none of {', '.join(self.distances)} is a sum over layers "
                            f"(per-layer scores exist for l2, cos)")
        return engine.run(self, chunks, per_layer)


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
