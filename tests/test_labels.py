"""Labels are refused when they would skew every correlation: NaN or infinite values and a
pair listed twice, each named by file and line (one line, exit 2)."""
import os
import re

import numpy as np
import pytest

import minidata
import run
from helpers import fails_one_line
from zsiqa.datasets import load_dataset
from zsiqa.errors import UserError
from zsiqa.images import pair_problems


def _usable(dataset):
    """Every pair's two images found on disk and usable, as the evaluation's up-front check
    (planning.check_images → images.pair_problems) reads them from the dataset's paths."""
    pairs = [(dataset.ref_path(r), dataset.dis_path(d)) for r, d, _ in dataset.pairs]
    return all(why is None for why, _ in pair_problems(pairs))


def _edit(path, old, new):
    text = open(path).read()
    assert old in text
    open(path, "w").write(text.replace(old, new, 1))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_label_named_with_file_and_line(tmp_path, value):
    root = minidata.make_pipal(str(tmp_path / "p"))
    label = os.path.join(root, "Train_Label", "A0002.txt")
    lines = open(label).read().splitlines()
    lines[1] = lines[1].split(",")[0] + "," + value
    open(label, "w").write("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"{label} line 2: label .* not a finite number"):
        load_dataset("pipal", root)


def test_non_finite_label_in_csv_layouts(tmp_path):
    root = minidata.make_kadid(str(tmp_path / "k"))
    _edit(os.path.join(root, "dmos.csv"), ",3.0,", ",NaN,")
    with pytest.raises(UserError, match=r"dmos.csv line 3: label nan"):
        load_dataset("kadid10k", root)
    target = minidata.make_csv(str(tmp_path / "c"))
    _edit(target, ",2.5", ",inf")
    with pytest.raises(UserError, match=r"list.csv line 4: label inf"):
        load_dataset("csv", csv_file=target)


def test_non_finite_label_in_live_mat(tmp_path):
    from scipy.io import loadmat, savemat
    root = minidata.make_live(str(tmp_path / "l"))
    m = loadmat(os.path.join(root, "dmos_realigned.mat"))
    m["dmos_new"][0, 3] = np.inf
    savemat(os.path.join(root, "dmos_realigned.mat"), {k: v for k, v in m.items() if not k.startswith("__")})
    with pytest.raises(UserError, match=r"dmos_realigned.mat entry 4: label inf of jpeg/img2.bmp"):
        load_dataset("live", root)


def test_pair_listed_twice_named(tmp_path, capsys):
    root = minidata.make_tid2013(str(tmp_path / "t"))
    label = os.path.join(root, "mos_with_names.txt")
    lines = open(label).read().splitlines()
    open(label, "w").write("\n".join(lines + [lines[1].replace(lines[1].split()[0], "3.0")]) + "\n")
    fails_one_line(capsys, lambda: run.main(["-dat", "tid2013", "--root", root, "-sdir", str(tmp_path / "r")]),
                   "listed twice", f"{label} line 2 and {label} line 7", warnings=False)
    target = minidata.make_csv(str(tmp_path / "c"))
    rows = open(target).read().splitlines()
    open(target, "w").write("\n".join(rows + [rows[1]]) + "\n")
    with pytest.raises(UserError, match="list.csv line 2 and .*list.csv line 6"):
        load_dataset("csv", csv_file=target)


def test_same_pair_spelled_twice_and_both_label_columns(tmp_path):
    """`./gt/0.png` is `gt/0.png`: still listed twice. A list with both mos and dmos is ambiguous."""
    target = minidata.make_csv(str(tmp_path / "c"))
    rows = open(target).read().splitlines()
    ref, dis, mos = rows[1].split(",")
    open(target, "w").write("\n".join(rows + [f"./{ref},./{dis},{mos}"]) + "\n")
    with pytest.raises(UserError, match="listed twice"):
        load_dataset("csv", csv_file=target)
    open(target, "w").write("\n".join([rows[0] + ",dmos"] + [r + ",1.0" for r in rows[1:]]) + "\n")
    with pytest.raises(UserError, match="both a 'mos' and a 'dmos'"):
        load_dataset("csv", csv_file=target)


# ---------------------------------------------------------------- label files as text: one helper opens them all
# (UTF-8, a leading BOM dropped, any line ending; a folder or another encoding refused in one line)

def _label_files(tmp_path):
    """{layout: (root, its text label file)} for the four text layouts; csv's root is None."""
    pipal = minidata.make_pipal(str(tmp_path / "p"), n_ref=1)
    tid = minidata.make_tid2013(str(tmp_path / "t"), n_ref=1)
    kadid = minidata.make_kadid(str(tmp_path / "k"), n_ref=1)
    target = minidata.make_csv(str(tmp_path / "c"), n=2)
    return {"pipal": (pipal, os.path.join(pipal, "Train_Label", "A0001.txt")),
            "tid2013": (tid, os.path.join(tid, "mos_with_names.txt")),
            "kadid10k": (kadid, os.path.join(kadid, "dmos.csv")), "csv": (None, target)}


def _load(layout, root, label):
    return load_dataset(layout, root, csv_file=label if layout == "csv" else None)


@pytest.mark.parametrize("layout", ["pipal", "tid2013", "kadid10k", "csv"])
def test_bom_and_crlf_read_as_plain_utf8(tmp_path, layout):
    """A BOM (Notepad, Excel), Windows line endings and trailing blank lines: same pairs, same labels."""
    root, label = _label_files(tmp_path)[layout]
    want = _load(layout, root, label).pairs
    text = open(label, newline="").read()
    open(label, "w", newline="").write("\ufeff" + text.replace("\n", "\r\n") + "\r\n\r\n")
    got = _load(layout, root, label)
    assert got.pairs == want and _usable(got)


@pytest.mark.parametrize("layout", ["pipal", "tid2013", "kadid10k", "csv"])
def test_label_file_not_utf8_refused(tmp_path, layout):
    """A list saved as Latin-1/cp1252 (Excel's 'CSV'): refused naming file, line and byte, with the fix."""
    root, label = _label_files(tmp_path)[layout]
    lines = open(label).read().splitlines()
    lines[1] = lines[1].replace(".", "\xe9.", 1)
    open(label, "w", encoding="latin-1").write("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"{label} line 2: byte 0xe9 is not UTF-8; save .* as UTF-8"):
        _load(layout, root, label)
    open(label, "w", encoding="utf-16").write("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"{label} is UTF-16 text; save"):
        _load(layout, root, label)


@pytest.mark.parametrize("layout", ["pipal", "tid2013", "kadid10k", "csv"])
def test_folder_in_place_of_label_file(tmp_path, capsys, layout):
    """`--csv DIR`, a folder dmos.csv/ or mos_with_names.txt/ or Train_Label/X.txt/: one line, exit 2."""
    root, label = _label_files(tmp_path)[layout]
    os.remove(label)
    os.makedirs(label)
    where = ["--csv", label] if layout == "csv" else ["--root", root]
    fails_one_line(capsys, lambda: run.main(["-dat", layout, *where, "-sdir", str(tmp_path / "r")]),
                   f"{label} is a folder, not a file", warnings=False)


# ---------------------------------------------------------------- CSV lists: every row as wide as the header

def _write_list(tmp_path, header, *rows):
    target = tmp_path / "c" / "list.csv"
    if not target.exists():
        minidata.make_csv(str(tmp_path / "c"))
    target.write_text("\n".join([header, *rows]) + "\n")
    return str(target)


@pytest.mark.parametrize("header, rows, message", [
    ("ref,dis,mos", ["gt/0.png,out/0.png,4,5", "gt/1.png,out/1.png,3,5"], "line 2: 4 fields, the header has 3"),
    ("ref,dis,mos", ["gt/0.png,out/0.png,4", "gt/1.png,out/1.png"], "line 3: 2 fields, the header has 3"),
    ("ref,dis", ["gt/0.png,out/0.png", "gt/1.png"], "line 3: 1 field, the header has 2"),
    ("ref,dis,mos", ["gt/0.png,out/0.png,1", "gt/1.png,out/1.png,"], "line 3: the label is blank"),
    ("ref,dis,mos", ["gt/0.png,out/0.png,1", "gt/1.png,out/1.png,1_5"], "line 3: label '1_5' is not a number"),
    ("ref,dis,mos", ["gt/0.png,,1"], "line 2: the dis name is blank"),
    ("ref,dis", ['gt/0.png,"out/0.png', 'gt/1.png,out/1.png"'], r"line 2: the dis name .* control character"),
    ("ref,dis,mos,mos", ["gt/0.png,out/0.png,1,2"], "mos appear more than once"),
    ("gt/0.png,out/0.png,1", ["gt/1.png,out/1.png,2"], r"lacks column\(s\) ref, dis; its first line \(the header\)"),
])
def test_list_rows_refused_with_file_and_line(tmp_path, capsys, header, rows, message):
    """A decimal comma (4,5) was read as 4; a short row gave a TypeError (label-free) or 'label
    None' without a line. Each now stops in one line naming the file and line."""
    target = _write_list(tmp_path, header, *rows)
    line = fails_one_line(capsys, lambda: run.main(["-dat", "csv", "--csv", target, "-sdir", str(tmp_path / "r")]),
                          warnings=False)
    assert re.search(f"{re.escape(target)}:? .*{message}", line), line


@pytest.mark.parametrize("layout", ["kadid10k", "csv"])
def test_csv_blank_rows_skipped_and_lines_counted(tmp_path, layout):
    """Blank rows (also ',,' and spaces, as spreadsheets write them) are skipped, yet every
    later row is still named by its own line; spaces around values are dropped."""
    root, label = _label_files(tmp_path)[layout]
    want = _load(layout, root, label).pairs
    lines = open(label).read().splitlines()
    lines = [lines[0], "", lines[1], " , ,", ",".join(f" {v} " for v in lines[2].split(","))] + lines[3:] + ["  "]
    open(label, "w").write("\n".join(lines) + "\n")
    got = _load(layout, root, label)
    assert got.pairs == want and got.where[:2] == [f"{label} line 3", f"{label} line 5"]
    _edit(label, lines[4], lines[4].replace(" 3.5 " if layout == "csv" else " 3.0 ", "nan"))
    with pytest.raises(UserError, match=f"{label} line 5: label nan"):
        _load(layout, root, label)


@pytest.mark.parametrize("header, higher", [("REF,DIS,MOS", True), (" Ref , Dis , DMOS ", False),
                                            ("ref,dis,mos,std,note,", True)])
def test_header_names_any_case_and_extra_columns(tmp_path, header, higher):
    """'MOS' or ' Ref ' (was: the list silently scored without labels) name the same columns;
    beside a label column other columns, also unnamed ones, are ignored."""
    extra = "," * (header.count(",") - 2)
    target = _write_list(tmp_path, header, *(f"gt/{k}.png,out/{k}.png,{4.5 - k}{extra}" for k in range(4)))
    got = load_dataset("csv", csv_file=target)
    assert got.labelled and got.higher_better is higher and [y for _, _, y in got.pairs] == [4.5, 3.5, 2.5, 1.5]
    assert _usable(got)


@pytest.mark.parametrize("header, rows, named", [
    ("ref,dis,score", ["gt/0.png,out/0.png,3"], "score"),
    ("ref,dis,", ["gt/0.png,out/0.png,3"], r"\(unnamed column 3\)")])
def test_label_free_list_with_other_columns_refused(tmp_path, header, rows, named):
    """Without mos or dmos, another column may be the label under another name: refused rather
    than dropped. An unnamed column left empty (spreadsheets' trailing commas) is no label."""
    target = _write_list(tmp_path, header, *rows)
    with pytest.raises(UserError, match=f"has column\\(s\\) {named} but no 'mos' or 'dmos'"):
        load_dataset("csv", csv_file=target)
    _write_list(tmp_path, "ref,dis,,", "gt/0.png,out/0.png,,", "gt/1.png,out/1.png,,")
    assert not load_dataset("csv", csv_file=target).labelled


# ---------------------------------------------------------------- LIVE's .mat files: damaged or odd ones in one line

def _damage(path, how):
    """Replace a .mat file: empty, random bytes, a folder, or the given variables."""
    from scipy.io import savemat
    os.remove(path)
    if how == "empty":
        open(path, "wb").close()
    elif how == "junk":
        open(path, "wb").write(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 2)
    elif how == "folder":
        os.makedirs(path)
    else:
        savemat(path, how)


@pytest.mark.parametrize("name, how, message", [
    ("dmos_realigned.mat", "empty", r"cannot read LIVE label file .* \(empty, damaged or not a MATLAB file\?\)"),
    ("dmos_realigned.mat", "junk", "cannot read LIVE label file"),
    ("dmos_realigned.mat", "folder", "is a folder, not a file"),
    ("dmos_realigned.mat", {"dmos": np.ones((1, 10)), "orgs": np.zeros((1, 10))},
     r"lacks the variable\(s\) dmos_new; it holds dmos, orgs"),
    ("dmos_realigned.mat", {"dmos_new": np.array(["a"] * 10), "orgs": np.zeros((1, 10))},
     "'dmos_new' holds text, not real numbers"),
    ("refnames_all.mat", "empty", "cannot read LIVE refnames_all.mat"),
    ("refnames_all.mat", {"refnames_all": np.arange(10.0)[None]}, r"entry 1: float64 \[0.0\], not a file name"),
])
def test_live_mat_files_refused_in_one_line(tmp_path, capsys, name, how, message):
    """A zero-byte or damaged .mat gave scipy's MatReadError, a refnames_all.mat of numbers a
    TypeError: each is now one line naming the file, exit 2."""
    root = minidata.make_live(str(tmp_path / "l"))
    _damage(os.path.join(root, name), how)
    line = fails_one_line(capsys, lambda: run.main(["-dat", "live", "--root", root, "-sdir", str(tmp_path / "r")]),
                          os.path.join(root, name), warnings=False)
    assert re.search(message, line), line


def test_live_refnames_as_char_matrix_read(tmp_path):
    """refnames_all saved as a char matrix (not a cell array) names the same references."""
    from scipy.io import loadmat, savemat
    root = minidata.make_live(str(tmp_path / "l"))
    want = load_dataset("live", root).pairs
    path = os.path.join(root, "refnames_all.mat")
    names = [str(cell[0]) for cell in loadmat(path)["refnames_all"].ravel()]
    savemat(path, {"refnames_all": np.array(names)})
    assert load_dataset("live", root).pairs == want


def test_live_without_label_file_names_both(tmp_path):
    root = minidata.make_live(str(tmp_path / "l"))
    os.remove(os.path.join(root, "dmos_realigned.mat"))
    with pytest.raises(UserError, match="LIVE label file not found: .*dmos_realigned.mat or .*dmos.mat$"):
        load_dataset("live", root)


# ---------------------------------------------------------------- PIPAL and TID2013 lines

@pytest.mark.parametrize("layout, line, message", [
    ("pipal", "A0001_00_00.bmp,1_500", "line 2: label '1_500' is not a number"),
    ("pipal", "A0001.bmp,1500", r"line 2: expected 'NAME.bmp,MOS' \(NAME like A0001_00_00\)"),
    ("pipal", ",1500", "line 2: expected 'NAME.bmp,MOS'"),
    ("pipal", "A0001_00_00.bmp,15,00", "line 2: expected 'NAME.bmp,MOS'"),
    ("tid2013", "5_1 i01_01_1.bmp", "line 2: label '5_1' is not a number"),
    ("tid2013", "i01_01_1.bmp 5.1", r"line 2: expected 'MOS NAME' \(NAME like i01_01_1.bmp\)"),
    ("tid2013", "5.1 x.bmp", "line 2: expected 'MOS NAME'"),
])
def test_text_label_lines_refused_with_line(tmp_path, layout, line, message):
    """A line that would give a wrong reference (no '_' in a PIPAL name: A0001.bmp.bmp; a TID
    name not starting iNN_) or a typo read as a number ('1_500' is 1500 to Python) is refused."""
    root, label = _label_files(tmp_path)[layout]
    lines = open(label).read().splitlines()
    open(label, "w").write("\n".join([lines[0], line] + lines[2:]) + "\n")
    with pytest.raises(UserError, match=f"{label} {message}"):
        load_dataset(layout, root)


@pytest.mark.parametrize("layout", ["pipal", "tid2013"])
def test_empty_text_label_file_refused(tmp_path, layout):
    """A label file of blank lines held no pairs: its references silently left out of PIPAL."""
    root, label = _label_files(tmp_path)[layout]
    open(label, "w").write("\n  \n\r\n")
    with pytest.raises(UserError, match=f"label file {label} holds no labels"):
        load_dataset(layout, root)
