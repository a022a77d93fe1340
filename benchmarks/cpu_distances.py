"""The distances' cost against the backbone's on the CPU, in one process, interleaved: per window,
dinov1's forward pass (random weights) and the distance sets of issue 29 (wsd; the five published;
all six) by the CPU path and by the eager formulas (ZSIQA_TILED=0). Prints JSON with each set's
median ms per window and the engine share of the forward-only bound it implies for the issue's
bench command (4 windows a pair, 2 references for 40 pairs): fwd·(1 + 2/40) / (fwd·(1 + 2/40) + dist).

Usage: python benchmarks/cpu_distances.py [--repeats 3]"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from zsiqa.distances import compute  # noqa: E402
from zsiqa.scorer import Scorer  # noqa: E402

SETS = {"wsd": ("wsd",), "five": ("l2", "cos", "skld", "jsd", "wsd"), "six": ("l2", "cos", "skld", "jsd", "wsd", "swd")}


def timed(fn, *args):
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--repeats", type=int, default=3)
    args = a.parse_args()
    scorer = Scorer("dinov1", "l2", device="cpu", weights="random")
    wins = torch.rand(4, 3, 224, 224)
    f, g = scorer.encode(wins[:2])[0], scorer.encode(wins[2:])[0]  # [2, 12, 197, 768] stacks
    ms = {"forward": []}
    for _ in range(args.repeats):
        ms["forward"].append(timed(scorer.extractor, wins) / 4 * 1000)
        for name, names in SETS.items():
            for path in ("cpu_path", "eager"):
                os.environ["ZSIQA_TILED"] = "1" if path == "cpu_path" else "0"
                ms.setdefault(f"{name}_{path}", []).append(timed(compute, names, f, g) / 2 * 1000)
    med = {k: round(statistics.median(v), 1) for k, v in ms.items()}
    fwd = med["forward"] * (1 + 2 / 40)
    share = {k: round(fwd / (fwd + v), 3) for k, v in med.items() if k != "forward"}
    print(json.dumps({"device": f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads), shared",
                      "torch": torch.__version__, "repeats": args.repeats, "ms_per_window_median": med,
                      "ms_per_window_all": {k: [round(x, 1) for x in v] for k, v in ms.items()},
                      "implied_engine_share_of_forward": share}, indent=1))


if __name__ == "__main__":
    main()
