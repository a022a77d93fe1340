"""Dataset layouts: one loader per layout, each giving (reference, distorted, label) with paths
relative to the dataset root and the label's direction declared (docs/datasets.md).

`LAYOUTS` is the one table; adding a layout is one entry. Labels are stored as the published
runs stored them (TID2013: 100 − MOS). `higher_better` says whether a higher label means
better quality; distances are higher = worse, so correlations flip the sign when it is True.
"""
import csv
import glob
import io
import os
import re
from dataclasses import dataclass, field
from posixpath import normpath as _normpath  # rows name images with '/' on every system
from typing import Callable

import numpy as np

from zsiqa.errors import UserError, check_readable
from zsiqa.pairing import pair_folders


@dataclass
class Dataset:
    name: str
    root: str
    pairs: list            # [(ref_rel, dis_rel, label)], in the dataset's own order
    higher_better: bool = None   # None: the layout's (LAYOUTS); the CSV layout decides per file
    where: list = field(default_factory=list)  # per pair, where its label was read ("FILE line N")
    labelled: bool = True  # False: a set of outputs to score without labels (-dat dirs, a ref,dis list)
    ref_root: str = None   # the folder reference paths are relative to, when not `root` (-dat dirs)

    def ref_path(self, rel):
        """A reference's path on disk: under `ref_root` when it has one, else under `root`."""
        return os.path.join(self.ref_root or self.root, rel)

    def dis_path(self, rel):
        return os.path.join(self.root, rel)


def _need(path, what):
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    return path


def _read_text(path, what):
    """A text label file's contents, decoded as UTF-8 with a leading byte-order mark dropped
    (Excel and Notepad write one; left in, it would become part of the first name or number).
    One line naming the file when it is absent, a folder, unreadable or not UTF-8: no other
    encoding is guessed, since a wrong guess turns a name into another name."""
    check_readable(path, what)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        at = (f"{path} is UTF-16 text" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else
              f"{path} line {line}: byte 0x{raw[e.start]:02x} is not UTF-8")
        excel = " (Excel: 'CSV UTF-8')" if path.lower().endswith(".csv") else ""
        raise UserError(f"{at}; save the {what} as UTF-8{excel}") from None


def _label_lines(path, what):
    """[(where, line)] for the lines of a text label file (see _read_text) that are not blank,
    stripped, where = "FILE line N"; any line ending (LF, CRLF, CR). A file without one is refused."""
    lines = [(f"{path} line {n}", line.strip())
             for n, line in enumerate(io.StringIO(_read_text(path, what), newline=None), 1) if line.strip()]
    if not lines:
        raise UserError(f"{what} {path} holds no labels (it is empty)")
    return lines


def _case_map(folder):
    """lower-case file name → actual name, for label files whose case differs from disk."""
    try:
        return {n.lower(): n for n in os.listdir(folder)}
    except OSError:
        return {}


def load_pipal(root, **_):
    """PIPAL training part: Train_Label/*.txt lines `A0001_00_00.bmp,1500.12` (Elo MOS);
    Train_Ref/A0001.bmp; Train_Dis/A0001_00_00.bmp. Higher MOS = better."""
    files = sorted(glob.glob(os.path.join(_need(os.path.join(root, "Train_Label"), "PIPAL label folder"), "*.txt")))
    if not files:
        raise UserError(f"no label files (*.txt) in {os.path.join(root, 'Train_Label')}")
    pairs, where = [], []
    for f in files:
        for at, line in _label_lines(f, "PIPAL label file"):
            pairs.append(_pipal_pair(line, at))
            where.append(at)
    return Dataset("pipal", root, pairs, where=where)


def _pipal_pair(line, where):
    """A PIPAL label line as (reference, distorted, MOS): its reference is named by the part of
    the distorted name before the first '_' (A0001_00_00.bmp: Train_Ref/A0001.bmp)."""
    fields = [s.strip() for s in line.split(",")]
    if len(fields) != 2 or not re.match(r"[^_\s]+_", fields[0]):
        raise UserError(f"{where}: expected 'NAME.bmp,MOS' (NAME like A0001_00_00), got {line[:60]!r}")
    dis = fields[0]
    return f"Train_Ref/{dis.split('_')[0]}{os.path.splitext(dis)[1]}", f"Train_Dis/{dis}", _num(fields[1], where)


LIVE_FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))


def load_live(root, **_):
    """LIVE release 2: jp2k/ jpeg/ wn/ gblur/ fastfading/ refimgs/, dmos_realigned.mat
    (dmos_new, as the published runs used) or dmos.mat (dmos), refnames_all.mat. The 982
    entries run in folder order; the 203 originals (orgs = 1) are left out: 779 pairs. DMOS."""
    realigned = os.path.join(root, "dmos_realigned.mat")
    label_file, key = ((realigned, "dmos_new") if os.path.lexists(realigned) else
                       (os.path.join(root, "dmos.mat"), "dmos"))
    if not os.path.lexists(label_file):
        raise UserError(f"LIVE label file not found: {realigned} or {label_file}")
    m = _loadmat(label_file, "LIVE label file", (key, "orgs"))
    dmos, orgs = _mat_numbers(m, key, label_file), _mat_numbers(m, "orgs", label_file)
    names_file = os.path.join(root, "refnames_all.mat")
    refnames = _live_refnames(_loadmat(names_file, "LIVE refnames_all.mat", ("refnames_all",)), names_file)
    counts = [c for _, c in LIVE_FOLDERS]
    if len(dmos) != sum(counts):  # a cut-down copy: each folder holds img1…imgN
        counts = [_max_img_index(os.path.join(root, folder)) for folder, _ in LIVE_FOLDERS]
    names = [f"{folder}/img{i}.bmp" for (folder, _), count in zip(LIVE_FOLDERS, counts, strict=True)
             for i in range(1, count + 1)]
    if not (len(dmos) == len(orgs) == len(refnames) == len(names)):
        raise UserError(f"LIVE label files in {root} hold {len(dmos)} entries, but release 2 has 982 "
                        f"and the folders hold {len(names)} images")
    kept = [k for k, org in enumerate(orgs) if not org]
    unnamed = [k + 1 for k in kept if not refnames[k]]
    if unnamed:
        raise UserError(f"{names_file} entry {unnamed[0]}: no reference name")
    pairs = [(f"refimgs/{refnames[k]}", names[k], float(dmos[k])) for k in kept]
    return Dataset("live", root, pairs, where=[f"{label_file} entry {k + 1}" for k in kept])


def _loadmat(path, what, keys):
    """A MATLAB label file's variables, or one line naming the file when it is absent, a folder,
    empty or damaged (scipy then raises any of a dozen kinds of error), or lacks one of `keys`."""
    from scipy.io import loadmat
    check_readable(path, what)
    try:
        m = loadmat(path)
    except Exception as e:  # a damaged file: MatReadError, ValueError, TypeError, struct.error, zlib.error, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read {what} {path} (empty, damaged or not a MATLAB file?): {reason}") from None
    absent = [k for k in keys if k not in m]
    if absent:
        held = ", ".join(k for k in m if not k.startswith("__")) or "nothing"
        raise UserError(f"{path} lacks the variable(s) {', '.join(absent)}; it holds {held}")
    return m


def _mat_numbers(m, key, path):
    """A MATLAB variable's values as floats, flattened; refused when they are not numbers."""
    values = np.asarray(m[key])
    if values.dtype.kind not in "biuf":
        held = {"U": "text", "S": "text", "O": "cells or structs", "c": "complex numbers"}.get(values.dtype.kind)
        raise UserError(f"{path}: '{key}' holds {held or values.dtype}, not real numbers")
    return values.astype(float).ravel()


def _live_refnames(m, path):
    """refnames_all's entries as file names ('' for an empty one): a cell array of strings (or a
    char matrix); an entry holding numbers or several strings is refused with its index."""
    names = []
    for k, cell in enumerate(np.asarray(m["refnames_all"]).ravel()):
        cell = np.asarray(cell).ravel()
        if cell.size and (cell.dtype.kind != "U" or cell.size > 1):
            raise UserError(f"{path} entry {k + 1}: {cell.dtype} {cell[:3].tolist()}, not a file name "
                            "(refnames_all holds names like 'img29.bmp')")
        names.append(str(cell[0]) if cell.size else "")
    return names


def _max_img_index(folder):
    found = [int(m.group(1)) for n in (os.listdir(folder) if os.path.isdir(folder) else [])
             for m in [re.fullmatch(r"img(\d+)\.bmp", n)] if m]
    return max(found, default=0)


def load_tid2013(root, **_):
    """TID2013: mos_with_names.txt lines `5.51429 i01_01_1.bmp`; reference_images/I01.BMP;
    distorted_images/... (case differs between label file and disk). Stored as 100 − MOS."""
    label = os.path.join(root, "mos_with_names.txt")
    refs, diss = _case_map(os.path.join(root, "reference_images")), _case_map(os.path.join(root, "distorted_images"))
    pairs, where = [], []
    for at, line in _label_lines(label, "TID2013 label file"):
        fields = line.split()
        if len(fields) != 2 or not re.match(r"[iI]\d\d_", fields[1]):
            raise UserError(f"{at}: expected 'MOS NAME' (NAME like i01_01_1.bmp), got {line[:60]!r}")
        mos, dis = fields
        ref = f"I{dis[1:3]}.BMP"
        pairs.append((f"reference_images/{refs.get(ref.lower(), ref)}",
                      f"distorted_images/{diss.get(dis.lower(), dis)}", 100 - _num(mos, at)))
        where.append(at)
    return Dataset("tid2013", root, pairs, where=where)


def load_kadid10k(root, **_):
    """KADID-10k: dmos.csv (dist_img, ref_img, dmos, var), images in images/. Its 'dmos' is
    higher = better."""
    label = os.path.join(root, "dmos.csv")
    folder = "images" if os.path.isdir(os.path.join(root, "images")) else "."
    rows, where = _read_csv(label, "KADID-10k label file", ("dist_img", "ref_img", "dmos"))
    pairs = [(_normpath(f"{folder}/{_name(r, 'ref_img', w)}"), _normpath(f"{folder}/{_name(r, 'dist_img', w)}"),
              _num(r["dmos"], w)) for r, w in zip(rows, where)]
    return Dataset("kadid10k", root, pairs, where=where)


def load_csv(root, csv_file=None, higher_is_better=None, **_):
    """A generic list: columns ref, dis and mos (higher = better unless told) or dmos (higher
    = worse unless told), names in any case, other columns ignored; paths relative to the root
    (default: the CSV's folder). A list of only ref and dis is a label-free set: every pair is
    scored, nothing correlated."""
    if not csv_file:
        raise UserError("-dat csv needs --csv FILE (columns ref, dis, and mos or dmos for correlations)")
    rows, where = _read_csv(csv_file, "CSV list", ("ref", "dis"))
    column = _label_column(csv_file, rows)
    name = os.path.splitext(os.path.basename(csv_file))[0]
    root = root or os.path.dirname(os.path.abspath(csv_file))
    pairs = [(_name(r, "ref", w), _name(r, "dis", w), column and _num(r[column], w)) for r, w in zip(rows, where)]
    if column is None:
        return Dataset(name, root, pairs, where=where, labelled=False)
    higher = (column == "mos") if higher_is_better is None else bool(higher_is_better)
    return Dataset(name, root, pairs, higher_better=higher, where=where)


def load_dirs(ref_dir, dis_dirs, skip_missing=False, warn=None, skip=()):
    """-dat dirs: one label-free Dataset per output folder (named after its method, paths
    relative to it; references relative to `ref_dir`), paired by pairing.pair_folders (`skip`:
    folders not walked)."""
    sets = pair_folders(ref_dir, dis_dirs, skip_missing, warn, skip)
    return [Dataset(s.name, os.path.abspath(s.folder), [(r, d, None) for r, d in s.pairs], labelled=False,
                    ref_root=os.path.abspath(ref_dir)) for s in sets]


def _num(value, where):
    """A label read as a number, or one line naming where it was read. Python's digit grouping
    ('1_000') is not taken: in a label it is a typo, not a number."""
    if not value:
        raise UserError(f"{where}: the label is blank")
    try:
        if "_" in value:
            raise ValueError(value)
        return float(value)
    except ValueError:
        raise UserError(f"{where}: label {value!r} is not a number") from None


def _name(row, column, where):
    """An image name from a list's row: refused when blank, or when it holds a control
    character (a line break swallowed by an unclosed quote, a tab), which no real name has."""
    value = row[column]
    if not value:
        raise UserError(f"{where}: the {column} name is blank")
    if re.search(r"[\x00-\x1f\x7f]", value):
        raise UserError(f"{where}: the {column} name {value!r} holds a control character (an unclosed quote?)")
    return value


def _read_csv(path, what, required):
    """A CSV label list as ([row], [where]): each row a {column: value} dict (spaces around
    values dropped) and where it was read ("FILE line N", N the line it starts on). Blank rows,
    also rows of only commas, are skipped. A row with more or fewer fields than the header is
    refused: csv would cut or pad it silently (a decimal comma, 4,5, read as the label 4)."""
    reader = csv.reader(io.StringIO(_read_text(path, what), newline=""))
    header, rows, where = None, [], []
    for line, fields in _csv_records(reader, path):
        if header is None:
            header = _csv_header(path, fields, required)
        elif len(fields) != len(header):
            raise UserError(f"{path} line {line}: {len(fields)} field{'s' * (len(fields) != 1)}, "
                            f"the header has {len(header)}")
        else:
            rows.append(dict(zip(header, fields)))
            where.append(f"{path} line {line}")
    if not rows:
        raise UserError(f"{path} has no rows")
    return rows, where


def _csv_records(reader, path):
    """(the line it starts on, [fields, stripped]) for each record of a csv.reader that is not
    blank; a syntax error csv reports (a NUL byte) is one line naming the file and line."""
    start = 1
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            fields = [f.strip() for f in fields]
            if any(fields):
                yield line, fields
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: {e}") from None


def _csv_header(path, names, required):
    """A list's header, its names compared in lower case ('MOS', ' Ref ' are mos and ref: read
    as written, a label column spelled otherwise would be dropped silently), an unnamed column
    called by its place; each column named once, the required ones present."""
    names = [n.lower() or f"(unnamed column {k + 1})" for k, n in enumerate(names)]
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise UserError(f"{path}: column(s) {', '.join(twice)} appear more than once in the header")
    absent = [c for c in required if c not in names]
    if absent:
        raise UserError(f"{path} lacks column(s) {', '.join(absent)}; its first line (the header) has "
                        f"{', '.join(names)}")
    return names


def _label_column(path, rows):
    """A list's label column: 'mos' or 'dmos', or None for a label-free list. Beside a label
    column other columns are ignored (a std, a note). Without one, a column other than ref and
    dis is refused (an unnamed one only when it holds values): it may be the label under another
    name, and scoring the list without labels would drop it silently."""
    columns = list(rows[0])
    if "mos" in columns and "dmos" in columns:
        raise UserError(f"{path} has both a 'mos' and a 'dmos' column: keep the one to correlate with")
    if "mos" in columns or "dmos" in columns:
        return "mos" if "mos" in columns else "dmos"
    other = [c for c in columns if c not in ("ref", "dis")
             and (not c.startswith("(unnamed column ") or any(r[c] for r in rows))]
    if other:
        raise UserError(f"{path} has column(s) {', '.join(other)} but no 'mos' or 'dmos': name the label column "
                        "mos (higher = better) or dmos (higher = worse), or keep only ref and dis to score "
                        "without labels")
    return None


@dataclass(frozen=True)
class Layout:
    load: Callable
    higher_better: bool    # a higher stored label means better quality (csv: the default for 'mos')
    summary: str


LAYOUTS = {
    "pipal": Layout(load_pipal, True, "PIPAL training part (23,200 pairs, Elo MOS, higher = better)"),
    "live": Layout(load_live, False, "LIVE release 2 (779 pairs, realigned DMOS, higher = worse)"),
    "tid2013": Layout(load_tid2013, False, "TID2013 (3,000 pairs, stored as 100 − MOS, higher = worse)"),
    "kadid10k": Layout(load_kadid10k, True, "KADID-10k (10,125 pairs, 'dmos' higher = better)"),
    "csv": Layout(load_csv, True, "your own list: ref, dis, mos|dmos columns, paths relative to --root "
                  "(without a label column: scored without labels)"),
}


def load_dataset(name, root=None, **options):
    if name not in LAYOUTS:
        raise UserError(f"unknown dataset layout '{name}'; known: {', '.join(LAYOUTS)}")
    if name != "csv":
        if not root:
            raise UserError(f"-dat {name} needs --root DIR (the dataset folder)")
        if not os.path.isdir(root):
            raise UserError(f"dataset root not found: {root}")
    dataset = LAYOUTS[name].load(root, **options)
    if dataset.higher_better is None and dataset.labelled:
        dataset.higher_better = LAYOUTS[name].higher_better
    check_labels(dataset)
    return dataset


def check_labels(dataset):
    """Refuse a NaN or infinite label and a pair (same reference, same distorted image)
    listed twice, naming where they were read: either would skew every correlation."""
    where = dataset.where or [f"pair {k + 1}" for k in range(len(dataset.pairs))]
    labels = np.array([y if dataset.labelled else 0.0 for _, _, y in dataset.pairs], dtype=float)
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        k = bad[0]
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise UserError(f"{where[k]}: label {labels[k]} of {dataset.pairs[k][1]} is not a finite number{more}")
    first = {}
    for k, (ref, dis, _) in enumerate(dataset.pairs):  # `./a.png` and `a.png` are the same file
        j = first.setdefault((os.path.normpath(ref), os.path.normpath(dis)), k)
        if j != k:
            raise UserError(f"pair {dis} / {ref} is listed twice: {where[j]} and {where[k]}; keep one")
