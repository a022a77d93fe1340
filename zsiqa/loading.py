"""Reading pairs from disk for the engine: decoded (in DataLoader workers) into Chunks, one
per reference and variant, with the pairs that could not be decoded set apart."""
import collections
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Optional

import torch
from PIL import Image

from zsiqa.errors import UserError
from zsiqa.images import open_image, pil_to_tensor
from zsiqa.windows import check_pair


@dataclass
class Chunk:
    """Some distorted images of one reference, decoded.

    ref_key: identifies the reference (and variant, when a variant changes it); ref: its
    [3, H, W] image, or None when an earlier chunk already carried it; dis: a list of
    [3, H, W] or one stacked [n, 3, H, W] tensor; jobs: one id per distorted image; last:
    the reference's final chunk; failed: (job, message) of images that could not be read."""
    ref_key: object
    ref: Optional[torch.Tensor]
    dis: object
    jobs: list
    last: bool = True
    failed: list = field(default_factory=list)

    def pin_memory(self):
        """Called by DataLoader(pin_memory=True): page-locked tensors copy to a GPU asynchronously."""
        def pin(t):
            return t.pin_memory() if torch.is_tensor(t) else t
        dis = pin(self.dis) if torch.is_tensor(self.dis) else [pin(d) for d in self.dis]
        return Chunk(self.ref_key, pin(self.ref), dis, self.jobs, self.last, self.failed)

    def dis_runs(self):
        """The distorted images as stacked runs of one size and dtype: [(first index, [n, 3, H, W])]
        (an 8-bit and a float image are never stacked together: that would skip the /255)."""
        if torch.is_tensor(self.dis):
            return [(0, self.dis)] if len(self.dis) else []
        runs, start = [], 0
        for k in range(1, len(self.dis) + 1):
            if k == len(self.dis) or _kind(self.dis[k]) != _kind(self.dis[start]):
                runs.append((start, torch.stack(self.dis[start:k])))
                start = k
        return runs


def _kind(t):
    return t.shape, t.dtype


class PairFiles(torch.utils.data.Dataset):
    """Work items for reading pairs from disk: each item is one reference and up to
    `per_item` of its distorted images, decoded (in a worker process) and turned into one
    Chunk per reference key and variant. A variant is None (as loaded) or a transform
    (ref, dis) → (ref, dis) on Pillow images; variants that leave the reference untouched
    (`changes_reference` False) share its features. An image that cannot be read marks its
    pairs (all of the item's, for a reference) as failed instead of stopping the others."""

    def __init__(self, pairs, variants=(None,), resize=None, jobs=(), per_item=16):
        self.variants, self.resize = list(variants), resize
        todo = collections.defaultdict(list)
        for v, i in sorted(jobs, key=lambda job: (job[1], job[0])):
            todo[i].append(v)
        groups = collections.OrderedDict()
        for i in sorted(todo):
            ref, dis = pairs[i]
            groups.setdefault(os.fspath(ref), []).append((i, os.fspath(dis), todo[i]))
        self.items = [(ref, items[s:s + per_item])
                      for ref, items in groups.items() for s in range(0, len(items), per_item)]
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
        return open_image(path, self.resize)

    def _chunk(self, chunks, key, k, ref_im):
        if key not in chunks:
            ref = pil_to_tensor(ref_im) if self.first[key] == k and ref_im is not None else None
            chunks[key] = Chunk(key, ref, [], [], self.last[key] == k)
        return chunks[key]

    def _view(self, ref_im, dis_im, v):
        """Variant v of a pair; TypeError (a caller's bug, not a bad image) unless it gives two
        images (a tuple or a list)."""
        t = self.variants[v]
        if t is None:
            return ref_im, dis_im
        views = t(ref_im, dis_im)
        if not (isinstance(views, (tuple, list)) and len(views) == 2
                and all(isinstance(im, Image.Image) for im in views)):
            raise TypeError(f"variant {v} ({getattr(t, '__name__', type(t).__name__)}) returned "
                            f"{type(views).__name__}; a variant must return (ref, dis), two Pillow images")
        return views

    def _ref_view(self, ref_im, v):
        """The reference as variant v sees it (a shift crops it), for a chunk whose distorted
        image failed: later chunks of the same reference rely on the first one's."""
        return ref_im if ref_im is None else self._view(ref_im, ref_im, v)[0]

    def __getitem__(self, k):
        ref_path, items = self.items[k]
        chunks = collections.OrderedDict()
        try:
            ref_im, ref_error = self._load(ref_path), None
        except UserError as e:
            ref_im, ref_error = None, str(e)
        for i, dis_path, todo in items:
            try:
                if ref_error:
                    raise UserError(ref_error)
                dis_im = self._load(dis_path)
                check_pair(ref_im.size, dis_im.size, f"{ref_path} / {dis_path}", resized=bool(self.resize))
                views = [(v, *self._view(ref_im, dis_im, v)) for v in todo]
            except UserError as e:
                for v in todo:
                    chunk = self._chunk(chunks, self.ref_key(ref_path, v), k, self._ref_view(ref_im, v))
                    chunk.failed.append(((v, i), str(e)))
                continue
            for v, r, d in views:
                chunk = self._chunk(chunks, self.ref_key(ref_path, v), k, r)
                chunk.dis.append(pil_to_tensor(d))
                chunk.jobs.append((v, i))
        for c in chunks.values():  # one tensor per chunk: one copy to the device
            if c.dis and len({_kind(d) for d in c.dis}) == 1:
                c.dis = torch.stack(c.dis)
        return list(chunks.values())


def load_chunks(pairs, variants=(None,), resize=None, jobs=(), workers=0, pin=False, prefetch=None):
    """Chunks of decoded pairs, in order.

    Args:
        pairs, variants, resize, jobs: as PairFiles takes them.
        workers: processes that decode ahead of the device (DataLoader).
        pin: page-locked chunks (a CUDA device copies them asynchronously).
        prefetch: without worker processes, items decoded (and pinned) ahead in one thread while
            the caller scores the previous ones (decoding releases the GIL); 0: in the caller's
            thread, one at a time. None: $ZSIQA_PREFETCH, else 2.

    Returns:
        an iterator of Chunks.
    """
    ds = PairFiles(pairs, variants, resize, jobs)
    workers = min(workers, len(ds))  # no process without an item to decode
    prefetch = int(os.environ.get("ZSIQA_PREFETCH", "2")) if prefetch is None else prefetch
    if workers > 0:
        items = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                                            pin_memory=pin, prefetch_factor=4, persistent_workers=False)
    elif prefetch > 0 and len(ds) > 1:
        items = prefetched(ds, prefetch, pin)
    else:
        items = (ds[k] for k in range(len(ds)))
    for item in items:
        yield from item


def prefetched(ds, depth, pin=False):
    """ds[0], ds[1], … decoded by one background thread, at most `depth` items ahead, each
    item's chunks page-locked when `pin`. An exception raised by ds[k] is raised here at item k;
    closing the iterator early stops the thread."""
    ready, stop = queue.Queue(maxsize=depth), threading.Event()

    def put(message):
        while not stop.is_set():
            try:
                ready.put(message, timeout=0.05)
                return
            except queue.Full:
                continue

    def work():
        try:
            for k in range(len(ds)):
                if stop.is_set():
                    return
                item = ds[k]
                put(("item", [c.pin_memory() for c in item] if pin else item))
            put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            put(("error", e))

    thread = threading.Thread(target=work, name="zsiqa-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()
        thread.join()
