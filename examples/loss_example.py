#!/usr/bin/env python3
"""Train a small denoising network with a ZS-IQA distance as its loss, as a training loop would.

  python examples/loss_example.py                                   # dinov1 l2, 200 steps
  python examples/loss_example.py --steps 5 --weights dino_vitbase16_pretrain.pth
  python examples/loss_example.py --device cuda --crop 0            # the whole 384x288 image

A three-layer CNN learns to remove Gaussian noise from a crop of the bundled ref.png. Nothing is
clamped: the network's output is scored as it is, even where it leaves [0, 1]. The crop is
160 px, under the metric's 224-px window, so the loss resizes both images (resize=224,
bilinear, differentiable). The loss moves with .to(device) like any module, and the network's
state_dict holds no backbone. Prints the loss and the PSNR against the clean crop as it goes.
"""
import argparse
import io
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import torch  # noqa: E402

from zsiqa import PerceptualLoss, example  # noqa: E402
from zsiqa.images import load_image  # noqa: E402


class Denoiser(torch.nn.Module):
    """A small residual CNN that holds its training loss, as training code often does."""

    def __init__(self, criterion, width=32):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, 3, 3, padding=1))
        self.criterion = criterion

    def forward(self, x):
        return x + self.body(x)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", default=example("ref.png"), help="clean image (default: the bundled example ref.png)")
    p.add_argument("-m", "--model", default="dinov1", help="backbone (default dinov1)")
    p.add_argument("-d", "--distance", default="l2", help="distance (default l2, the loss's default)")
    p.add_argument("--weights", help="checkpoint file (else the usual lookup)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--steps", type=int, default=200, help="Adam steps (default 200)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 0.001)")
    p.add_argument("--noise", type=float, default=0.1, help="Gaussian noise σ in [0, 1] units (default 0.1)")
    p.add_argument("--crop", type=int, default=160, help="centre crop N×N (default 160; 0: the whole image)")
    p.add_argument("--every", type=int, default=10, help="print every N steps (default 10)")
    return p


def psnr(x, y):
    return float(10 * torch.log10(1 / (x - y).pow(2).mean()))


def main(argv=None):
    args = build_parser().parse_args(argv)
    clean = load_image(args.image)[None]
    if args.crop:
        top, left = (max(0, (s - args.crop) // 2) for s in clean.shape[-2:])
        clean = clean[..., top:top + args.crop, left:left + args.crop]
    small = min(clean.shape[-2:]) < 224
    criterion = PerceptualLoss(args.model, args.distance, weights=args.weights, resize=224 if small else None)
    net = Denoiser(criterion).to(args.device)  # moves the loss's frozen backbone too
    clean = clean.to(args.device)
    noisy = clean + args.noise * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)).to(args.device)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    print(f"start: PSNR {psnr(noisy, clean):.2f} dB; {args.model} {args.distance} on {args.device}, "
          f"{clean.shape[-1]}x{clean.shape[-2]} px" + (" resized to 224 in the loss" if small else ""))
    t0 = time.time()
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        out = net(noisy)                  # not clamped: the loss takes any finite values
        loss = net.criterion(out, clean)  # the distorted image (here the output) first
        loss.backward()
        opt.step()
        if step % args.every == 0 or step in (1, args.steps):
            print(f"step {step:4d}  loss {loss.item():.5g}  PSNR {psnr(out.detach(), clean):.2f} dB  "
                  f"range [{out.min().item():.3f}, {out.max().item():.3f}]  ({time.time() - t0:.1f} s)")
    saved = io.BytesIO()
    torch.save(net.state_dict(), saved)
    print(f"the network's state_dict: {len(net.state_dict())} tensors, {saved.tell() / 1024:.0f} KiB (no backbone)")
    return 0


if __name__ == "__main__":
    main()
