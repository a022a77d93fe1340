"""skld, jsd and wsd fused into two Triton kernels for CUDA (the same formulas as zsiqa/distances.py).

Eagerly, the three "deep distribution" distances pass over the [N, 64, M] column tensors
some 75 times (softmaxes, logs, products, cumulative sums), which makes them, not the
backbone, the bottleneck on a GPU. Here each side is read twice: once for the per-row
statistics of wsd's softmax over columns, once by a kernel that computes, per block of
columns and entirely in registers, the row softmaxes and logs, the three per-column values
and the squared-difference term, and writes one partial sum per block. Results agree with
the eager path to float32 rounding (tests compare them in Triton's CPU interpreter).
"""
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: distances.py stays on the eager path
    triton = None

if triton is not None:
    @triton.jit
    def _l2_weight(d):
        """The published weight of the L2 term: 1 / (sqrt(exp(−1/(d+10))) · (d+10)²)."""
        return 1 / (tl.sqrt(tl.exp(-1 / (d + 10))) * (d + 10) * (d + 10))

    @triton.jit
    def _row_stats(x_ptr, max_ptr, sum_ptr, M, BLOCK: tl.constexpr):
        """Per row of [R, M]: max and Σ exp(x − max) over the M columns (online)."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        for start in range(0, M, BLOCK):
            v = tl.load(x_ptr + row.to(tl.int64) * M + start + offs, mask=start + offs < M, other=float("-inf"))
            new_m = tl.maximum(m, tl.max(v, axis=0))
            s = s * tl.exp(m - new_m) + tl.sum(tl.exp(v - new_m), axis=0)
            m = new_m
        tl.store(max_ptr + row, m)
        tl.store(sum_ptr + row, s)

    @triton.jit
    def _columns(x_ptr, y_ptr, xmax_ptr, xsum_ptr, ymax_ptr, ysum_ptr, out_ptr, M, n_blocks,
                 BLOCK: tl.constexpr, R: tl.constexpr):
        """One window n, one block of columns: Σ over the block of the per-column skld, jsd and
        wsd values (each with its published L2 term) → out[n, 0..2, block]."""
        n = tl.program_id(0)
        blk = tl.program_id(1)
        rows = tl.arange(0, R)
        cols = blk * BLOCK + tl.arange(0, BLOCK)
        valid = cols[None, :] < M
        base = n.to(tl.int64) * R * M
        idx = base + rows[:, None].to(tl.int64) * M + cols[None, :]
        x = tl.load(x_ptr + idx, mask=valid, other=0.0)
        y = tl.load(y_ptr + idx, mask=valid, other=0.0)
        d = x - y
        sq = tl.sum(d * d, axis=0)
        # softmax over the 64 rows of each column, + 1e-10
        ex = tl.exp(x - tl.max(x, axis=0)[None, :])
        p = ex / tl.sum(ex, axis=0)[None, :] + 1e-10
        ey = tl.exp(y - tl.max(y, axis=0)[None, :])
        q = ey / tl.sum(ey, axis=0)[None, :] + 1e-10
        lp = tl.log(p)
        lq = tl.log(q)
        kld = tl.sum((p - q) * (lp - lq), axis=0) / 2
        lm = tl.log((p + q) / 2 + 1e-17)
        js = (tl.sum(p * (lp - lm), axis=0) + tl.sum(q * (lq - lm), axis=0)) / 2
        # wsd: softmax over the M columns of each row, cumulative over rows, first 63 rows
        rx = n * R + rows
        u = tl.exp(x - tl.load(xmax_ptr + rx)[:, None]) / tl.load(xsum_ptr + rx)[:, None]
        v = tl.exp(y - tl.load(ymax_ptr + rx)[:, None]) / tl.load(ysum_ptr + rx)[:, None]
        cdiff = tl.cumsum(u, axis=0) - tl.cumsum(v, axis=0)
        w = tl.sum(tl.where(rows[:, None] < R - 1, tl.abs(cdiff), 0.0), axis=0)
        colmask = cols < M
        o = out_ptr + (n * 4) * n_blocks + blk
        tl.store(o, tl.sum(tl.where(colmask, kld + sq * _l2_weight(kld), 0.0), axis=0))
        tl.store(o + n_blocks, tl.sum(tl.where(colmask, js, 0.0), axis=0))
        tl.store(o + 2 * n_blocks, tl.sum(tl.where(colmask, w + sq * _l2_weight(w), 0.0), axis=0))
        tl.store(o + 3 * n_blocks, tl.sum(sq, axis=0))

    @triton.jit
    def _cosine(x_ptr, y_ptr, out_ptr, R, D, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
        """Per row of [R, D]: 1 − x·y / (max(‖x‖, 1e-8) · max(‖y‖, 1e-8)), as torch's
        cosine_similarity(eps=1e-8) computes it."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_D)
        mask = (rows[:, None] < R) & (cols[None, :] < D)
        idx = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        nx = tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), 1e-8)
        ny = tl.maximum(tl.sqrt(tl.sum(y * y, axis=1)), 1e-8)
        tl.store(out_ptr + rows, 1 - tl.sum(x * y, axis=1) / (nx * ny), mask=rows < R)


def available(device):
    """Fused kernels run on CUDA tensors when Triton is installed (or in its interpreter)."""
    return triton is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


def distribution_distances(x, y, block=32):
    """x, y: column tensors [N, 64, M] (distances.to_columns, float32) → {'skld', 'jsd',
    'wsd': [N]}, each after the published mean over columns and log(raw + 1) ** 0.25, and
    'sq_total': Σ (x − y)² over each window [N] (l2's numerator when nothing was cropped)."""
    x, y = x.float().contiguous(), y.float().contiguous()
    n, rows, m = x.shape
    stats = torch.empty(4, n * rows, device=x.device, dtype=torch.float32)
    _row_stats[(n * rows,)](x, stats[0], stats[1], m, BLOCK=1024)
    _row_stats[(n * rows,)](y, stats[2], stats[3], m, BLOCK=1024)
    n_blocks = triton.cdiv(m, block)
    part = torch.empty(n, 4, n_blocks, device=x.device, dtype=torch.float32)
    _columns[(n, n_blocks)](x, y, stats[0], stats[1], stats[2], stats[3], part, m, n_blocks,
                            BLOCK=block, R=rows, num_warps=4)
    sums = part.sum(-1)
    out = torch.log(sums[:, :3] / m + 1) ** 0.25
    return {"skld": out[:, 0], "jsd": out[:, 1], "wsd": out[:, 2], "sq_total": sums[:, 3]}


def token_cosine(f_dis, f_ref, rows_per_program=8):
    """The `cos` distance of stacks [N, L, ..., D]: Σ over L of the mean of 1 − cos along D,
    reading each side once → [N]."""
    x, y = f_dis.contiguous(), f_ref.contiguous()
    d = x.shape[-1]
    r = x.numel() // d
    one_minus = torch.empty(r, device=x.device, dtype=torch.float32)
    _cosine[(triton.cdiv(r, rows_per_program),)](x, y, one_minus, r, d, ROWS=rows_per_program,
                                                 BLOCK_D=triton.next_power_of_2(d))
    return one_minus.view(x.shape[0], x.shape[1], -1).mean(-1).sum(1)
