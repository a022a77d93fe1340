"""Pairing output folders (one per method) with a reference folder, for scoring your own
outputs without labels (`zsiqa eval -dat dirs`).

Pairing rule: a file under an output folder goes with the reference that has the same
relative path without extension (`GT/x/0001.png` ↔ `OUT/x/0001.jpg`; subfolders kept).
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zsiqa.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
SHOWN = 3  # names quoted in a message about many files


@dataclass
class MethodSet:
    """One output folder: its method's name, folder, and pairs (ref path, dis path), both
    relative to their own folders."""
    name: str
    folder: str
    pairs: list


def _images_by_stem(folder, skip=()):
    """{relative path without extension: relative path} of the images under folder; hidden
    files and folders (`.ipynb_checkpoints`) and the folders `skip` (real paths: the results
    folder, when it lies inside) are not walked. UserError naming two files that share a stem."""
    found, clashes = {}, []
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs
                         if not d.startswith(".") and os.path.realpath(os.path.join(base, d)) not in skip)
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


def split_name(spec):
    """A --dis-dir value as (name or None, folder): 'NAME=PATH' names the method, unless the
    whole value is an existing folder (one may be called 'a=b')."""
    if "=" not in spec or os.path.isdir(spec):
        return None, spec
    name, folder = spec.split("=", 1)
    return check_name(name), folder


def check_name(name):
    """A method's name as given: it names results files, so no path separator, no control
    character, not hidden, not empty."""
    if not name or name in (".", "..") or name.startswith(".") or re.search(r"[/\\\x00-\x1f\x7f]", name):
        raise UserError(f"method name {name!r} cannot name files: use letters, digits, '-', '_' (not starting "
                        "with '.', no '/')")
    return name


def method_names(folders, given=None):
    """A name per output folder: the one given (NAME=PATH), else the folder's name, or where
    folders share a name, the shortest part of their paths that tells them apart: BasicSR's
    runs/esrgan/visualization and runs/swinir/visualization are esrgan and swinir."""
    given = given or [None] * len(folders)
    parts = [Path(os.path.realpath(f)).parts for f in folders]
    names = [g or (p[-1] if len(p) > 1 else "") for g, p in zip(given, parts, strict=True)]
    for name in set(names):
        group = [i for i, n in enumerate(names) if n == name and given[i] is None]
        if len(group) > 1:
            for i, unique in zip(group, _telling_apart([parts[i] for i in group]), strict=True):
                names[i] = unique
    for folder, name in zip(folders, names, strict=True):
        try:
            check_name(name)
        except UserError:
            raise UserError(f"cannot name the method of {folder} after its folder ({name!r}): give --dis-dir "
                            f"NAME={folder}") from None
    folded = [n.casefold() for n in names]  # 'A' and 'a' name one file on macOS and Windows
    same = [n for n, f in zip(names, folded, strict=True) if folded.count(f) > 1]
    if same:
        alike = "named" if len(set(same)) == 1 else "named, but for case,"
        raise UserError(f"two output folders would both be {alike} '{same[0]}' (results files are named after "
                        "methods): name them with --dis-dir NAME=PATH")
    return names


def _telling_apart(paths):
    """For paths (tuples of parts) ending alike: drop the trailing parts they all share, then
    take as few of the parts before as make each one unique, joined by '_'."""
    common = 0
    while common < min(len(p) for p in paths) - 1 and len({p[-common - 1] for p in paths}) == 1:
        common += 1
    for k in range(1, max(len(p) for p in paths) + 1):
        names = ["_".join(p[max(0, len(p) - common - k):len(p) - common]).strip("/_") for p in paths]
        if len(set(names)) == len(names):
            return names
    return [""] * len(paths)


def _check_folders(ref_dir, dis_dirs):
    """The methods' (names, folders) from --dis-dir values; UserError for missing or repeated folders."""
    if not dis_dirs:
        raise UserError("-dat dirs needs at least one --dis-dir")
    given, folders = zip(*(split_name(d) for d in dis_dirs))
    for d in [ref_dir, *folders]:
        if not d or not os.path.isdir(d):
            raise UserError(f"folder not found: {d}")
    real = [os.path.realpath(d) for d in folders]
    if os.path.realpath(ref_dir) in real:
        raise UserError(f"{ref_dir} is given as both the reference folder and an output folder")
    twice = sorted({d for d in real if real.count(d) > 1})
    if twice:
        raise UserError(f"output folder given twice: {twice[0]}")
    return method_names(folders, list(given)), list(folders)


def pair_folders(ref_dir, dis_dirs, skip_missing=False, warn=None, skip=()):
    """Pair every output folder's images with the references.

    Args:
        ref_dir: the reference (ground-truth) folder.
        dis_dirs: output folders, one per method: PATH, or NAME=PATH to name the method.
        skip_missing: score the pairs found instead of stopping at files without a partner.
        warn: a function taking one line, for what --skip-missing skips.
        skip: folders never walked (the results folder, when it lies inside one).

    Returns:
        [MethodSet] in the order given. Raises UserError (one line) for missing or repeated
        folders, ambiguous names, an output folder with no partners, and (unless
        skip_missing) files of either side without a partner.
    """
    names, dis_dirs = _check_folders(ref_dir, dis_dirs)
    skip = {os.path.realpath(d) for d in skip}
    for folder in [ref_dir, *dis_dirs]:
        if os.path.realpath(folder) in skip:
            raise UserError(f"the results folder is {folder}, a folder of images: its charts would be read as images "
                            "on the next run; choose another -sdir")
    refs = _images_by_stem(ref_dir, skip)
    if not refs:
        raise UserError(f"no images in the reference folder {ref_dir}")
    sets = []
    for name, folder in zip(names, dis_dirs):
        outs = _images_by_stem(folder, skip)
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
