"""The scoring engine and the Python API shared by the CLIs.

    from engine import Scorer
    metric = Scorer("dinov1", "wsd")               # weights resolved as in README
    metric("ref.png", "dis.png")                   # tensor([score])
    Scorer("clip_vitb32", ["l2", "cos"])(refs, dises)   # {"l2": tensor[N], "cos": tensor[N]}

How it is fast without changing a number: windows of many pairs go through the backbone in
one batch; each distinct reference is encoded once and its features stay in a slot pool on
the device until its last distorted image is done; every requested distance comes from the
same feature pass; images are decoded in DataLoader workers while the device computes.
Per-pair score = mean over its windows of the per-window distance (PROTOCOL.md §2).
"""
import collections
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from PIL import Image

from distances import DISTANCES, compute
from models import FeatureExtractor, get_backbone
from utils import (UserError, check_pair, open_image, pil_to_tensor, resize_square,
                   to_float, windows)


def weights_identity(path):
    """'random', or 'sha256:<hex>' of the weights file: what the numbers were made with."""
    if path == "random":
        return "random"
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def parse_distances(distances, backbone):
    """'wsd' | 'l2,cos' | 'all' | list → validated tuple of names for this backbone."""
    if isinstance(distances, str):
        distances = backbone.distances if distances == "all" else [d.strip() for d in distances.split(",") if d.strip()]
    distances = tuple(dict.fromkeys(distances))
    if not distances:
        raise UserError("no distance given")
    for d in distances:
        if d not in DISTANCES:
            raise UserError(f"unknown distance '{d}'; known: {', '.join(DISTANCES)}")
        if d not in backbone.distances:
            why = " (conv feature maps: the published code defines only l2 and cos on them)" if backbone.maps else \
                  " (an embedding: only cos applies)" if backbone.output == "embed" else ""
            raise UserError(f"distance '{d}' does not apply to {backbone.name}; it takes: {', '.join(backbone.distances)}{why}")
    return distances


@dataclass
class Chunk:
    """Some distorted images of one reference, decoded: `dis` is a list of [3, H, W] or one
    stacked [n, 3, H, W] tensor. `ref` may be None when an earlier chunk already carried this
    reference; `last` marks the reference's final chunk."""
    ref_key: object
    ref: Optional[torch.Tensor]
    dis: object
    pair_ids: list
    last: bool = True

    def pin_memory(self):
        """Called by DataLoader(pin_memory=True): page-locked tensors copy to a GPU asynchronously."""
        pin = lambda t: t.pin_memory() if torch.is_tensor(t) else t  # noqa: E731
        return Chunk(self.ref_key, pin(self.ref), pin(self.dis) if torch.is_tensor(self.dis) else [pin(d) for d in self.dis],
                     self.pair_ids, self.last)

    def dis_runs(self):
        """The distorted images as stacked runs of one size: [(first index, [n, 3, H, W])]."""
        if torch.is_tensor(self.dis):
            return [(0, self.dis)]
        runs, start = [], 0
        for k in range(1, len(self.dis) + 1):
            if k == len(self.dis) or self.dis[k].shape != self.dis[start].shape:
                runs.append((start, torch.stack(self.dis[start:k])))
                start = k
        return runs


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
        return slots

    def release(self, slots):
        self.free.extend(slots)

    def write(self, slots, feats):
        if self.buffers is None or self.buffers[0].shape[0] < self.capacity:
            fresh = [f.new_empty((self.capacity,) + f.shape[1:]) for f in feats]
            if self.buffers is not None:
                for new, old in zip(fresh, self.buffers):
                    new[: old.shape[0]] = old
            self.buffers = fresh
        for buf, f in zip(self.buffers, feats):
            buf[slots] = f

    def read(self, slots):
        return [buf[slots] for buf in self.buffers]


def _as_groups(feats):
    """Features as a list of groups [N, L_g, ...]: one group for token stacks, one per
    shape for conv maps."""
    return list(feats) if isinstance(feats, (list, tuple)) else [feats]


class Scorer:
    """A backbone, its distances and a device, built once; score pairs by calling it.

    model: a registry name (see `models.BACKBONES`); distances: one name, a comma list, a
    list, or 'all'; device: auto|cpu|cuda; precision: published|fp32|fp16|bf16; weights:
    a checkpoint path (else $ZSIQA_WEIGHTS_DIR, the library caches, then download);
    batch_size: windows per forward pass; workers: image-decoding processes for files;
    resize: optional N for the published `-r N` square resize; model_norm: feed the
    backbone its own mean/std-normalised input instead of raw [0, 1] (not the protocol)."""

    def __init__(self, model="dinov1", distances="all", device="auto", precision="published",
                 weights=None, batch_size=None, workers=None, resize=None, swd_seed=0, model_norm=False):
        self.backbone = get_backbone(model)
        self.distances = parse_distances(distances, self.backbone)
        self.single = isinstance(distances, str) and distances != "all" and "," not in distances
        self.extractor = FeatureExtractor(self.backbone, weights, device, precision, model_norm)
        self.device = self.extractor.device
        gpu = self.device.type == "cuda"
        self.batch_size = int(batch_size or (256 if gpu else 16))
        self.workers = (min(8, os.cpu_count() or 1) if gpu else 0) if workers is None else int(workers)
        self.resize = resize
        self.swd_seed = swd_seed
        self.distance_batch = 128 if gpu else 2
        if self.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        self.settings = {"model": self.backbone.name, "precision": precision, "model_norm": bool(model_norm),
                         "resize": resize, "swd_seed": swd_seed, "weights": weights_identity(self.extractor.weights_path)}

    # ------------------------------------------------------------ the one-call API
    def __call__(self, ref, dis):
        """Score pairs. ref, dis: a path, a PIL image, a tensor [3,H,W] or [N,3,H,W] in
        [0, 1], or a list of those (same length). Returns a tensor [N] when the scorer was
        built with one distance name, else {distance: tensor [N]}."""
        refs, dises = self._as_list(ref), self._as_list(dis)
        if len(refs) != len(dises):
            raise UserError(f"{len(refs)} references but {len(dises)} distorted images")
        keys = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else id(r) for r in refs]
        groups = collections.OrderedDict()
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        chunks = (Chunk(k, self._prepare(refs[idx[0]]), [self._prepare(dises[i]) for i in idx], idx)
                  for k, idx in groups.items())
        out = np.zeros((len(refs), len(self.distances)))
        for i, row in self.score_chunks(chunks):
            out[i] = row
        result = {d: torch.from_numpy(out[:, j]) for j, d in enumerate(self.distances)}
        return result[self.distances[0]] if self.single else result

    def _as_list(self, x):
        if torch.is_tensor(x) and x.dim() == 4:
            return list(x.unbind(0))
        return list(x) if isinstance(x, (list, tuple)) else [x]

    def _prepare(self, x):
        if torch.is_tensor(x):
            if x.dim() != 3 or x.shape[0] != 3:
                raise UserError(f"image tensors must be [3, H, W] or [N, 3, H, W], got {list(x.shape)}")
            if x.is_floating_point() and x.numel() and (x.min() < 0 or x.max() > 1):
                raise UserError(f"float image tensors must hold values in [0, 1], got [{float(x.min()):.3g}, {float(x.max()):.3g}]")
            return x
        im = x if isinstance(x, Image.Image) else open_image(x)
        if self.resize:
            im = resize_square(im, self.resize)
        return pil_to_tensor(im)

    def score_files(self, pairs, variants=None, jobs=None, on_error=None):
        """Score (ref_path, dis_path) pairs read from disk (decoded in `workers` processes).

        Args:
            pairs: list of (ref_path, dis_path).
            variants: None, or a list of None or transforms (ref_pil, dis_pil) → (ref, dis)
                (e.g. robustness shifts); every job names one.
            jobs: the (variant index, pair index) jobs to score; default every pair under
                every variant (variant 0 alone without variants).
            on_error: None to raise UserError when a file cannot be decoded, or a function
                (job, message) called for each pair that cannot be, which is then skipped.

        Yields:
            ((variant index, pair index), np.array of scores in self.distances order), as
            pairs finish, grouped by reference.
        """
        variants = list(variants or (None,))
        if jobs is None:
            jobs = [(v, i) for v in range(len(variants)) for i in range(len(pairs))]
        loader = make_loader(pairs, variants, self.resize, jobs, self.workers, self.device.type == "cuda")
        yield from self.score_chunks(loader)

    # ------------------------------------------------------------ the engine
    def encode(self, windows_batch):
        """Windows [B, 3, 224, 224] (uint8 or float in [0, 1]) → list of feature groups."""
        return _as_groups(self.extractor(to_float(windows_batch.to(self.device, non_blocking=True))))

    def window_scores(self, f_dis, ref_of):
        """Per-window scores [B, n_distances] (float64): f_dis are feature groups, ref_of(a, b)
        gives the matching reference groups of windows a:b. Done in sub-batches of
        `distance_batch` windows, which bounds the intermediates' memory (and on a CPU keeps
        them small enough to be reused rather than page-faulted in afresh)."""
        n, step, out = f_dis[0].shape[0], self.distance_batch, []
        for s in range(0, n, step):
            part = [compute(self.distances, d[s:s + step], r, self.swd_seed, self.backbone.cos_skip_nonfinite)
                    for d, r in zip(f_dis, ref_of(s, s + step))]
            out.append(sum(part).double())
        return torch.cat(out)

    def score_chunks(self, chunks):
        """The batched engine. Consumes Chunks; yields (pair id, scores) as pairs finish.

        Windows are queued (a reference's windows before its distorted images'); whenever
        `batch_size` are queued they go through the backbone together; reference features
        go to the slot pool, distorted ones are compared against their reference's slots."""
        dev = self.device
        pool = SlotPool()
        refs = {}                       # ref_key → (slots of its windows, its (H, W))
        queue = collections.deque()     # [windows [k,3,224,224] on dev, is_ref, slots, rows] (CPU index tensors)
        queued = 0
        acc = torch.zeros(64, len(self.distances), dtype=torch.float64, device=dev)
        pending = collections.deque()   # (end position, pair id, row, n windows, ref to release)
        rows_free, next_row = [], 0
        position = 0                    # windows enqueued so far

        def run_batches(limit):
            """Encode full batches (or everything, limit=1); return the positions reached."""
            nonlocal queued, acc
            reached = []
            while queued >= limit and queued > 0:
                take, parts = min(self.batch_size, queued), []
                while take:
                    wins, is_ref, slots, rows = queue[0]
                    n = min(take, wins.shape[0])
                    parts.append((wins[:n], is_ref[:n], slots[:n], rows[:n]))
                    if n == wins.shape[0]:
                        queue.popleft()
                    else:
                        queue[0] = [wins[n:], is_ref[n:], slots[n:], rows[n:]]
                    take -= n
                    queued -= n
                feats = self.encode(parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts]))
                is_ref, slots, rows = (torch.cat([p[k] for p in parts]) for k in (1, 2, 3))
                ref_at = is_ref.nonzero().flatten()
                if len(ref_at):
                    at = ref_at.to(dev, non_blocking=True)
                    pool.write(slots[ref_at].to(dev, non_blocking=True), [f[at] for f in feats])
                dis_at = (~is_ref).nonzero().flatten()
                if len(dis_at):
                    f_dis = feats if len(ref_at) == 0 else [f[dis_at.to(dev, non_blocking=True)] for f in feats]
                    ref_slots = slots[dis_at].to(dev, non_blocking=True)
                    scores = self.window_scores(f_dis, lambda a, b: pool.read(ref_slots[a:b]))
                    if acc.shape[0] < next_row:
                        grown = torch.zeros(max(next_row, 2 * acc.shape[0]), acc.shape[1], dtype=acc.dtype, device=dev)
                        grown[: acc.shape[0]] = acc
                        acc = grown
                    acc.index_add_(0, rows[dis_at].to(dev, non_blocking=True), scores)
                reached.append(position - queued)
            return reached

        inflight = collections.deque()  # (event, host scores, finished pairs) read back later

        def collect(upto):
            """Pairs whose last window is below `upto`: queue one device→host copy of their
            sums and free their rows and reference slots (later work is ordered after it)."""
            ready = []
            while pending and pending[0][0] <= upto:
                ready.append(pending.popleft())
            if not ready:
                return
            idx = torch.tensor([r[2] for r in ready]).to(dev, non_blocking=True)
            sums = acc.index_select(0, idx)
            acc.index_fill_(0, idx, 0)
            event = None
            if dev.type == "cuda":  # asynchronous: the CPU goes on preparing the next batch
                host = torch.empty(sums.shape, dtype=sums.dtype, pin_memory=True)
                host.copy_(sums, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                sums = host
            for _, _, row, _, release in ready:
                rows_free.append(row)
                if release is not None:
                    pool.release(refs.pop(release)[0])
            inflight.append((event, sums, ready))

        def drain(keep):
            """Yield finished pairs, leaving at most `keep` read-backs in flight."""
            while len(inflight) > keep:
                event, sums, ready = inflight.popleft()
                if event is not None:
                    event.synchronize()
                for (_, pair_id, _, n, _), s in zip(ready, sums.numpy()):
                    yield pair_id, s / n

        def enqueue(wins, is_ref, slots, rows):
            nonlocal queued, position
            queue.append([wins, torch.full((wins.shape[0],), is_ref), slots, rows])
            queued += wins.shape[0]
            position += wins.shape[0]

        for chunk in chunks:
            if isinstance(chunk, Exception):
                raise chunk
            if chunk.ref_key not in refs:
                if chunk.ref is None:
                    raise RuntimeError("a reference's first chunk must carry its image")
                wins = windows(chunk.ref.to(dev, non_blocking=True))
                slots = pool.reserve(wins.shape[0])
                refs[chunk.ref_key] = (torch.tensor(slots), tuple(chunk.ref.shape[-2:]))
                enqueue(wins, True, refs[chunk.ref_key][0], torch.zeros(len(slots), dtype=torch.long))
            slots, ref_shape = refs[chunk.ref_key]
            n_dis = len(chunk.pair_ids)
            for start, imgs in chunk.dis_runs():
                pair_ids = chunk.pair_ids[start:start + imgs.shape[0]]
                check_pair(ref_shape[::-1], tuple(imgs.shape[-2:])[::-1], f"pair {pair_ids[0]}", resized=bool(self.resize))
                wins = windows(imgs.to(dev, non_blocking=True))          # [n·K, 3, 224, 224]
                k = len(slots)
                rows = []
                for j, pair_id in enumerate(pair_ids):
                    if rows_free:
                        row = rows_free.pop()
                    else:
                        row, next_row = next_row, next_row + 1
                    rows.append(row)
                    last = chunk.last and start + j == n_dis - 1
                    pending.append((position + (j + 1) * k, pair_id, row, k, chunk.ref_key if last else None))
                enqueue(wins, False, slots.repeat(len(pair_ids)), torch.tensor(rows).repeat_interleave(k))
            for upto in run_batches(self.batch_size):
                collect(upto)
            yield from drain(keep=1 if dev.type == "cuda" else 0)
        for upto in run_batches(1):
            collect(upto)
        yield from drain(keep=0)


# ---------------------------------------------------------------- reading files

class PairFiles(torch.utils.data.Dataset):
    """Work items for reading pairs from disk: each item is one reference and up to
    `per_item` of its distorted images, decoded (in a worker process) and turned into one
    Chunk per reference key and variant. A variant is None (as loaded) or a transform
    (ref, dis) → (ref, dis) on Pillow images; variants that leave the reference untouched
    (`changes_reference` False) share its features. Errors come back as UserError objects."""

    def __init__(self, pairs, variants=(None,), resize=None, jobs=(), per_item=16):
        self.variants, self.resize = list(variants), resize
        todo = collections.defaultdict(list)
        for v, i in sorted(jobs, key=lambda job: (job[1], job[0])):
            todo[i].append(v)
        groups = collections.OrderedDict()
        for i in sorted(todo):
            ref, dis = pairs[i]
            groups.setdefault(os.fspath(ref), []).append((i, os.fspath(dis), todo[i]))
        self.items = [(ref, items[s:s + per_item]) for ref, items in groups.items() for s in range(0, len(items), per_item)]
        self.first, self.last = {}, {}
        for k, (ref, items) in enumerate(self.items):
            for key in {self.ref_key(ref, v) for _, _, todo in items for v in todo}:
                self.first.setdefault(key, k)
                self.last[key] = k

    def ref_key(self, ref, v):
        t = self.variants[v]
        return (ref, v) if getattr(t, "changes_reference", False) else (ref, None)

    def __len__(self):
        return len(self.items)

    def _load(self, path):
        im = open_image(path)
        return resize_square(im, self.resize) if self.resize else im

    def __getitem__(self, k):
        ref_path, items = self.items[k]
        try:
            ref_im = self._load(ref_path)
            chunks = collections.OrderedDict()
            for i, dis_path, todo in items:
                dis_im = self._load(dis_path)
                check_pair(ref_im.size, dis_im.size, f"{ref_path} / {dis_path}", resized=bool(self.resize))
                for v in todo:
                    t = self.variants[v]
                    r, d = t(ref_im, dis_im) if t is not None else (ref_im, dis_im)
                    key = self.ref_key(ref_path, v)
                    if key not in chunks:
                        chunks[key] = Chunk(key, pil_to_tensor(r) if self.first[key] == k else None, [], [], self.last[key] == k)
                    chunks[key].dis.append(pil_to_tensor(d))
                    chunks[key].pair_ids.append((v, i))
            for c in chunks.values():  # one tensor per chunk: one copy to the device
                if len({d.shape for d in c.dis}) == 1:
                    c.dis = torch.stack(c.dis)
            return list(chunks.values())
        except UserError as e:
            return e


def make_loader(pairs, variants=(None,), resize=None, jobs=(), workers=0, pin=False):
    """Chunks of decoded pairs, in order; `workers` processes decode ahead of the device."""
    ds = PairFiles(pairs, variants, resize, jobs)
    if workers <= 0:
        items = (ds[k] for k in range(len(ds)))
    else:
        items = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=pin, prefetch_factor=4, persistent_workers=False)
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield from item
