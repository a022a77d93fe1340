"""The scoring engine and the Python API shared by the CLIs.

    from engine import Scorer
    metric = Scorer("dinov1", "wsd")               # weights resolved as in README
    metric("ref.png", "dis.png")                   # tensor([score])
    metric.score("ref.png", "dis.png")             # {"wsd": tensor([score])}: always a dict
    Scorer("clip_vitb32", ["l2", "cos"])(refs, dises)   # {"l2": tensor[N], "cos": tensor[N]}

How it is fast without changing a number: windows of many pairs go through the backbone in
one batch; each distinct reference is encoded once and its features stay in a slot pool on
the device until its last distorted image is done; every requested distance comes from the
same feature pass; images are decoded in DataLoader workers while the device computes.
Per-pair score = mean over its windows of the per-window distance (PROTOCOL.md §2).

Memory is bounded by the batch size, not the image area: a reference whose window features
exceed the cache budget (`cache_mb`) is compared block of window positions by block instead
of being cached whole.
"""
import collections
import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from distances import DISTANCES, compute, compute_layers
from layers import chosen_layers, select_layers
from loading import Chunk, load_chunks
from models import FeatureExtractor, get_backbone
from utils import (
    UserError,
    as_rgb,
    check_pair,
    int_option,
    is_integer,
    open_image,
    pil_to_tensor,
    resize_square,
    resize_tensor,
    seed_option,
    to_float,
    window_count,
    windows,
)
from weights import identity as weights_identity


def parse_distances(distances, backbone):
    """'wsd' | 'l2,cos' | 'all' | list → validated tuple of names for this backbone."""
    if not isinstance(distances, (str, list, tuple)) or not all(isinstance(d, str) for d in distances):
        raise UserError(f"distances must be a name, a comma list, a list of names or 'all', got {distances!r}")
    if isinstance(distances, str):
        distances = backbone.distances if distances == "all" else [d.strip() for d in distances.split(",") if d.strip()]
    distances = tuple(dict.fromkeys(distances))
    if not distances:
        raise UserError("no distance given")
    for d in distances:
        if d not in DISTANCES:
            raise UserError(f"unknown distance '{d}'; known: {', '.join(DISTANCES)}")
        if d not in backbone.distances:
            why = {"maps": " (conv feature maps: the published code defines only l2 and cos on them)",
                   "embed": " (an embedding: only cos applies)"}.get(backbone.features, "")
            raise UserError(f"distance '{d}' does not apply to {backbone.name}; "
                            f"it takes: {', '.join(backbone.distances)}{why}")
    return distances


# ---------------------------------------------------------------- engine state

class SlotPool:
    """Device buffers holding the features of the references in flight, one slot per
    window; slots are reserved when a reference is queued and freed after its last pair."""

    def __init__(self):
        self.buffers, self.capacity, self.free = None, 0, []

    def reserve(self, count):
        if len(self.free) < count:
            grow = max(count - len(self.free), self.capacity, 16)
            self.free.extend(range(self.capacity, self.capacity + grow))
            self.capacity += grow
        slots, self.free = self.free[:count], self.free[count:]
        return torch.tensor(slots, dtype=torch.long)

    def release(self, slots):
        self.free.extend(slots.tolist())

    def write(self, slots, feats):
        if self.buffers is None:
            self.buffers = [f.new_empty((0,) + f.shape[1:]) for f in feats]
        self.buffers = [_grown(b, self.capacity) for b in self.buffers]
        for buf, f in zip(self.buffers, feats, strict=True):
            buf[slots] = f

    def read(self, slots):
        return [buf[slots] for buf in self.buffers]


def _grown(t, rows):
    """t with at least `rows` rows (zeros appended, contents kept)."""
    if t.shape[0] >= rows:
        return t
    out = t.new_zeros((rows,) + t.shape[1:])
    out[: t.shape[0]] = t
    return out


class Accumulator:
    """Per-pair sums of window scores on the device, one recycled row per pair in flight."""

    def __init__(self, columns, device):
        self.sums = torch.zeros(64, columns, dtype=torch.float64, device=device)
        self.free, self.next = [], 0

    def take(self, count):
        return [self.free.pop() if self.free else self._new() for _ in range(count)]

    def _new(self):
        self.next += 1
        return self.next - 1

    def add(self, rows, scores):
        """Add window scores [B, columns] to the rows (a tensor on the device) of their pairs."""
        if self.next > self.sums.shape[0]:
            self.sums = _grown(self.sums, max(self.next, 2 * self.sums.shape[0]))
        self.sums.index_add_(0, rows, scores)

    def pop(self, rows):
        """The sums of these rows (zeroed and freed for reuse)."""
        idx = upload(torch.tensor(rows), self.sums.device)
        out = self.sums.index_select(0, idx)
        self.sums.index_fill_(0, idx, 0)
        self.free.extend(rows)
        return out


@dataclass
class Queued:
    """Windows waiting for the backbone, with what to do with each one's features."""
    windows: torch.Tensor   # [k, 3, 224, 224], uint8 or float in [0, 1], on the device
    is_ref: torch.Tensor    # [k] bool: store in the slot pool (reference) or compare (distorted)
    slots: torch.Tensor     # [k] the reference slot each window is stored in or compared with
    rows: torch.Tensor      # [k] the accumulator row of each distorted window's pair

    def split(self, n):
        head = Queued(self.windows[:n], self.is_ref[:n], self.slots[:n], self.rows[:n])
        return head, Queued(self.windows[n:], self.is_ref[n:], self.slots[n:], self.rows[n:])


@dataclass
class Pending:
    """Done once the queue has been encoded up to `end`: a pair to read back (job set), or
    reference slots to free (release set)."""
    end: int
    job: object = None
    row: int = -1
    windows: int = 0
    release: Optional[torch.Tensor] = None


@dataclass
class Reference:
    """A reference in flight: its cached window slots, or (too large to cache) its image."""
    shape: tuple
    slots: Optional[torch.Tensor] = None
    image: Optional[torch.Tensor] = None


class Streams:
    """On CUDA with overlap: the comparisons (distances, accumulation, read-back) run on a
    side stream, so batch k's distances overlap batch k+1's forward pass on the main stream.
    Elsewhere every method is a no-op and all work stays on the one stream."""

    def __init__(self, device=None):
        self.main = torch.cuda.current_stream(device) if device is not None and device.type == "cuda" else None
        self.other = torch.cuda.Stream(device) if self.main is not None else None

    @contextlib.contextmanager
    def side(self, tensors=()):
        """Run the block on the side stream, after the main stream's work so far; `tensors`
        made on the main stream are kept from reuse until the side stream is done with them."""
        if self.other is None:
            yield
            return
        self.other.wait_stream(self.main)
        for t in tensors:
            t.record_stream(self.other)
        with torch.cuda.stream(self.other):
            yield

    def main_waits_for_side(self):
        if self.other is not None:
            self.main.wait_stream(self.other)


class EngineRun:
    """One pass of the engine over a stream of Chunks. `add` queues a chunk's windows,
    `flush` encodes full batches (storing reference features, comparing distorted ones
    against their reference's slots), `drain` yields the pairs whose windows are all done."""

    def __init__(self, scorer, per_layer=False):
        self.scorer, self.dev, self.per_layer = scorer, scorer.device, per_layer
        self.pool, self.refs = SlotPool(), {}
        self.queue, self.queued, self.position = collections.deque(), 0, 0
        self.pending, self.inflight = collections.deque(), collections.deque()
        extra = len(scorer.layer_distances) * len(scorer.blocks) if per_layer else 0
        self.streams = Streams(self.dev if scorer.overlap else None)
        with self.streams.side():  # the sums live on the comparison stream (their memory too)
            self.acc = Accumulator(len(scorer.distances) + extra, self.dev)

    # ---- queueing windows
    def _enqueue(self, wins, is_ref, slots, rows):
        self.queue.append(Queued(wins, torch.full((wins.shape[0],), is_ref), slots, rows))
        self.queued += wins.shape[0]
        self.position += wins.shape[0]

    def add(self, chunk):
        """Queue a chunk: its reference's windows when first seen, then its distorted ones."""
        if chunk.ref_key not in self.refs:
            if chunk.ref is None:
                if not chunk.jobs:  # nothing of this reference could be read
                    return
                raise RuntimeError("a reference's first chunk must carry its image")
            self.refs[chunk.ref_key] = self._new_reference(chunk.ref)
        ref = self.refs[chunk.ref_key]
        for start, imgs in chunk.dis_runs():
            jobs = chunk.jobs[start:start + imgs.shape[0]]
            size = tuple(imgs.shape[-2:])[::-1]
            check_pair(ref.shape[::-1], size, f"pair {jobs[0]}", resized=bool(self.scorer.resize))
            if ref.slots is not None:
                self._add_cached(ref, imgs, jobs)
            else:
                self._add_blockwise(ref, imgs, jobs)
        if chunk.last:  # free the reference once everything queued so far is done
            self.pending.append(Pending(self.position, release=self.refs.pop(chunk.ref_key).slots))

    def _new_reference(self, img):
        shape = tuple(img.shape[-2:])
        if window_count(*shape) > self.scorer.cached_windows:
            return Reference(shape, image=img)
        wins = windows(img.to(self.dev, non_blocking=True))
        slots = self.pool.reserve(wins.shape[0])
        self._enqueue(wins, True, slots, torch.zeros(len(slots), dtype=torch.long))
        return Reference(shape, slots=slots)

    def _add_cached(self, ref, imgs, jobs):
        wins = windows(imgs.to(self.dev, non_blocking=True))  # [n·K, 3, 224, 224], image-major
        k, rows = len(ref.slots), self.acc.take(len(jobs))
        base = self.position
        self._enqueue(wins, False, ref.slots.repeat(len(jobs)), torch.tensor(rows).repeat_interleave(k))
        self.pending.extend(Pending(base + (j + 1) * k, job, row, k)
                            for j, (job, row) in enumerate(zip(jobs, rows, strict=True)))

    def _add_blockwise(self, ref, imgs, jobs):
        """A reference too large to cache: per block of window positions, encode its windows
        there, compare every distorted image's windows there, free the block's slots."""
        total, block = window_count(*ref.shape), self.scorer.cached_windows
        rows = torch.tensor(self.acc.take(len(jobs)))
        ref_img, imgs = ref.image.to(self.dev, non_blocking=True), imgs.to(self.dev, non_blocking=True)
        for b0 in range(0, total, block):
            select = range(b0, min(total, b0 + block))
            slots = self.pool.reserve(len(select))
            self._enqueue(windows(ref_img, select), True, slots, torch.zeros(len(select), dtype=torch.long))
            self._enqueue(windows(imgs, select), False, slots.repeat(len(jobs)), rows.repeat_interleave(len(select)))
            self.pending.append(Pending(self.position, release=slots))
            self.flush(1)  # free this block's slots before the next block takes its own
        self.pending.extend(Pending(self.position, job, int(row), total) for job, row in zip(jobs, rows, strict=True))

    # ---- encoding and comparing
    def flush(self, limit):
        """Encode batches while at least `limit` windows are queued (limit=1: everything)."""
        while self.queued >= limit and self.queued > 0:
            self._encode_batch(self._take(min(self.scorer.batch_size, self.queued)))
            self._collect(self.position - self.queued)
        self._collect(self.position - self.queued)  # entries queued after the last batch (nothing left to encode)

    def _take(self, n):
        parts = []
        while n:
            head, rest = self.queue[0].split(n)
            if rest.windows.shape[0]:
                self.queue[0] = rest
            else:
                self.queue.popleft()
            parts.append(head)
            n -= head.windows.shape[0]
            self.queued -= head.windows.shape[0]
        return parts

    def _encode_batch(self, parts):
        """One forward pass; every part's windows become float in [0, 1] on their own, so an
        8-bit image's windows are scaled whatever their neighbours in the batch are. With a
        fixed batch shape (a compiled backbone) a short batch is padded with blank windows
        whose features are dropped."""
        wins = torch.cat([to_float(p.windows) for p in parts]) if len(parts) > 1 else to_float(parts[0].windows)
        n = wins.shape[0]
        if self.scorer.fixed_batch and n < self.scorer.batch_size:
            wins = torch.cat([wins, wins.new_zeros((self.scorer.batch_size - n,) + wins.shape[1:])])
        feats = [f[:n] for f in self.scorer.encode(wins)]
        is_ref, slots, rows = (torch.cat([getattr(p, k) for p in parts]) for k in ("is_ref", "slots", "rows"))
        ref_at = is_ref.nonzero().flatten()
        dis_at = (~is_ref).nonzero().flatten()
        # every index the batch needs, sent in one copy: [ref_at, their slots, dis_at, their slots, their rows]
        index = upload(torch.cat([ref_at, slots[ref_at], dis_at, slots[dis_at], rows[dis_at]]), self.dev)
        ref_at_d, ref_slots_d, dis_at_d, dis_slots_d, rows_d = index.split([len(ref_at)] * 2 + [len(dis_at)] * 3)
        if len(ref_at):
            self.streams.main_waits_for_side()  # slots being rewritten may still be read by the last comparison
            self.pool.write(ref_slots_d, [f[ref_at_d] for f in feats])
        if len(dis_at):
            with self.streams.side([*feats, index]):
                f_dis = feats if not len(ref_at) else [f[dis_at_d] for f in feats]
                scores = self.scorer.window_scores(f_dis, lambda a, b: self.pool.read(dis_slots_d[a:b]), self.per_layer)
                self.acc.add(rows_d, scores)

    # ---- reading back
    def _collect(self, upto):
        """Entries whose last window is below `upto`: free their slots and queue one
        device→host copy of the finished pairs' sums (later work is ordered after it)."""
        ready = []
        while self.pending and self.pending[0].end <= upto:
            entry = self.pending.popleft()
            if entry.release is not None:
                self.pool.release(entry.release)
            if entry.job is not None:
                ready.append(entry)
        if not ready:
            return
        with self.streams.side():  # the sums are written on the comparison stream
            sums, event = self.acc.pop([e.row for e in ready]), None
            if self.dev.type == "cuda":  # asynchronous: the CPU goes on preparing the next batch
                host = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
                host.copy_(sums, non_blocking=True)
                event, sums = torch.cuda.Event(), host
                event.record()
        self.inflight.append((event, sums, ready))

    def drain(self, keep):
        """Yield (job, mean scores) of finished pairs, leaving `keep` read-backs in flight."""
        while len(self.inflight) > keep:
            event, sums, ready = self.inflight.popleft()
            if event is not None:
                event.synchronize()
            for entry, s in zip(ready, sums.numpy(), strict=True):
                yield entry.job, s / entry.windows


# ---------------------------------------------------------------- the API

class Scorer:
    """A backbone, its distances and a device, built once; score pairs by calling it.

    Args:
        model: a registry name (see `models.BACKBONES`).
        distances: one name, a comma list, a list, or 'all'.
        device: auto|cpu|cuda|cuda:N. precision: published|fp32|fp16|bf16.
        weights: a checkpoint path (else $ZSIQA_WEIGHTS_DIR, the library caches, then download).
        batch_size: windows per forward pass. workers: image-decoding processes for files.
        resize: optional N ≥ 224 for the published `-r N` square resize.
        model_norm: feed the backbone its own mean/std-normalised input (not the protocol).
        cache_mb: device memory for cached reference features; a reference larger than
            that is compared block by block (default 4096 on a GPU, 96 on a CPU: LIVE-size references stay cached).
        compile: compile the backbone (torch.compile; pays off on large GPU runs, see README).
        layers: compare only these blocks ('1-6,9', 1-based, or a list of ints; see layers.py):
            l2/cos become the sum of those blocks' per-layer scores, skld/jsd/wsd/swd the same
            formulas on the sub-stack (outside the published protocol unless all are kept).

    Return rule: `score()` always returns {distance: tensor [N]}; calling the scorer returns
    the same dict, or the one tensor when it was built with a single distance name."""

    def __init__(self, model="dinov1", distances="all", device="auto", precision="published", weights=None,
                 batch_size=None, workers=None, resize=None, swd_seed=0, model_norm=False, cache_mb=None,
                 layers=None, compile=False):
        self.backbone = get_backbone(model)
        self.distances = parse_distances(distances, self.backbone)
        self.single = isinstance(distances, str) and distances != "all" and "," not in distances
        self.resize = int_option(resize, "resize", 224, None)
        self.swd_seed = seed_option(swd_seed)
        for flag, value in (("model_norm", model_norm), ("compile", compile)):
            if not isinstance(value, bool):
                raise UserError(f"{flag} must be True or False, got {value!r}")
        self.extractor = FeatureExtractor(self.backbone, weights, device, precision, model_norm)
        self.device = self.extractor.device
        gpu = self.device.type == "cuda"
        self.batch_size = int_option(batch_size, "batch size", 1, 256 if gpu else 16)
        self.workers = int_option(workers, "workers", 0, min(8, os.cpu_count() or 1) if gpu else 0)
        self.cache_mb = int_option(cache_mb, "cache_mb", 1, 4096 if gpu else 96)
        self.distance_batch = 128 if gpu else 2
        self.overlap = gpu and os.environ.get("ZSIQA_OVERLAP", "1") != "0"  # distances on a side stream
        self.layers = None
        if layers is not None:
            if self.backbone.output == "embed":
                raise UserError(f"{self.backbone.name} compares one embedding: it has no blocks to choose")
            self.layers = chosen_layers(layers, sum(self.group_sizes))
        self.fixed_batch = False  # a compiled backbone gets fixed-shape batches (short ones padded)
        if compile:
            self.compile_backbone()
        self.settings = {"model": self.backbone.name, "precision": precision, "device": self.device.type,
                         "model_norm": bool(model_norm),
                         "resize": self.resize, "swd_seed": self.swd_seed,
                         "weights": weights_identity(self.extractor.weights_path)}
        if self.layers is not None:
            self.settings["layers"] = ",".join(str(b) for b in self.blocks)

    def compile_backbone(self):
        """Compile the backbone (torch.compile) and give it fixed-shape batches from now on;
        `compile=True` does this at construction, run.py --compile auto once it knows the run's size."""
        self.extractor.probe()  # measured before compiling: a batch of one would be compiled for too
        self.extractor.compile()
        self.fixed_batch = True

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
    def __call__(self, ref, dis):
        """Score pairs (see `score`): the one tensor [N] when built with one distance name,
        else {distance: tensor [N]}."""
        result = self.score(ref, dis)
        return result[self.distances[0]] if self.single else result

    def score(self, ref, dis):
        """Score pairs. ref, dis: a path, a PIL image, a numpy HWC uint8 array, a tensor
        [3, H, W] or [N, 3, H, W] (float in [0, 1], uint8 or uint16), or a list of those.
        Returns {distance: float64 tensor [N]}."""
        return self._score(ref, dis, per_layer=False)

    def layer_scores(self, ref, dis):
        """Per-block scores of the distances that are sums over layers (l2, cos).

        Args:
            ref, dis: as for `score`.

        Returns:
            {distance: float64 tensor [N, L]}, L = len(self.blocks) in forward order (a conv
            net's groups one after another); the sum over L is the score to float32 rounding.
        """
        return self._score(ref, dis, per_layer=True)

    def _score(self, ref, dis, per_layer):
        refs, dises = self._as_list(ref), self._as_list(dis)
        if len(refs) != len(dises):
            raise UserError(f"{len(refs)} references but {len(dises)} distorted images")
        keys = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else id(r) for r in refs]
        groups = collections.OrderedDict()
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        chunks = (Chunk(k, self._prepare(refs[idx[0]]), [self._prepare(dises[i]) for i in idx], idx)
                  for k, idx in groups.items())
        names = self.layer_distances if per_layer else self.distances
        shape = (len(refs), len(names)) + ((len(self.blocks),) if per_layer else ())
        out, seen = np.zeros(shape), np.zeros(len(refs), bool)
        for i, *row in self._run_chunks(chunks, per_layer):
            out[i], seen[i] = row[-1], True
        if not seen.all():  # every pair must come back: never a silent placeholder
            raise RuntimeError(f"internal error: {int((~seen).sum())} pair(s) were not scored")
        return {d: torch.from_numpy(out[:, j]) for j, d in enumerate(names)}

    def maps(self, ref, dis):
        """Where a pair differs: per distance a map at the image's size (see maps.py).

        Args:
            ref, dis: one image each (path, PIL image, numpy array or tensor [3, H, W]).

        Returns:
            {distance: float32 numpy array [H, W]}: l2/cos per patch token (or conv map
            position), other distances per window; overlapping windows averaged.
        """
        import maps
        return maps.image_maps(self, ref, dis)

    def window_maps(self, ref, dis):
        """Each window's 224×224 map: {distance: tensor [K, 224, 224]}, rows-outer window
        order; a window's mean is its score as the engine computes it (see maps.py)."""
        import maps
        return maps.window_maps(self, ref, dis)

    def _as_list(self, x):
        if torch.is_tensor(x) and x.dim() == 4:
            return list(x.unbind(0))
        return list(x) if isinstance(x, (list, tuple)) else [x]

    def _prepare(self, x):
        """One image → [3, H, W] uint8 (8-bit sources, scaled later) or float in [0, 1]."""
        if torch.is_tensor(x):
            x = _checked_tensor(x)
            return resize_tensor(x, self.resize) if self.resize else x
        if isinstance(x, np.ndarray):
            x = _array_to_pil(x)
        elif not isinstance(x, (str, os.PathLike, Image.Image)):
            raise UserError(f"cannot score a {type(x).__name__}: give a path, a PIL image, a numpy HWC uint8 array "
                            f"or a tensor [3, H, W]")
        im = as_rgb(_loaded(x)) if isinstance(x, Image.Image) else open_image(x)
        return pil_to_tensor(resize_square(im, self.resize) if self.resize else im)

    def score_files(self, pairs, variants=None, jobs=None, on_error=None, per_layer=False):
        """Score (ref_path, dis_path) pairs read from disk (decoded in `workers` processes).

        Args:
            pairs: list of (ref_path, dis_path).
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
        """
        variants, pairs = list(variants or (None,)), list(pairs)
        _check_pairs(pairs)
        jobs = [(v, i) for v in range(len(variants)) for i in range(len(pairs))] if jobs is None else list(jobs)
        _check_jobs(jobs, len(variants), len(pairs))
        chunks = load_chunks(pairs, variants, self.resize, jobs, self.workers, self.device.type == "cuda")
        yield from self._run_chunks(_report_failures(chunks, on_error), per_layer)

    # ------------------------------------------------------------ the engine
    def encode(self, windows_batch):
        """Windows [B, 3, 224, 224] float in [0, 1] → list of feature groups (one stack
        [B, L, T, D] for token backbones, one per map shape for conv nets)."""
        feats = self.extractor(windows_batch.to(self.device, non_blocking=True))
        feats = list(feats) if isinstance(feats, (list, tuple)) else [feats]
        return select_layers(feats, self.layers, self.group_sizes) if self.layers is not None else feats

    def window_scores(self, f_dis, ref_of, per_layer=False):
        """Per-window scores [B, n_distances] (float64): f_dis are feature groups, ref_of(a, b)
        gives the matching reference groups of windows a:b. Done in sub-batches of
        `distance_batch` windows, which bounds the intermediates' memory (and on a CPU keeps
        them small enough to be reused rather than page-faulted in afresh). per_layer: the
        per-block terms of `layer_distances` follow, [B, n_distances + n_layer_distances · L]."""
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

    def _run_chunks(self, chunks, per_layer):
        """score_chunks, called with per_layer only when asked (older overrides take one argument)."""
        return self.score_chunks(chunks, per_layer=True) if per_layer else self.score_chunks(chunks)

    def score_chunks(self, chunks, per_layer=False):
        """The batched engine: consumes Chunks, yields (job, scores) as pairs finish, or
        (job, scores, per-block scores [n_layer_distances, L]) with per_layer."""
        if per_layer and not self.layer_distances:
            raise UserError(f"none of {', '.join(self.distances)} is a sum over layers "
                            f"(per-layer scores exist for l2, cos)")
        run, nd = EngineRun(self, per_layer), len(self.distances)
        n_layer = len(self.layer_distances) if per_layer else 0
        keep = 2 if self.device.type == "cuda" else 0  # read-backs left in flight: the GPU never waits for the host
        for chunk in chunks:
            run.add(chunk)
            run.flush(self.batch_size)
            yield from _split(run.drain(keep), nd, n_layer)
        run.flush(1)
        yield from _split(run.drain(0), nd, n_layer)


def _split(finished, nd, n_layer):
    """(job, row) → (job, scores), or (job, scores, per-block rows [n_layer, L]) when n_layer."""
    for job, row in finished:
        yield (job, row[:nd], row[nd:].reshape(n_layer, -1)) if n_layer else (job, row)


def upload(t, device):
    """A small CPU tensor on `device` without a host sync: a copy from pageable memory makes
    CUDA wait for the stream's queued work first, one from page-locked memory does not."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _report_failures(chunks, on_error):
    """Pass chunks on; their unreadable pairs go to on_error, or raise without one."""
    for chunk in chunks:
        for job, message in chunk.failed:
            if on_error is None:
                raise UserError(message)
            on_error(job, message)
        yield chunk


def _checked_tensor(x):
    """An image tensor → [3, H, W], uint8 or float in [0, 1]; wrong ranges are refused."""
    if x.layout != torch.strided:
        raise UserError(f"image tensors must be dense, got a {x.layout} tensor (call .to_dense())")
    if x.dim() != 3 or x.shape[0] != 3:
        raise UserError(f"image tensors must be [3, H, W] or [N, 3, H, W], got {list(x.shape)}")
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.uint16:
        return x.float().div_(65535)
    if not x.is_floating_point():
        raise UserError(f"image tensors of dtype {x.dtype} are ambiguous: give uint8 (0-255), uint16 (0-65535) "
                        f"or float in [0, 1]")
    x = x.float()
    if not torch.isfinite(x).all():
        raise UserError("image tensor holds NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise UserError(f"float image tensors must hold values in [0, 1], "
                        f"got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x


def _loaded(im):
    """A PIL image given to the API, decoded (a lazily opened file whose handle was closed is
    refused in one line, not with Pillow's AssertionError)."""
    try:
        im.load()
    except Exception as e:
        raise UserError(f"cannot read the PIL image given: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                        f"(open it inside a `with` block and call .load(), or pass the path)") from None
    return im


def _check_pairs(pairs):
    """score_files takes a list of (ref_path, dis_path): anything else is one clear error."""
    for k, pair in enumerate(pairs):  # tuples, lists, numpy rows (a DataFrame's .values) of two paths
        if isinstance(pair, (str, bytes, os.PathLike)) or not hasattr(pair, "__len__") or len(pair) != 2 or \
                not all(isinstance(p, (str, os.PathLike)) for p in pair):
            raise UserError(f"score_files takes (ref_path, dis_path) pairs; item {k} is {pair!r}")


def _check_jobs(jobs, n_variants, n_pairs):
    """Every job is (variant index, pair index) within range."""
    for job in jobs:
        ok = isinstance(job, (tuple, list)) and len(job) == 2 and all(is_integer(x) for x in job)
        if not ok or not (0 <= job[0] < n_variants and 0 <= job[1] < n_pairs):
            raise UserError(f"job {job!r} is not a (variant, pair) index within {n_variants} variant(s) and "
                            f"{n_pairs} pair(s)")


def _array_to_pil(a):
    """A numpy image (H×W or H×W×3/4 uint8, H×W uint16) as Pillow reads it; others refused."""
    ok = (a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4)))) or \
         (a.dtype == np.uint16 and a.ndim == 2)
    if not ok:
        raise UserError(f"numpy images must be H×W×3 (or ×4, or H×W) uint8, or H×W uint16; "
                        f"got {a.dtype} {list(a.shape)}")
    return Image.fromarray(np.ascontiguousarray(a))


def __getattr__(name):
    """`engine.PerceptualLoss` re-exports loss.PerceptualLoss (imported lazily: loss imports engine)."""
    if name == "PerceptualLoss":
        from loss import PerceptualLoss
        return PerceptualLoss
    raise AttributeError(f"module 'engine' has no attribute '{name}'")
