"""A hostile user's names and file system against every file a label-free comparison writes
(issue 24): folder, method and image names never change a file's structure (LaTeX, Markdown,
HTML, CSV, charts), CSV cells are never a spreadsheet formula yet read back exactly, report files
are replaced atomically (a symlink there replaced, never followed; a failed write leaves the old
file), one run at a time writes a report folder, stale report files of an earlier run go, every
output name is checked before any work and maps are named one folder per image."""
import csv
import html.parser
import io
import os
import re
import shutil
import subprocess
import tempfile

import filelock
import numpy as np
import pytest
from PIL import Image

import run
from helpers import count_scored, fails_one_line, random_image
from zsiqa import plots, report, results
from zsiqa.errors import UserError
from zsiqa.stats import compare_methods

REF = "GT\n\\input{hostname}<script>x"  # the reference folder: a line break, a live \input, a tag
METHODS = ["=HYPERLINK(\"http:x\")", "@SUM(A1)<b>", "+1+2 $x^2$"]  # folder names: method names
IMAGES = ["=cmd|' \\C'!A0.png", "-0.5.png", "'q.png", "a<script>b</script>c.png", "A.png", "a.png", "\tt.png"]


def _tree(root, images=IMAGES, methods=METHODS, ref=REF):
    """A reference folder `ref` and one output folder per method (noise growing with its index),
    images named `images` (subfolders made where a name has a '/')."""
    for k, name in enumerate(images):
        path = os.path.join(root, ref, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        random_image(path, 224, 224, 70 + k)
        base = np.asarray(Image.open(path), float)
        for m, method in enumerate(methods):
            out = os.path.join(root, method, name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            noise = np.random.default_rng(100 * m + k).normal(0, 4 * (m + 1), base.shape)
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(out)
    return os.path.join(root, ref), [os.path.join(root, m) for m in methods]


def _eval(tiny, gt, outs, *args):
    name, weights = tiny
    return run.main(["-dat", "dirs", "--ref-dir", gt, *[a for o in outs for a in ("--dis-dir", o)], "-m", name,
                     "--weights", weights, "--device", "cpu", "--no-progress", *args])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_weights):
    """One run over hostile names with --report and --maps (every image's maps), then the same
    command again (a resume: nothing to score)."""
    from tinymodel import TINY, register_tiny
    from zsiqa import models
    root = tmp_path_factory.mktemp("hostile")
    gt, outs = _tree(str(root))
    saved = dict(models.BACKBONES)
    register_tiny(models.BACKBONES)
    try:
        args = ["-d", "l2,wsd", "-sdir", str(root / "r"), "--report", str(root / "rep"), "--maps", str(len(IMAGES))]
        assert _eval((TINY, tiny_weights), gt, outs, *args) == 0
        mp = pytest.MonkeyPatch()
        seen = count_scored(mp)
        assert _eval((TINY, tiny_weights), gt, outs, *args) == 0
        mp.undo()
    finally:
        models.BACKBONES.clear()
        models.BACKBONES.update(saved)
    return {"root": root, "rep": root / "rep", "out": root / "r", "resumed": seen, "model": TINY}


# ---------------------------------------------------------------- 1. structure of every file

def test_latex_has_no_live_line_and_no_local_path(hostile):
    text = (hostile["rep"] / "table.tex").read_text()
    assert "\\input{" not in text and "\\input\\{" not in text.replace("\\textbackslash{}input\\{", "")
    for line in text.splitlines():  # every line is ours: a comment, a table command or a row
        assert re.match(r"(%|\\(begin|end)\{table|  \\|    (\\\w+rule|.* \\\\$)|$)", line), line
    assert str(hostile["root"]) not in text  # the base name alone, escaped:
    assert "GT \\textbackslash{}input\\{hostname\\}\\textless{}script\\textgreater{}x" in text


def test_markdown_has_no_tag_and_no_local_path(hostile):
    text = (hostile["rep"] / "report.md").read_text()
    assert not re.search(r"(?<!\\)<[a-zA-Z/!?]", text) and str(hostile["root"]) not in text
    about = text.splitlines()[2]
    assert "GT \\\\input{hostname}\\<script\\>x" in about  # one line, the tag shown as text
    for line in text.splitlines():
        if line.startswith("| "):
            assert len(re.findall(r"(?<!\\)\|", line)) == 9, line  # rank, method and six cells


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_html_escapes_every_name(hostile):
    text = (hostile["rep"] / "report.html").read_text()
    page = _Tags()
    page.feed(text)
    tags = [t for t, _ in page.tags]
    assert tags.count("script") == 1 and tags.count("b") == 2  # ours: the page's script, the best in bold
    shown = "".join(page.text)
    for name in METHODS + IMAGES[:4]:
        assert name.strip() in shown  # shown as written
    assert str(hostile["root"]) not in text
    assert all(a.get("title") in (None, *IMAGES) for t, a in page.tags if t == "div")


def test_chart_labels_are_drawn_literally(tmp_path):
    """A name with $…$ (matplotlib's mathtext) and a line break is drawn as written: a name that is
    not valid mathtext made the chart fail ('cannot write')."""
    rows = [{"set": name, "distance": "l2", "mean": 1.0 + k, "ci95": [0.5 + k, 1.5 + k]}
            for k, name in enumerate(["a$\\notacommand{$b", "x\ny", "$\\alpha$"])]
    path = plots.method_bars(rows, str(tmp_path / "c.png"), "$\\bogus$ title", marks=["best", "*", "$\\x"])
    with Image.open(path) as im:
        assert im.format == "PNG"
    assert plots.one_line("x\ny\r\nz") == "x y z"


def test_tex_and_markdown_never_break_a_line():
    for text in ("a\nb", "a\rb", "a\r\nb", "a\u2028b", "a\x85b", "a\x0bb\x0cc"):
        for out in (report.tex(text), report.markdown_name(text)):
            assert len(out.splitlines()) == 1 and "\n" not in out and "\r" not in out


# ---------------------------------------------------------------- 2. CSV cells

def _raw(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


DANGER = tuple("=+-@\t\r")


def test_no_csv_cell_is_a_formula(hostile):
    files = [hostile["rep"] / "scores.csv", hostile["out"] / "summary_unlabelled.csv",
             *hostile["out"].glob("*_l2.csv"), *hostile["out"].glob("*_wsd.csv")]
    assert len(files) == 2 + 2 * len(METHODS)
    for path in files:
        header, *rows = _raw(path)
        for row in rows:
            for name, cell in zip(header, row):
                if cell.startswith(DANGER):  # only numbers (a negative score) may start so
                    assert name not in ("dis", "ref", "image", "method", "set", "vs", "methods"), (path, cell)
                    float(cell)
    scores = _raw(hostile["rep"] / "scores.csv")[1:]
    assert {results.from_cell(r[0]) for r in scores} == set(IMAGES)
    assert {results.from_cell(r[1]) for r in scores} == set(METHODS)
    assert {r[0] for r in scores} >= {"'=cmd|' \\C'!A0.png", "'-0.5.png", "''q.png", "'\tt.png", "A.png"}


def test_our_readers_give_every_name_back_and_resume_matches(hostile):
    assert hostile["resumed"] == []  # the same command again: every row matched, nothing scored
    for method in METHODS:
        path = str(hostile["out"] / f"{method}_{hostile['model']}_l2.csv")
        done = results.read_done(path, results.Columns(labelled=False))
        assert {dis for dis, _ in done} == set(IMAGES)
        _, rows = results.read_table(path)
        assert {row[0] for _, row in rows} == set(IMAGES)
    summary = list(csv.reader(io.StringIO((hostile["out"] / "summary_unlabelled.csv").read_text())))
    assert len(summary) == 1 + 2 * len(METHODS)  # the repeat replaced its rows (the key read back exactly)


@pytest.mark.parametrize("name", ["=1+1", "+1", "-1", "@A", "\tx", "\rx", "'", "''", "'=x", "'a", "a'", "", "x=1",
                                  "-0.5", "'\t", "\u2028=", "é"])
def test_cells_round_trip(name, tmp_path):
    cell = results.to_cell(name)
    assert results.from_cell(cell) == name and not cell.startswith(DANGER)
    path = str(tmp_path / "t.csv")
    results.write_table(path, ["name", "x"], [{"name": name, "x": -0.5}])
    header, row = _raw(path)
    assert results.from_cell(row[0]) == name and row[1] == "-0.5"  # numbers as they are


# ---------------------------------------------------------------- 3. atomic report files, lock, stale files

def _comparison(names=("A", "B"), about="about"):
    scores = {m: {f"{k}.png": 1.0 + 0.1 * k + j for k in range(6)} for j, m in enumerate(names)}
    table = compare_methods(scores)
    rows = [{**table[m], "set": m, "distance": "l2"} for m in names]
    return report.Comparison({"l2": rows}, {"l2": scores}, {"l2": True}, "l2", {}, about)


def test_a_symlink_at_each_report_file_is_replaced_not_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    folder = tmp_path / "rep"
    folder.mkdir()
    for name in report.REPORT_FILES:
        (outside / name).write_text("precious")
        os.symlink(outside / name, folder / name)
    report.write_report(str(folder), _comparison())
    for name in report.REPORT_FILES:
        assert (outside / name).read_text() == "precious" and not os.path.islink(folder / name)
    assert "ZS-IQA comparison" in (folder / "report.md").read_text()


@pytest.mark.parametrize("fail", ["replace", "fdopen"])
def test_a_failed_report_write_leaves_the_old_file(tmp_path, monkeypatch, fail):
    """A write cut short (a kill, a full disk: os.replace or the write failing) leaves the old
    report.html whole and no temporary file."""
    folder = tmp_path / "rep"
    report.write_report(str(folder), _comparison())
    old = (folder / "report.html").read_bytes()
    real = getattr(os, fail)

    class Torn:  # a file whose write stops after 100 bytes of a large one
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            if len(data) > 10000:
                self.f.write(bytes(data)[:100])
                raise OSError(28, "No space left on device")
            return self.f.write(data)

    def failing(*args, **kwargs):
        if fail == "replace" and str(args[1]).endswith("report.html"):
            raise OSError(28, "No space left on device")
        return Torn(real(*args, **kwargs)) if fail == "fdopen" else real(*args, **kwargs)
    monkeypatch.setattr(os, fail, failing)
    with pytest.raises(UserError, match="report.html: No space left"):
        report.write_report(str(folder), _comparison(("A", "C")))
    monkeypatch.undo()
    assert (folder / "report.html").read_bytes() == old
    assert sorted(os.listdir(folder)) == sorted(report.REPORT_FILES)


def test_charts_and_maps_replace_a_symlink(tmp_path):
    import torch
    outside = tmp_path / "target"
    outside.write_text("precious")
    os.symlink(outside, tmp_path / "c.png")
    plots.method_bars([{"set": "A", "distance": "l2", "mean": 1.0, "ci95": [0.5, 1.5]}], str(tmp_path / "c.png"), "t")
    (tmp_path / "m").mkdir()
    for name in ("l2.npy", "l2.png"):
        os.symlink(outside, tmp_path / "m" / name)
    plots.write_maps({"l2": np.ones((4, 4))}, torch.zeros(3, 4, 4), str(tmp_path / "m"), "tiny", {"l2": 1.0})
    assert outside.read_text() == "precious"
    written = [tmp_path / "c.png", tmp_path / "m" / "l2.npy", tmp_path / "m" / "l2.png"]
    assert not any(os.path.islink(p) for p in written)
    assert np.load(tmp_path / "m" / "l2.npy").sum() == 16


def _small(root, n=3):
    return _tree(str(root), images=[f"{k}.png" for k in range(n)], methods=["A", "B"], ref="GT")


def test_a_report_folder_written_by_another_run_is_refused_before_work(tiny, tmp_path, capsys, monkeypatch):
    gt, outs = _small(tmp_path / "d")
    (tmp_path / "rep").mkdir()
    held = filelock.FileLock(str(tmp_path / "rep" / ".zsiqa-report.lock"))
    held.acquire()
    seen = count_scored(monkeypatch)
    try:
        fails_one_line(capsys, lambda: _eval(tiny, gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--report",
                                             str(tmp_path / "rep")), "is being written by another run")
    finally:
        held.release()
    assert seen == [] and not (tmp_path / "rep" / "report.html").exists()


def test_stale_reports_and_maps_of_an_earlier_run_go(tiny, tmp_path, capsys):
    """A sweep's DIR/clean and DIR/rot-2, then a run without a sweep into DIR: the sweep's report
    files go (a user's own file stays, and its folder with it); --maps 2 then --maps 1: one maps
    folder left."""
    gt, outs = _small(tmp_path / "d")
    base = ["-d", "l2", "-sdir", str(tmp_path / "r"), "--report", str(tmp_path / "rep")]
    assert _eval(tiny, gt, outs, *base, "--kinds", "rot", "--pcts", "2", "--maps", "2") == 0
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"clean", "rot-2"}
    (tmp_path / "rep" / "rot-2" / "notes.txt").write_text("mine")
    (tmp_path / "rep" / "clean" / ".report.html.0123abcd.tmp").write_text("torn")  # a killed write's
    assert len(list((tmp_path / "r" / f"A_{tiny[0]}_maps").iterdir())) == 2
    (tmp_path / "r" / f"A_{tiny[0]}_maps" / "mine.txt").write_text("mine")
    capsys.readouterr()
    assert _eval(tiny, gt, outs, *base, "--maps", "1") == 0
    assert "removed 9 report file(s) of an earlier run" in capsys.readouterr().err  # 4 + 4 and the torn one
    assert not (tmp_path / "rep" / "clean").exists()
    assert sorted(os.listdir(tmp_path / "rep" / "rot-2")) == ["notes.txt"]
    assert set(report.REPORT_FILES) <= set(os.listdir(tmp_path / "rep"))
    maps = sorted(p.name for p in (tmp_path / "r" / f"A_{tiny[0]}_maps").iterdir())
    assert len(maps) == 2 and "mine.txt" in maps


# ---------------------------------------------------------------- 4. output names

def test_deeply_nested_and_case_twin_images_get_their_own_maps_folders(tiny, tmp_path):
    """Names too long once joined (each part fits) and names alike but for case: each image's maps
    in a folder of its own, no name over 255 bytes, distinct on a case-insensitive file system
    (the long name failed with 'File name too long' after all the scoring, losing the table)."""
    deep = "/".join(["d" * 120] * 3) + ".png"
    images = [deep, deep[:-4] + "x.png", "Q.png", "q.png"]
    gt, outs = _tree(str(tmp_path / "d"), images=images, methods=["A"], ref="GT")
    assert _eval(tiny, gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--maps", "4") == 0
    folders = [p.name for p in (tmp_path / "r" / f"A_{tiny[0]}_maps").iterdir()]
    assert len(folders) == 4 and len({f.casefold() for f in folders}) == 4
    assert all(len(f.encode()) <= 255 for f in folders)


def test_an_output_name_too_long_is_refused_before_work(tiny, tmp_path, capsys, monkeypatch):
    gt, outs = _tree(str(tmp_path / "d"), images=["0.png"], methods=["M" * 240], ref="GT")
    seen = count_scored(monkeypatch)
    fails_one_line(capsys, lambda: _eval(tiny, gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r")),
                   "more than the file system's 255")
    assert seen == [] and not (tmp_path / "r").exists()
    with pytest.raises(UserError, match="the path is .* bytes long"):
        results.check_lengths([str(tmp_path / "/".join(["p" * 200] * 25))], "output", "shorter")


def test_a_failed_map_write_keeps_the_table_and_the_report(tiny, tmp_path, capsys, monkeypatch):
    gt, outs = _small(tmp_path / "d")

    def full(*_):
        raise UserError("cannot write x/l2.npy: No space left on device; the maps were not written")
    monkeypatch.setattr(plots, "write_maps", full)
    fails_one_line(capsys, lambda: _eval(tiny, gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--report",
                                         str(tmp_path / "rep"), "--maps", "1"), "No space left")
    assert set(report.REPORT_FILES) <= set(os.listdir(tmp_path / "rep"))


def test_a_failed_map_write_prints_the_table(tiny, tmp_path, capsys, monkeypatch):
    gt, outs = _small(tmp_path / "d")
    monkeypatch.setattr(plots, "write_maps", lambda *_: (_ for _ in ()).throw(UserError("cannot write maps")))
    with pytest.raises(SystemExit):
        _eval(tiny, gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--maps", "1")
    out = capsys.readouterr().out
    assert "l2 (lower = more alike to the reference)" in out and "best" in out


# ---------------------------------------------------------------- 5. the page's script

def test_an_unknown_sort_column_is_no_script_error(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed: the page's script is tested in a real browser")
    folder = tmp_path / "rep"
    report.write_report(str(folder), _comparison())
    text = (folder / "report.html").read_text()
    catcher = ("<script>window.addEventListener('error', function (e) {"
               "document.documentElement.setAttribute('data-error', e.message); });</script>")
    (folder / "t.html").write_text(text.replace("</head>", catcher + "</head>", 1))
    for fragment, sorted_ in (("sort=99-asc", False), ("sort=0-desc", False), ("sort=2-desc", True)):
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              f"--user-data-dir={tempfile.gettempdir()}/zsiqa-chrome-{os.getpid()}",
                              "--virtual-time-budget=5000", "--dump-dom", f"{(folder / 't.html').as_uri()}#{fragment}"],
                             capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0 and "<table" in dom.stdout, dom.stderr[-2000:]
        assert 'data-error="' not in dom.stdout, re.findall(r'data-error="[^"]*"', dom.stdout)
        assert ('aria-sort="descending"' in dom.stdout) == sorted_
