"""The batched engine behind the Scorer: windows of many pairs through the backbone together.

How it is fast without changing a number: windows of many pairs go through the backbone in one
batch; each distinct reference is encoded once and its features stay in a slot pool on the
device until its last distorted image is done; every requested distance comes from the same
feature pass; on CUDA the comparisons run on a side stream and results are read back without
making the host wait. Per-pair score = mean over its windows of the per-window distance.

Memory is bounded by the batch size, not the image area: a reference whose window features
exceed the cache budget (`Scorer.cache_mb`) is compared block of window positions by block
instead of being cached whole.

The engine knows the scorer only by a `Spec`, a frozen record of values and two functions
(encode, window_scores) handed over once per run: it never calls back into the Scorer.
"""
import collections
import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from zsiqa.images import to_float
from zsiqa.windows import check_pair, window_count, windows

# ---------------------------------------------------------------- what the engine is given

@dataclass(frozen=True)
class Spec:
    """What one run of the engine needs, handed over once (the one-way interface).

    device: where windows go. batch_size: windows per forward pass. fixed_batch: pad short
    batches (a compiled backbone). overlap: compare on a CUDA side stream. resized: the images
    were resized (for messages). cached_windows: reference windows whose features fit the cache.
    columns: scores per pair. layer_columns: per-block values per pair that follow (per_layer).
    encode(windows) → feature groups. window_scores(f_dis, ref_of, per_layer) → per-window
    [B, columns + layer_columns] (float64)."""
    device: torch.device
    batch_size: int
    fixed_batch: bool
    overlap: bool
    resized: bool
    cached_windows: int
    columns: int
    layer_columns: int
    encode: Callable
    window_scores: Callable
    per_layer: bool = False


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

    def __init__(self, spec):
        self.spec, self.dev = spec, spec.device
        self.pool, self.refs = SlotPool(), {}
        self.queue, self.queued, self.position = collections.deque(), 0, 0
        self.pending, self.inflight = collections.deque(), collections.deque()
        self.streams = Streams(self.dev if spec.overlap else None)
        with self.streams.side():  # the sums live on the comparison stream (their memory too)
            self.acc = Accumulator(spec.columns + spec.layer_columns, self.dev)

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
            check_pair(ref.shape[::-1], size, f"pair {jobs[0]}", resized=self.spec.resized)
            if ref.slots is not None:
                self._add_cached(ref, imgs, jobs)
            else:
                self._add_blockwise(ref, imgs, jobs)
        if chunk.last:  # free the reference once everything queued so far is done
            self.pending.append(Pending(self.position, release=self.refs.pop(chunk.ref_key).slots))

    def _new_reference(self, img):
        shape = tuple(img.shape[-2:])
        if window_count(*shape) > self.spec.cached_windows:
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
        total, block = window_count(*ref.shape), self.spec.cached_windows
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
            self._encode_batch(self._take(min(self.spec.batch_size, self.queued)))
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
        if self.spec.fixed_batch and n < self.spec.batch_size:
            wins = torch.cat([wins, wins.new_zeros((self.spec.batch_size - n,) + wins.shape[1:])])
        feats = [f[:n] for f in self.spec.encode(wins)]
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
                scores = self.spec.window_scores(f_dis, lambda a, b: self.pool.read(dis_slots_d[a:b]),
                                                 self.spec.per_layer)
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


# ---------------------------------------------------------------- running

def run(spec, chunks, n_layer=0):
    """Consume Chunks (loading.py) and yield (job, scores) as pairs finish, or (job, scores,
    per-block scores [n_layer, L]) with spec.per_layer (n_layer: the per-layer distances);
    scores are per-window means."""
    engine_run, nd = EngineRun(spec), spec.columns
    n_layer = n_layer if spec.per_layer else 0
    keep = 2 if spec.device.type == "cuda" else 0  # read-backs left in flight: the GPU never waits for the host
    for chunk in chunks:
        engine_run.add(chunk)
        engine_run.flush(spec.batch_size)
        yield from _split(engine_run.drain(keep), nd, n_layer)
    engine_run.flush(1)
    yield from _split(engine_run.drain(0), nd, n_layer)


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
