#!/usr/bin/env python3
"""How long the first score takes: `run_single_img.py` on one 224-px pair on the CPU, against
the floor (benchmarks/floor.py: import torch and the model library, build the architecture
on the meta device, load the checkpoint with assign=True, run the two forward passes).

  python benchmarks/first_score.py --dinov1 FILE --clip FILE [--repeats 5] [--json]

FILE: a DINO ViT-B/16 checkpoint (dino_vitbase16_pretrain.pth) and an OpenAI CLIP ViT-B/32 one
(ViT-B-32.pt); any weights in those formats do, the time does not depend on the values.
Runs alternate tool and floor, each a fresh process; prints the median wall time of each and
their ratio per backbone. Both print the same l2 score (checked).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_pair(folder):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    paths = [os.path.join(folder, n) for n in ("ref.png", "dis.png")]
    for path, x in zip(paths, (a, b)):
        Image.fromarray(x).save(path)
    return paths


def timed(command):
    """(seconds, the last number the command printed)."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-2000:]}")
    return seconds, float(proc.stdout.split()[-1])


def measure(model, weights, ref, dis, repeats):
    tool = [sys.executable, os.path.join(ROOT, "run_single_img.py"), "-ref", ref, "-dis", dis, "-m", model, "-d", "l2",
            "--weights", weights, "--device", "cpu"]
    floor = [sys.executable, os.path.join(HERE, "floor.py"), model, weights, ref, dis]
    times = {"tool": [], "floor": []}
    for _ in range(repeats):
        for name, command in (("tool", tool), ("floor", floor)):
            seconds, score = timed(command)
            times[name].append(seconds)
            times.setdefault(f"{name}_score", score)
    if abs(times["tool_score"] - times["floor_score"]) > 1e-5 * abs(times["floor_score"]):
        sys.exit(f"{model}: the tool and the floor disagree ({times['tool_score']} vs {times['floor_score']})")
    tool_s, floor_s = statistics.median(times["tool"]), statistics.median(times["floor"])
    return {"model": model, "tool_s": round(tool_s, 2), "floor_s": round(floor_s, 2),
            "ratio": round(tool_s / floor_s, 3), "runs": repeats, "tool_all": [round(t, 2) for t in times["tool"]],
            "floor_all": [round(t, 2) for t in times["floor"]]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dinov1", required=True, metavar="FILE", help="a DINO ViT-B/16 checkpoint")
    p.add_argument("--clip", required=True, metavar="FILE", help="an OpenAI CLIP ViT-B/32 checkpoint")
    p.add_argument("--repeats", type=int, default=5, help="runs of each, alternating (default 5)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref, dis = make_pair(tmp)
        rows = [measure(m, f, ref, dis, a.repeats) for m, f in (("dinov1", a.dinov1), ("clip_vitb32", a.clip))]
    if a.json:
        print(json.dumps({"cpu_cores": os.cpu_count(), "rows": rows}, indent=1))
        return
    for r in rows:
        print(f"{r['model']:12} run_single_img.py {r['tool_s']:6.2f} s   floor {r['floor_s']:6.2f} s   "
              f"×{r['ratio']:.2f}  (median of {r['runs']})")


if __name__ == "__main__":
    main()
