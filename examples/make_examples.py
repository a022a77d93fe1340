#!/usr/bin/env python3
"""Write the bundled example pair images into zsiqa/data/examples/ (procedural, seeded; no third-party content).

ref.png is a 384×288 synthetic scene; dis_*.png are the same scene blurred, JPEG-compressed
(quality 12) and with Gaussian noise (σ = 20/255). Re-running gives the same files."""
import io
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zsiqa", "data", "examples")


def scene(w=384, h=288, seed=7):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    sky = np.stack([0.35 + 0.4 * y, 0.55 + 0.3 * y, 0.9 - 0.2 * y], -1)
    img = Image.fromarray((sky * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(14):
        cx, cy, r = rng.integers(0, w), rng.integers(h // 3, h), rng.integers(10, 60)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(20, 235, 3)))
    for i in range(0, w, 12):  # a striped fence: fine detail that blur and JPEG destroy
        d.rectangle([i, int(h * 0.72), i + 5, h], fill=(120 + i % 60, 80, 40))
    texture = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + texture, 0, 255).astype(np.uint8))


def main():
    ref = scene()
    ref.save(os.path.join(OUT, "ref.png"))
    ref.filter(ImageFilter.GaussianBlur(2.5)).save(os.path.join(OUT, "dis_blur.png"))
    buf = io.BytesIO()
    ref.save(buf, "JPEG", quality=12)
    Image.open(buf).convert("RGB").save(os.path.join(OUT, "dis_jpeg.png"))
    noisy = np.asarray(ref, np.float32) + np.random.default_rng(1).normal(0, 20, (ref.height, ref.width, 3))
    Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).save(os.path.join(OUT, "dis_noise.png"))


if __name__ == "__main__":
    main()
