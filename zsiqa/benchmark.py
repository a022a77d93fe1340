"""The bench command (`zsiqa bench`, bench.py): throughput of the batched engine against the
straightforward one-pair loop, on a synthetic PIPAL-like set, plus the backbone's own forward
throughput (see the command's --help, and docs/speed.md for measured figures)."""
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from zsiqa.distances import DISTANCES
from zsiqa.images import load_image
from zsiqa.output import to_json
from zsiqa.scorer import Scorer
from zsiqa.windows import window_count, windows


def make_set(folder, size, n_refs, n_pairs, seed=0):
    """PIPAL-like files: n_refs BMP references, n_pairs distorted BMPs spread over them;
    returns the pairs [(dis, ref)] grouped by reference, as PIPAL's label files list them."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    pairs = []
    refs = []
    for r in range(n_refs):
        path = os.path.join(folder, f"R{r:04d}.bmp")
        if not os.path.isfile(path):
            base = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
            Image.fromarray(base).resize((size, size), Image.BICUBIC).save(path)
        refs.append(path)
    for k in range(n_pairs):
        ref = refs[k % n_refs]
        path = os.path.join(folder, f"R{k % n_refs:04d}_{k:06d}.bmp")
        if not os.path.isfile(path):
            a = np.asarray(Image.open(ref), dtype=np.int16) + rng.integers(-25, 26, (size, size, 3), dtype=np.int16)
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)
        pairs.append((path, ref))
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_engine(scorer, pairs):
    sync(scorer.device)
    t = time.perf_counter()
    rows = {i: r for (_, i), r in scorer.score_files(pairs)}
    sync(scorer.device)
    return time.perf_counter() - t, rows


def time_loop(scorer, pairs):
    """The published code's shape: per pair, per window, one forward each for ref and dis."""
    out = {}
    sync(scorer.device)
    t = time.perf_counter()
    for i, (dis, ref) in enumerate(pairs):
        wr, wd = windows(load_image(ref)), windows(load_image(dis))
        per = []
        for k in range(wr.shape[0]):
            fr, fd = scorer.extractor(wr[k:k + 1]), scorer.extractor(wd[k:k + 1])
            per.append(torch.stack([DISTANCES[d](fd, fr) for d in scorer.distances], 1))
        out[i] = torch.cat(per).double().mean(0).cpu().numpy()
    sync(scorer.device)
    return time.perf_counter() - t, out


def time_forward(scorer, iters):
    x = torch.rand(scorer.batch_size, 3, 224, 224, device=scorer.device)
    for _ in range(3):
        scorer.extractor(x)
    sync(scorer.device)
    t = time.perf_counter()
    for _ in range(iters):
        scorer.extractor(x)
    sync(scorer.device)
    return iters * scorer.batch_size / (time.perf_counter() - t)


def main(a):
    """Time (a) the engine, (b) the one-pair loop and (c) the forward pass; print the figures."""
    scorer = Scorer(a.model, a.distance, device=a.device, precision=a.precision, weights=a.weights,
                    batch_size=a.batch_size, workers=a.workers, compile=a.compile == "on")
    if a.compile == "auto":
        scorer.compile_if_it_pays(a.pairs)
    gpu = scorer.device.type == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        pairs = make_set(a.data or tmp, a.size, a.refs, a.pairs)
        warm = pairs[: min(len(pairs), 2 * a.refs)]
        t_first, _ = time_engine(scorer, warm)  # warm-up: kernels, workers, compilation
        if gpu:
            torch.cuda.reset_peak_memory_stats(scorer.device)
        t_engine, rows = time_engine(scorer, pairs)
        peak = torch.cuda.max_memory_allocated(scorer.device) / 2**30 if gpu else None
        n_loop = min(len(pairs), a.loop_pairs if a.loop_pairs is not None else (100 if gpu else 4))
        t_loop, loop_rows = time_loop(scorer, pairs[:n_loop]) if n_loop else (float("nan"), {})
    fwd = time_forward(scorer, a.forward_iters or (30 if gpu else 2))
    rel = (np.abs(rows[i] - loop_rows[i]) / np.maximum(np.abs(loop_rows[i]), 1e-12) for i in loop_rows)
    agree = max((float(np.max(r)) for r in rel), default=float("nan"))
    per_pair = window_count(a.size, a.size) * (1 + a.refs / a.pairs)  # windows encoded per pair by the engine
    engine_rate, loop_rate = len(pairs) / t_engine, n_loop / t_loop if n_loop else float("nan")
    device_name = (torch.cuda.get_device_name(scorer.device) if gpu
                   else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    result = {"device": device_name, "model": a.model, "distances": list(scorer.distances), "precision": a.precision,
              "fused_kernels": gpu and os.environ.get("ZSIQA_FUSED", "1") != "0", "size": a.size, "refs": a.refs,
              "pairs": len(pairs), "batch_size": scorer.batch_size,
              "workers": scorer.workers, "engine_pairs_per_s": round(engine_rate, 2),
              "loop_pairs_per_s": round(loop_rate, 3),
              "loop_pairs_timed": n_loop, "speedup": round(engine_rate / loop_rate, 2) if n_loop else None,
              "forward_windows_per_s": round(fwd, 1), "forward_bound_pairs_per_s": round(fwd / per_pair, 1),
              "engine_share_of_forward": round(engine_rate * per_pair / fwd, 3),
              "engine_vs_loop_max_rel_diff": agree, "peak_gpu_mem_gib": round(peak, 2) if peak is not None else None,
              "compile": scorer.fixed_batch, "overlap": scorer.overlap, "first_call_s": round(t_first, 2),
              "first_call_pairs": len(warm), "torch": torch.__version__}
    report(result, a.json)
    return 0


def report(result, as_json=False):
    """Print the benchmark's figures (a few lines, or JSON)."""
    if as_json:
        print(to_json(result))
        return
    r = result
    fused = " (fused distances)" if r["fused_kernels"] else ""
    print(f"{r['device']} | {r['model']} {','.join(r['distances'])} | precision {r['precision']}{fused} | "
          f"{r['pairs']} pairs of {r['size']}px, {r['refs']} refs, batch {r['batch_size']}, workers {r['workers']}")
    print(f"  engine        {r['engine_pairs_per_s']:10.2f} pairs/s   (compiled: {r['compile']}, distances overlapped: "
          f"{r['overlap']}; first call {r['first_call_s']} s for {r['first_call_pairs']} pairs)")
    print(f"  one-pair loop {r['loop_pairs_per_s']:10.3f} pairs/s  (first {r['loop_pairs_timed']} pairs)   "
          f"speedup ×{r['speedup']}")
    print(f"  forward only  {r['forward_windows_per_s']:10.1f} windows/s = "
          f"{r['forward_bound_pairs_per_s']:.1f} pairs/s bound;  "
          f"engine at {100 * r['engine_share_of_forward']:.0f}% of it")
    peak = r["peak_gpu_mem_gib"]
    print(f"  engine vs loop: max relative difference {r['engine_vs_loop_max_rel_diff']:.2e}"
          + (f";  peak GPU memory {peak:.1f} GiB" if peak is not None else ""))
