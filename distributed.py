"""Multi-process runs with torchrun: `torchrun --nproc_per_node K run.py ...`.

Pairs are sharded by reference group (so each reference is encoded once, on one rank);
each rank appends its rows to `<results>.rank<r>` part files and rank 0 merges them, so the
final files hold the same rows, in the same order, as a one-process run. Without torchrun
every call here is a no-op for a single process.
"""
import csv
import glob
import os

import torch
import torch.distributed as tdist


class Context:
    """rank/world of this process, with the few collectives run.py needs."""

    def __init__(self, rank=0, world=1, local_rank=0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    def device(self, requested):
        """Under torchrun on CUDA each rank takes its own GPU."""
        if self.world > 1 and requested in ("auto", "cuda") and torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return f"cuda:{self.local_rank}"
        return requested

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value):
        if self.world == 1:
            return value
        out = [None] * self.world
        tdist.all_gather_object(out, value)
        return sum(out)

    def barrier(self):
        if self.world > 1:
            tdist.barrier()

    def shard(self, pairs, todo):
        """This rank's share of the (variant, pair) jobs: whole reference groups, dealt out
        by size (largest first, to the least-loaded rank) so ranks finish together."""
        if self.world == 1:
            return frozenset(todo)
        groups = {}
        for v, i in todo:
            groups.setdefault(pairs[i][0], []).append((v, i))
        load, mine = [0] * self.world, []
        for ref in sorted(groups, key=lambda r: -len(groups[r])):
            r = load.index(min(load))
            load[r] += len(groups[ref])
            if r == self.rank:
                mine.extend(groups[ref])
        return frozenset(mine)


def setup():
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Context(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def part_path(path, rank):
    return f"{path}.rank{rank}"


def merge_parts(path):
    """Append the rows of every part file of `path` to it (header once) and remove the parts."""
    parts = sorted(glob.glob(glob.escape(path) + ".rank*"))
    if not parts:
        return
    fresh = not os.path.isfile(path) or os.path.getsize(path) == 0
    with open(path, "a", newline="") as out:
        w = csv.writer(out)
        if fresh:
            w.writerow(["dis", "ref", "mos", "pred"])
        for p in parts:
            with open(p, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("pred") not in (None, ""):
                        w.writerow([row["dis"], row["ref"], row["mos"], row["pred"]])
            os.remove(p)
