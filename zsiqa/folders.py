"""Pairing output folders (one per method) with a reference folder, for scoring your own
outputs without labels (`zsiqa eval -dat dirs`).

Pairing rule: a file under an output folder goes with the reference that has the same
relative path without extension (`GT/x/0001.png` ↔ `OUT/x/0001.jpg`; subfolders kept).
"""
import os
from dataclasses import dataclass

from zsiqa.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
SHOWN = 3  # names quoted in a message about many files


@dataclass
class MethodSet:
    """One output folder: its name (the folder's), folder, and pairs (ref path, dis path),
    both relative to their own folders."""
    name: str
    folder: str
    pairs: list


def _images_by_stem(folder):
    """{relative path without extension: relative path} of the images under folder;
    UserError naming two files that share a stem."""
    found, clashes = {}, []
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rel = os.path.relpath(os.path.join(base, f), folder).replace(os.sep, "/")
            stem = os.path.splitext(rel)[0]
            if stem in found:
                clashes.append(f"{found[stem]} and {rel}")
            found[stem] = rel
    if clashes:
        raise UserError(f"{folder}: {len(clashes)} file name(s) differ only by extension, so the pairing is "
                        f"ambiguous: {'; '.join(clashes[:SHOWN])}")
    return found


def _listing(names):
    return ", ".join(sorted(names)[:SHOWN]) + (", …" if len(names) > SHOWN else "")


def _check_folders(ref_dir, dis_dirs):
    if not dis_dirs:
        raise UserError("-dat dirs needs at least one --dis-dir")
    for d in [ref_dir, *dis_dirs]:
        if not d or not os.path.isdir(d):
            raise UserError(f"folder not found: {d}")
    real = [os.path.realpath(d) for d in dis_dirs]
    if os.path.realpath(ref_dir) in real:
        raise UserError(f"{ref_dir} is given as both the reference folder and an output folder")
    twice = sorted({d for d in real if real.count(d) > 1})
    if twice:
        raise UserError(f"output folder given twice: {twice[0]}")
    names = [os.path.basename(os.path.normpath(d)) for d in dis_dirs]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        raise UserError(f"two output folders are named '{same[0]}': results files are named after folders; rename one")
    return names


def pair_folders(ref_dir, dis_dirs, skip_missing=False, warn=None):
    """Pair every output folder's images with the references.

    Args:
        ref_dir: the reference (ground-truth) folder.
        dis_dirs: output folders, one per method.
        skip_missing: score the pairs found instead of stopping at files without a partner.
        warn: a function taking one line, for what --skip-missing skips.

    Returns:
        [MethodSet] in the order given. Raises UserError (one line) for missing or repeated
        folders, ambiguous names, an output folder with no partners, and (unless
        skip_missing) files of either side without a partner.
    """
    names = _check_folders(ref_dir, dis_dirs)
    refs = _images_by_stem(ref_dir)
    if not refs:
        raise UserError(f"no images in the reference folder {ref_dir}")
    sets = []
    for name, folder in zip(names, dis_dirs):
        outs = _images_by_stem(folder)
        common = [s for s in outs if s in refs]
        if not common:
            raise UserError(f"{folder}: no image has a partner in {ref_dir} (same relative path without extension)"
                            + (f"; e.g. {_listing(outs.values())}" if outs else "; the folder holds no images"))
        orphans = [outs[s] for s in outs if s not in refs]
        unmatched = [refs[s] for s in refs if s not in outs]
        if orphans or unmatched:
            msg = (f"{folder}: {len(orphans)} output file(s) without a reference"
                   + (f" (e.g. {_listing(orphans)})" if orphans else "")
                   + f", {len(unmatched)} reference(s) without an output"
                   + (f" (e.g. {_listing(unmatched)})" if unmatched else ""))
            if not skip_missing:
                raise UserError(msg + "; pass --skip-missing to score the pairs found")
            if warn:
                warn(f"warning: {msg}; scoring the {len(common)} pairs found")
        sets.append(MethodSet(name, folder, [(refs[s], outs[s]) for s in sorted(common)]))
    return sets
