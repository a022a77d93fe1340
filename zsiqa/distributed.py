"""Multi-process runs with torchrun: `torchrun --nproc_per_node K run.py ...`.

Pairs are sharded by reference group (so each reference is encoded once, on one rank);
each rank appends its rows to `<results>.rank<r>` part files and rank 0 merges them
(results.py), so the final files hold the same rows, in the same order, as a one-process
run. This module holds only the process-group calls; without torchrun each is a no-op.
"""
import contextlib
import os

import torch
import torch.distributed as tdist

from zsiqa.errors import UserError


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

    def from_rank0(self, fn, share=True):
        """fn() run on rank 0 alone, its value given to every rank (share=False: to rank 0
        only, others get None); a UserError there is raised on every rank, so no rank waits
        for a value that never comes."""
        value, error = None, None
        if self.rank == 0:
            try:
                value = fn()
            except UserError as e:
                error = str(e)
        if self.world > 1:
            got, error = self.broadcast((value if share else None, error))
            value = got if share or self.rank else value
        if error is not None:
            raise UserError(error)
        return value

    def sum(self, value):
        if self.world == 1:
            return value
        out = [None] * self.world
        tdist.all_gather_object(out, value)
        return sum(out)

    def union(self, sets):
        """{key: set} merged over the ranks."""
        if self.world == 1:
            return sets
        out, merged = [None] * self.world, {}
        tdist.all_gather_object(out, sets)
        for part in out:
            for key, values in part.items():
                merged.setdefault(key, set()).update(values)
        return merged

    def barrier(self):
        if self.world > 1:
            tdist.barrier()

    def shard(self, pairs, todo):
        """This rank's share of the (variant, pair) jobs, in `todo`'s order: whole reference
        groups, dealt out by size (largest first, to the least-loaded rank) so ranks finish
        together. pairs: [(dis, ref)]."""
        if self.world == 1:
            return list(todo)
        size = {}
        for _, i in todo:
            size[pairs[i][1]] = size.get(pairs[i][1], 0) + 1
        load, owner = [0] * self.world, {}
        for ref in sorted(size, key=lambda r: -size[r]):
            owner[ref] = load.index(min(load))
            load[owner[ref]] += size[ref]
        return [(v, i) for v, i in todo if owner[pairs[i][1]] == self.rank]


@contextlib.contextmanager
def session():
    """The torchrun process group for the block, if launched by torchrun (gloo on CPU, nccl
    on CUDA), left again at its end: a rank that exits with the group still up dies in C++
    teardown ("terminate called without an active exception", SIGABRT) and torchrun then
    fails the whole run. Without torchrun: a one-process Context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Context()
        return
    joined = not tdist.is_initialized()
    if joined:
        # timm imports torch.distributed.fsdp; imported after the group is up, that keeps the
        # group's gloo threads alive past destroy_process_group, and one of them then aborts
        # the process at exit now and then (SIGABRT, torchrun fails): import it before
        import timm  # noqa: F401
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    yield Context(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if joined:  # all ranks leave together (rank 0 finishes the files last), then the group goes
        tdist.barrier()
        tdist.destroy_process_group()

