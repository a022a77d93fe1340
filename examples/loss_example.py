#!/usr/bin/env python3
"""Restore a noisy copy of examples/ref.png by minimising a ZS-IQA distance with Adam.

  python examples/loss_example.py                                  # dinov1 l2, 300 steps
  python examples/loss_example.py --steps 5 --weights /tmp/zsiqa_ckpt/dinov1_seed0.pth
  python examples/loss_example.py --crop 0 --device cuda           # the whole 384×288 image

Works on a 224×224 centre crop by default (one window: a few seconds per step on a CPU).

Prints the loss and the PSNR against the clean image as it goes. Weights come from --weights
or the usual lookup ($ZSIQA_WEIGHTS_DIR, library caches, download).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import torch  # noqa: E402

from zsiqa import PerceptualLoss  # noqa: E402
from zsiqa.images import load_image  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=os.path.join(HERE, "ref.png"), help="clean image (default examples/ref.png)")
    p.add_argument("-m", "--model", default="dinov1", help="backbone (default dinov1)")
    p.add_argument("-d", "--distance", default="l2", help="distance (default l2)")
    p.add_argument("--weights", help="checkpoint file (else the usual lookup)")
    p.add_argument("--layers", help="compare only these blocks, e.g. 1-6")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--steps", type=int, default=300, help="Adam steps (default 300)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    p.add_argument("--noise", type=float, default=0.1, help="Gaussian noise σ in [0, 1] units (default 0.1)")
    p.add_argument("--crop", type=int, default=224, help="centre crop N×N first (default 224; 0: whole image)")
    p.add_argument("--every", type=int, default=10, help="print every N steps (default 10)")
    return p


def psnr(x, y):
    return float(10 * torch.log10(1 / (x - y).pow(2).mean()))


def main(argv=None):
    args = build_parser().parse_args(argv)
    criterion = PerceptualLoss(args.model, args.distance, weights=args.weights, device=args.device, layers=args.layers)
    dev = criterion.extractor.device
    clean = load_image(args.image)[None].to(dev)
    if args.crop:
        top, left = (max(0, (s - args.crop) // 2) for s in clean.shape[-2:])
        clean = clean[..., top:top + args.crop, left:left + args.crop]
    gen = torch.Generator().manual_seed(0)
    noisy = (clean + args.noise * torch.randn(clean.shape, generator=gen).to(dev)).clamp(0, 1)
    x = noisy.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=args.lr)
    print(f"start: PSNR {psnr(noisy, clean):.2f} dB ({args.model} {args.distance} on {dev})")
    t0 = time.time()
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss = criterion(x.clamp(0, 1), clean)
        loss.backward()
        opt.step()
        if step % args.every == 0 or step in (1, args.steps):
            with torch.no_grad():
                print(f"step {step:4d}  loss {loss.item():.5g}  PSNR {psnr(x.clamp(0, 1), clean):.2f} dB  "
                      f"({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    main()
