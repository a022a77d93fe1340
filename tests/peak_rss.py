"""Score one random pair of SIZE×SIZE with clip_vitb32 and print the process's peak RSS in MB
(run in its own process by test_memory.py). Usage: python tests/peak_rss.py WEIGHTS SIZE DIR"""
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from zsiqa.scorer import Scorer  # noqa: E402

if __name__ == "__main__":
    weights, size, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    dis = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    paths = [os.path.join(folder, f"{n}{size}.png") for n in ("ref", "dis")]
    for path, a in zip(paths, (ref, dis)):
        Image.fromarray(a).save(path)
    score = Scorer("clip_vitb32", "l2", device="cpu", weights=weights)(dis=paths[1], ref=paths[0]).item()
    print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} {score:.8g}")
