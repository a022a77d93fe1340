"""The bench command (`zsiqa bench`, bench.py): throughput of the batched engine against the
straightforward one-pair loop, on a synthetic PIPAL-like set, plus the backbone's own forward
throughput (see the command's --help, and docs/speed.md for measured figures)."""
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from zsiqa import results
from zsiqa.config import BenchConfig
from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError, writing
from zsiqa.images import header_size, load_image
from zsiqa.jsontext import to_json
from zsiqa.scorer import Scorer
from zsiqa.windows import window_count, windows

MARKER = ".zsiqa-bench.json"  # the settings a --data folder's set was made with, written once it is complete


def make_set(folder, size, n_refs, n_pairs, seed=0):
    """A synthetic set in PIPAL's layout (so the eval command reads it as it reads PIPAL):
    n_refs BMP references in Train_Ref/, n_pairs distorted BMPs spread over them in Train_Dis/,
    labels in Train_Label/. A folder that already holds the complete set made with the same
    settings is reused as it is; anything else in it (another set, other files, a damaged or
    incomplete set), a path that is not a folder or whose parent is missing: UserError, before
    any file is written. Returns the pairs [(dis, ref)] grouped by reference, as PIPAL lists them."""
    made = {"size": size, "refs": n_refs, "pairs": n_pairs, "seed": seed}
    refs = [os.path.join(folder, "Train_Ref", f"A{r + 1:04d}.bmp") for r in range(n_refs)]
    names = [f"A{k % n_refs + 1:04d}_{k:06d}_00.bmp" for k in range(n_pairs)]
    pairs = [(os.path.join(folder, "Train_Dis", name), refs[k % n_refs]) for k, name in enumerate(names)]
    labels = {}
    for k, name in enumerate(names):
        file = os.path.join(folder, "Train_Label", f"A{k % n_refs + 1:04d}.txt")
        labels[file] = labels.get(file, "") + f"{name},{1500 + (k * 37) % 400}\n"
    if _holds_a_set(folder, made):
        _check_complete(folder, size, refs, pairs, labels)
    else:
        with writing(f"the set in --data {folder}", "what was written is left there; delete it before the next run"):
            _write_set(folder, made, refs, pairs, labels)
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def _write_set(folder, made, refs, pairs, labels):
    """Write the set's images and labels, then its marker (an interrupted run leaves none)."""
    rng = np.random.default_rng(made["seed"])
    size = made["size"]
    for sub in ("Train_Ref", "Train_Dis", "Train_Label"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for path in refs:
        base = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)
        Image.fromarray(base).resize((size, size), Image.BICUBIC).save(path)
    for path, ref in pairs:
        with Image.open(ref) as im:
            a = np.asarray(im, dtype=np.int16) + rng.integers(-25, 26, (size, size, 3), dtype=np.int16)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)
    for path, text in labels.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
        json.dump(made, f)


def _holds_a_set(folder, made):
    """True when --data `folder` holds a set made with the settings `made` (its marker says so),
    False when it is empty or missing (with its parent folder present); else UserError: images
    of another size or stale label files would be timed and scored as this set."""
    if not os.path.isdir(folder):
        parent = os.path.dirname(os.path.abspath(folder))
        if os.path.lexists(folder):
            raise UserError(f"--data {folder} is {_what_is(folder)}, not a folder: give an empty or new folder")
        if not os.path.isdir(parent):
            why = f"is {_what_is(parent)}" if os.path.lexists(parent) else "does not exist (a typo?)"
            raise UserError(f"--data {folder}: its parent {parent} {why}; give a folder in an existing one")
        return False
    try:
        if not os.listdir(folder):
            return False
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            held = json.load(f)
    except (OSError, ValueError):
        held = None
    if held != made:
        raise UserError(f"--data {folder} holds other files than a set of --size {made['size']}, --refs "
                        f"{made['refs']}, --pairs {made['pairs']} (or one whose making was interrupted): give an "
                        "empty or new folder")
    return True


def _what_is(path):
    """What a path that is there but not a folder is, in a few words."""
    if os.path.isfile(path):
        return "a file"
    return "a link to nothing" if not os.path.exists(path) else "a FIFO, socket or device"


def _check_complete(folder, size, refs, pairs, labels):
    """UserError unless `folder` holds exactly the set's files, each image a BMP of size×size
    with the size such a file has (a truncated or changed one would be timed as the set)."""
    blank = io.BytesIO()
    Image.new("RGB", (size, size)).save(blank, format="BMP")
    want = {os.path.join(folder, n) for n in ("Train_Ref", "Train_Dis", "Train_Label", MARKER)}
    want.update(refs, (dis for dis, _ in pairs), labels)
    problems = []
    for sub in ("", "Train_Ref", "Train_Dis", "Train_Label"):
        with contextlib.suppress(OSError):  # a missing subfolder: its files are missing below
            problems += [(p, "not part of the set") for p in sorted(os.path.join(folder, sub, n)
                         for n in os.listdir(os.path.join(folder, sub))) if p not in want]
    for path in [*refs, *(dis for dis, _ in pairs)]:
        dims, why = header_size(path)
        if why is None and (dims != (size, size) or os.path.getsize(path) != blank.tell()):
            why = "changed (another size than the set's BMP images)"
        if why:
            problems.append((path, why))
    for path, text in labels.items():
        try:
            with open(path, encoding="utf-8") as f:
                held = f.read()
        except (OSError, ValueError):
            held = None
        if held != text:
            problems.append((path, "missing" if held is None else "changed"))
    if problems:
        path, why = problems[0]
        raise UserError(f"--data {folder} holds a damaged or incomplete set: {len(problems)} file(s) missing, "
                        f"unreadable or changed (first {path}: {why}); delete the folder to make the set again")


def time_run(a: BenchConfig, scorer, root, tmp):
    """The eval command end to end on the same set, in a process of its own, as a user runs it:
    (wall seconds, its first summary row: scoring rate, seconds before and after scoring, and
    its results files' folder). Random weights are saved for it first, in the format the
    backbone's files have."""
    weights = a.weights
    if weights == "random":
        weights = os.path.join(tmp, "random_weights.pt")
        torch.save({k: v.detach().cpu() for k, v in scorer.backbone.family.checkpoint(scorer.extractor.model).items()},
                   weights)
    command = [sys.executable, "-m", "zsiqa", "eval", "-dat", "pipal", "--root", root, "-m", a.model, "-d",
               ",".join(scorer.distances), "--precision", a.precision, "--weights", weights, "--device",
               scorer.device.type, "--batch-size", str(scorer.batch_size), "--workers", str(scorer.workers),
               "--compile", a.compile, "-sdir", os.path.join(tmp, "results"), "--overwrite", "--no-progress", "--json"]
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise UserError(f"the eval command failed in --via-run: {last[:300]}")
    return wall, {**json.loads(proc.stdout)[0], "folder": os.path.join(tmp, "results")}


def run_vs_engine(row, model, pairs, rows, tolerance=1e-4):
    """The largest relative difference between the eval command's per-pair scores (its results
    files) and the engine's on the same pairs; UserError unless it holds every pair and agrees
    within `tolerance`: the two rates must measure the same work."""
    worst = 0.0
    index = {os.path.basename(dis): i for i, (dis, _) in enumerate(pairs)}
    for j, d in enumerate(row["distances"]):
        frame, _ = results.read_frame(os.path.join(row["folder"], f"pipal_{model}_{d}.csv"))
        names = [os.path.basename(dis) for dis in frame.dis]
        if sorted(names) != sorted(index):
            raise UserError(f"--via-run: the eval command's {d} file holds {len(frame)} rows, not the {len(pairs)} "
                            "pairs the engine scored")
        want = np.array([rows[index[name]][j] for name in names])
        worst = max(worst, float(np.max(np.abs(frame.pred.to_numpy() - want) / np.maximum(np.abs(want), 1e-12))))
    if worst > tolerance:
        raise UserError(f"--via-run: the eval command's scores differ from the engine's by up to {worst:.3g} "
                        "(relative): the two rates would not measure the same work")
    return worst


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


def main(a: BenchConfig):
    """Time (a) the engine, (b) the one-pair loop, (c) the forward pass and, with --via-run, (d)
    the eval command end to end on the same set; print the figures."""
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data or os.path.join(tmp, "set")
        pairs = make_set(root, a.size, a.refs, a.pairs)
        scorer = Scorer(a.model, a.distance, device=a.device, precision=a.precision, weights=a.weights,
                        batch_size=a.batch_size, workers=a.workers, compile=a.compile == "on")
        if a.compile == "auto":
            scorer.compile_if_it_pays(a.pairs)
        result, rows = measure(a, scorer, pairs)
        if a.via_run:
            wall, row = time_run(a, scorer, root, tmp)
            result["via_run_vs_engine_max_rel_diff"] = run_vs_engine({**row, "distances": result["distances"]},
                                                                     a.model, pairs, rows)
            rate = row["pairs_per_s"]
            result.update(via_run_wall_s=round(wall, 2), via_run_pairs_per_s=rate,
                          via_run_share_of_engine=round(rate / result["engine_pairs_per_s"], 3),
                          via_run_fixed_s=round(wall - result["pairs"] / rate, 2),
                          via_run_before_scoring_s=row["seconds_before_scoring"],
                          via_run_after_scoring_s=row["seconds_after_scoring"])
    report(result, a.json)
    return 0


def measure(a: BenchConfig, scorer, pairs):
    """The engine, loop and forward-only figures on the set's pairs [(dis, ref)], and the
    engine's scores {pair index: scores in the scorer's distance order}."""
    gpu = scorer.device.type == "cuda"
    warm = pairs[: min(len(pairs), 2 * a.refs)]
    t_first, _ = time_engine(scorer, warm)  # warm-up: kernels, workers, compilation
    if gpu:
        torch.cuda.reset_peak_memory_stats(scorer.device)
    t_engine, rows = time_engine(scorer, pairs)
    peak = torch.cuda.max_memory_allocated(scorer.device) / 2**30 if gpu else None
    n_loop = min(len(pairs), a.loop_pairs if a.loop_pairs is not None else (100 if gpu else 4))
    t_loop, loop_rows = time_loop(scorer, pairs[:n_loop]) if n_loop else (None, {})
    fwd = time_forward(scorer, a.forward_iters or (30 if gpu else 2))
    rel = (np.abs(rows[i] - loop_rows[i]) / np.maximum(np.abs(loop_rows[i]), 1e-12) for i in loop_rows)
    agree = max((float(np.max(r)) for r in rel), default=None)  # None: no loop timed (--loop-pairs 0)
    per_pair = window_count(a.size, a.size) * (1 + a.refs / a.pairs)  # windows encoded per pair by the engine
    engine_rate, loop_rate = len(pairs) / t_engine, n_loop / t_loop if n_loop else None
    device_name = (torch.cuda.get_device_name(scorer.device) if gpu
                   else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    return {"device": device_name, "model": a.model, "distances": list(scorer.distances), "precision": a.precision,
            "fused_kernels": gpu and os.environ.get("ZSIQA_FUSED", "1") != "0", "size": a.size, "refs": a.refs,
            "pairs": len(pairs), "batch_size": scorer.batch_size, "workers": scorer.workers,
            "engine_pairs_per_s": round(engine_rate, 2), "loop_pairs_per_s": round(loop_rate, 3) if n_loop else None,
            "loop_pairs_timed": n_loop, "speedup": round(engine_rate / loop_rate, 2) if n_loop else None,
            "forward_windows_per_s": round(fwd, 1), "forward_bound_pairs_per_s": round(fwd / per_pair, 1),
            "engine_share_of_forward": round(engine_rate * per_pair / fwd, 3),
            "engine_vs_loop_max_rel_diff": agree, "peak_gpu_mem_gib": round(peak, 2) if peak is not None else None,
            "compile": scorer.fixed_batch, "overlap": scorer.overlap, "first_call_s": round(t_first, 2),
            "first_call_pairs": len(warm), "torch": torch.__version__}, rows


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
    if r["loop_pairs_timed"]:
        print(f"  one-pair loop {r['loop_pairs_per_s']:10.3f} pairs/s  (first {r['loop_pairs_timed']} pairs)   "
              f"speedup ×{r['speedup']}")
    else:
        print("  one-pair loop    not timed (--loop-pairs 0)")
    print(f"  forward only  {r['forward_windows_per_s']:10.1f} windows/s = "
          f"{r['forward_bound_pairs_per_s']:.1f} pairs/s bound;  "
          f"engine at {100 * r['engine_share_of_forward']:.0f}% of it")
    if "via_run_wall_s" in r:
        share = 100 * r["via_run_share_of_engine"]
        print(f"  via run.py    {r['via_run_pairs_per_s']:10.2f} pairs/s   ({share:.0f}% of the "
              f"engine's rate; {r['via_run_wall_s']} s end to end, {r['via_run_fixed_s']} s of it outside scoring: "
              f"{r['via_run_before_scoring_s']} s from its arguments to the first pair, "
              f"{r['via_run_after_scoring_s']} s after the last)")
    peak, agree = r["peak_gpu_mem_gib"], r["engine_vs_loop_max_rel_diff"]
    lines = ([f"engine vs loop: max relative difference {agree:.2e}"] if agree is not None else []) + (
        [f"peak GPU memory {peak:.1f} GiB"] if peak is not None else [])
    if lines:
        print("  " + ";  ".join(lines))
