"""Tiny datasets in each supported layout, written by the tests (random images)."""
import csv
import os

import numpy as np
from PIL import Image


def _img(path, w, h, seed, ext_mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    arr = np.asarray(im).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)


def _distort(ref_path, out, level, seed):
    """A distorted version: more noise for a higher level (so labels can track it)."""
    rng = np.random.default_rng(seed)
    a = np.asarray(Image.open(ref_path)).astype(np.float32)
    a = a + rng.normal(0, 6 * level, a.shape)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(out)


def _write_rows(path, rows):
    """A CSV file with the rows' keys as header, in their order."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def make_pipal(root, n_ref=2, n_dis=3, size=(240, 232)):
    for r in range(1, n_ref + 1):
        name = f"A{r:04d}"
        _img(f"{root}/Train_Ref/{name}.bmp", *size, r)
        lines = []
        for k in range(n_dis):
            dis = f"{name}_{k:02d}_00.bmp"
            _distort(f"{root}/Train_Ref/{name}.bmp", f"{root}/Train_Dis/{dis}", k + 1, 10 * r + k)
            lines.append(f"{dis},{1600 - 100 * k + r:.4f}\n")
        os.makedirs(f"{root}/Train_Label", exist_ok=True)
        open(f"{root}/Train_Label/{name}.txt", "w").writelines(lines)
    return root


def make_live(root, per_folder=2, size=(232, 228)):
    """img1 of each folder is an original (orgs = 1), the rest distorted."""
    from scipy.io import savemat
    refs = ["bikes.bmp", "house.bmp"]
    for i, r in enumerate(refs):
        _img(f"{root}/refimgs/{r}", *size, 50 + i)
    dmos, orgs, names = [], [], []
    for f, folder in enumerate(["jp2k", "jpeg", "wn", "gblur", "fastfading"]):
        for i in range(1, per_folder + 1):
            ref = refs[(i + f) % 2]
            level = 0 if i == 1 else i + f
            _distort(f"{root}/refimgs/{ref}", f"{root}/{folder}/img{i}.bmp", level, 100 * f + i)
            dmos.append(10.0 * level - 1.5)
            orgs.append(1 if i == 1 else 0)
            names.append(ref)
    savemat(f"{root}/dmos_realigned.mat", {"dmos_new": np.array([dmos]), "orgs": np.array([orgs]),
                                           "dmos_std": np.ones((1, len(dmos)))})
    cell = np.empty((1, len(names)), dtype=object)
    for i, n in enumerate(names):
        cell[0, i] = np.array([n])
    savemat(f"{root}/refnames_all.mat", {"refnames_all": cell})
    return root


def make_tid2013(root, n_ref=2, n_dis=3, size=(236, 226)):
    lines = []
    for r in range(1, n_ref + 1):
        _img(f"{root}/reference_images/I{r:02d}.BMP", *size, 200 + r)
        for k in range(1, n_dis + 1):
            disk = f"i{r:02d}_01_{k}.bmp" if k % 2 else f"I{r:02d}_01_{k}.bmp"   # case varies on disk
            _distort(f"{root}/reference_images/I{r:02d}.BMP", f"{root}/distorted_images/{disk}", k, 300 + 10 * r + k)
            lines.append(f"{7.0 - k:.5f} i{r:02d}_01_{k}.bmp\n")               # label file: lower case
    open(f"{root}/mos_with_names.txt", "w").writelines(lines)
    return root


def make_kadid(root, n_ref=2, n_dis=3, size=(230, 240)):
    rows = []
    for r in range(1, n_ref + 1):
        _img(f"{root}/images/I{r:02d}.png", *size, 400 + r)
        for k in range(1, n_dis + 1):
            _distort(f"{root}/images/I{r:02d}.png", f"{root}/images/I{r:02d}_01_{k:02d}.png", k, 500 + 10 * r + k)
            rows.append({"dist_img": f"I{r:02d}_01_{k:02d}.png", "ref_img": f"I{r:02d}.png", "dmos": 5.0 - k,
                         "var": 0.1})
    _write_rows(f"{root}/dmos.csv", rows)
    return root


def make_csv(root, n=4, size=(224, 250)):
    rows = []
    for k in range(n):
        _img(f"{root}/gt/{k}.png", *size, 600 + k)
        _distort(f"{root}/gt/{k}.png", f"{root}/out/{k}.png", k + 1, 700 + k)
        rows.append({"ref": f"gt/{k}.png", "dis": f"out/{k}.png", "mos": 4.5 - k})
    _write_rows(f"{root}/list.csv", rows)
    return f"{root}/list.csv"


def make_dirs(root, levels=(("A", 1), ("B", 4)), n=8, size=(224, 232), sub=True):
    """A reference folder GT/ and one output folder per (name, noise level), files paired by
    name (GT/0.png ↔ A/0.png; with `sub`, the last image in a subfolder x/). Returns
    (GT folder, [output folders])."""
    names = [f"x/{k}" if sub and k == n - 1 else str(k) for k in range(n)]
    for k, name in enumerate(names):
        _img(f"{root}/GT/{name}.png", *size, 800 + k)
    for m, (method, level) in enumerate(levels):
        for k, name in enumerate(names):
            _distort(f"{root}/GT/{name}.png", f"{root}/{method}/{name}.png", level, 900 + 50 * m + k)
    return f"{root}/GT", [f"{root}/{method}" for method, _ in levels]
