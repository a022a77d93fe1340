"""The report as a paper's author keeps it (issue 28, item 3): spatial difference maps under a
per-window distance (wsd), a colour bar per map scale, one row per worst image with every method
beside the reference and the row's best marked, the same decimals down every column of every
format, the --maps files linked from the page, the meta line in words, a table.tex that compiles
within one column of a two-column paper, and `zsiqa corr --report DIR`."""
import base64
import contextlib
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import urllib.parse

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import calc_scores
import minidata
import run
from helpers import fails_one_line
from zsiqa import models, results
from zsiqa import report as rep
from zsiqa import stats as zstats

METHODS = {"esrgan": 1, "a_long_method_name_with_50%_&_odd_$chars$_and_more": 3, "swinir": 2}
K = 2  # --report-worst
N = 6  # images per method


@pytest.fixture(scope="module")
def wsd_run(tmp_path_factory, tiny_weights):
    """One label-free run under wsd alone (one value per 224-px window) on 224×224 images (one
    window each), the last image in a subfolder, with --report and --maps 1; its printed output."""
    from tinymodel import register_tiny
    root = tmp_path_factory.mktemp("authors")
    gt, outs = minidata.make_dirs(str(root / "d"), levels=tuple(METHODS.items()), n=N, size=(224, 224), sub=True)
    saved = dict(models.BACKBONES)
    register_tiny(models.BACKBONES)
    try:
        args = ["-dat", "dirs", "--ref-dir", gt, *[x for o in outs for x in ("--dis-dir", o)], "-m", "tiny_vit_test",
                "--weights", tiny_weights, "-d", "wsd", "--device", "cpu", "--no-progress", "-sdir", str(root / "r"),
                "--report", str(root / "rep"), "--report-worst", str(K), "--maps", "1"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert run.main(args) == 0
    finally:
        models.BACKBONES.clear()
        models.BACKBONES.update(saved)
    return {"root": root, "rep": root / "rep", "out": root / "r", "gt": gt, "outs": outs, "printed": out.getvalue(),
            "weights": tiny_weights}


def _scores(made, method):
    frame = pd.read_csv(made["out"] / f"{method}_tiny_vit_test_wsd.csv")
    return dict(zip(frame.ref, frame.pred))


class _Grid(html.parser.HTMLParser):
    """The worst-images grid: per row its cells, each {class, imgs: [(alt, src)], text, links}."""

    def __init__(self):
        super().__init__()
        self.rows, self.in_grid, self.cell, self.links = [], False, None, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "grid" in (attrs.get("class") or ""):
            self.in_grid = True
        elif not self.in_grid:
            return
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self.cell = {"class": attrs.get("class") or "", "imgs": [], "text": "", "links": []}
            self.rows[-1].append(self.cell)
        elif tag == "img" and self.cell is not None:
            self.cell["imgs"].append((attrs["alt"], attrs["src"]))
        elif tag == "a" and self.cell is not None:
            self.cell["links"].append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_grid = False
        elif tag == "td":
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["text"] += data + " "  # <span>1.5</span><span>0</span>: two words


def _grid(made):
    page = _Grid()
    page.feed((made["rep"] / "report.html").read_text())
    return [r for r in page.rows if r]  # the header row has th cells only


def _png(uri):
    raw = base64.b64decode(uri.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


# ---------------------------------------------------------------- 1-3. maps, colour bars, the grid

def test_maps_vary_within_a_window_under_wsd(wsd_run):
    """wsd is one value per window: on one-window images its map was one flat colour. The page
    now shows l2's per-position map and names it."""
    text = (wsd_run["rep"] / "report.html").read_text()
    maps = [src for row in _grid(wsd_run) for cell in row for alt, src in cell["imgs"] if " map of " in alt]
    assert maps and all(alt.startswith("l2 map of ") for row in _grid(wsd_run) for cell in row
                        for alt, _ in cell["imgs"] if " map of " in alt)
    for src in maps:
        assert len(np.unique(_png(src).reshape(-1, 3), axis=0)) > 10  # the 14×14 patch grid, not one square
    assert "l2 per position" in text and "one value per 224-px window" in text


def test_one_colour_bar_per_row_scale(wsd_run):
    """Each row's maps share one scale, drawn as a bar from the colour of 0 (bottom) to that of the
    row's largest value (top), labelled with both; the largest value is that of l2's maps of the
    row's pairs, as the API's Scorer.maps gives them."""
    import matplotlib

    from tinymodel import register_tiny
    from zsiqa import Scorer
    saved = dict(models.BACKBONES)
    register_tiny(models.BACKBONES)
    try:
        scorer = Scorer("tiny_vit_test", "l2", weights=wsd_run["weights"], device="cpu")
        rows = _grid(wsd_run)
        assert rows
        for row in rows:
            bars = [(alt, src) for cell in row for alt, src in cell["imgs"] if alt.startswith("colour scale")]
            assert len(bars) == 1
            alt, src = bars[0]
            top = float(re.fullmatch(r"colour scale from 0 to (\S+)", alt).group(1))
            pixels = _png(src)
            inferno = matplotlib.colormaps["inferno"]
            assert np.abs(pixels[0, 0] - np.array(inferno(1.0)[:3]) * 255).max() <= 2
            assert np.abs(pixels[-1, 0] - np.array(inferno(0.0)[:3]) * 255).max() <= 2
            assert row[-1]["text"].split() == [alt.split()[-1], "0"]
            image = row[0]["text"].split("worst of")[0].strip()
            want = max(float(scorer.maps(os.path.join(o, image), os.path.join(wsd_run["gt"], image))["l2"].max())
                       for o in wsd_run["outs"])
            assert top == pytest.approx(want, rel=5e-3)
    finally:
        models.BACKBONES.clear()
        models.BACKBONES.update(saved)


def test_worst_images_are_one_row_per_image_with_every_method(wsd_run):
    """One row per image (each method's K worst, taken in turn, each image once): the reference,
    then every method's output and map with its score; the row's lowest wsd is marked best."""
    per = {m: _scores(wsd_run, m) for m in METHODS}
    worst = [sorted(per[m], key=per[m].get, reverse=True)[:K] for m in METHODS]
    want = list(dict.fromkeys(w[j] for j in range(K) for w in worst))
    rows = _grid(wsd_run)
    assert [r[0]["text"].split("worst of")[0].strip() for r in rows] == want
    for row, image in zip(rows, want):
        assert len(row) == 1 + 1 + len(METHODS) + 1  # image, reference, a cell per method, the colour bar
        assert [alt for alt, _ in row[1]["imgs"]] == [f"reference {image}"]
        shots = row[2:-1]
        assert [cell["imgs"][0][0] for cell in shots] == [f"{m}'s output of {image}" for m in METHODS]
        best = min(METHODS, key=lambda m: per[m][image])
        for m, cell in zip(METHODS, shots):
            assert ("best" in cell["class"].split()) == (m == best) and ("★" in cell["text"]) == (m == best)
            assert float(cell["text"].replace("★", "").split("maps:")[0]) == pytest.approx(per[m][image], abs=1e-4)
    assert len(rows) <= len(METHODS) * K and not any("figure" in r[0]["class"] for r in rows)


# ---------------------------------------------------------------- 4. decimals

def _places(cells):
    """The decimals of every number in the cells."""
    return {len(x) for cell in cells for x in re.findall(r"\d\.(\d+)", cell)}


def _known():
    """Two methods whose means are 0.314 and 0.2304 (the issue's example) and a third further off."""
    base = np.linspace(-0.01, 0.01, 12)
    per = {"A": 0.314 + base, "B": 0.2304 + base[::-1] * 0.5, "C": 0.3 + 0.06569 + base * 2}
    per_set = {m: {f"{k}.png": float(v) for k, v in enumerate(vals)} for m, vals in per.items()}
    rows = [{"set": k, "distance": "l2", **v} for k, v in zstats.compare_methods(per_set, True).items()]
    return rows, rep.Comparison({"l2": rows}, {"l2": per_set}, {"l2": True}, "l2", [], "about")


def _md_columns(text):
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in text.splitlines()
            if re.match(r"\| (\d|—) \|", line)]
    return list(zip(*rows))


def test_every_column_has_fixed_decimals_in_every_format(wsd_run):
    """mean, interval, p and median difference: one number of decimals per column, in the printed
    table, report.md, table.tex and report.html (0.314 beside 0.2304 was 0.314 and 0.2304)."""
    rows, c = _known()
    columns = _md_columns(rep.markdown(c))
    for k in (3, 4, 5, 6):  # mean, 95% CI, p, median difference
        assert len(_places(columns[k])) == 1, columns[k]
    assert "0.3140" in columns[3] and "0.2304" in columns[3]
    printed = [line.split() for line in rep.format_table(rows).splitlines() if re.match(r"\s+\d ", line)]
    for k in (3, 4, 5):  # mean, std, median
        assert len(_places([r[k] for r in printed])) == 1, printed
    body = rep.latex(c).split(r"\midrule")[1].split(r"\bottomrule")[0]
    tex_cells = [line.split(" & ") for line in body.strip().splitlines()]
    for k in (1, 3):  # mean over its interval, median difference (n shown only where the counts differ)
        assert len(_places([r[k] for r in tex_cells])) == 1
    for text in ((wsd_run["rep"] / "report.md").read_text(),):
        for column in _md_columns(text)[3:7]:
            assert len(_places(column)) <= 1, column
    page = (wsd_run["rep"] / "report.html").read_text()
    per_image = re.findall(r'<td data-value="[^"]*">([^<]*)</td>', page)
    assert per_image and len(_places(per_image)) == 1
    printed = [line.split() for line in wsd_run["printed"].splitlines() if re.match(r"\s+\d ", line)]
    for k in (3, 4, 5):
        assert len(_places([r[k] for r in printed])) == 1, printed


# ---------------------------------------------------------------- 5-6. links, meta line

def test_maps_files_are_linked_and_the_links_resolve(wsd_run):
    """Each method's --maps 1 worst image: its grid cell links the maps written for it, relative to
    report.html, percent-encoded (the subfolder image's folder holds a literal %2F)."""
    links = {}
    for row in _grid(wsd_run):
        image = row[0]["text"].split("worst of")[0].strip()
        for m, cell in zip(METHODS, row[2:-1]):
            for href in cell["links"]:
                assert not re.match(r"[a-z]+:|/", href)
                links[(m, image)] = os.path.normpath(wsd_run["rep"] / urllib.parse.unquote(href))
    per = {m: _scores(wsd_run, m) for m in METHODS}
    assert set(links) == {(m, max(per[m], key=per[m].get)) for m in METHODS}
    for (m, image), path in links.items():
        folder = wsd_run["out"] / f"{m}_tiny_vit_test_maps" / image.replace("%", "%25").replace("/", "%2F")
        assert path == str(folder / "wsd.png") and os.path.isfile(path)


def test_meta_line_is_in_words(wsd_run):
    md = (wsd_run["rep"] / "report.md").read_text().splitlines()[2]
    page = (wsd_run["rep"] / "report.html").read_text()
    want = (f"tiny ViT (tiny\\_vit\\_test), the published precision (float32) on the CPU; {N} images; "
            "references: GT; run ")
    assert md.startswith(want) and " at " in md
    assert "precision published on cpu" not in page and "the published precision (float32) on the CPU" in page


# ---------------------------------------------------------------- 7. table.tex in a two-column paper

HOSTILE = ["ESRGAN_x4_(ours)_with_50%_more_&_odd_$chars$_{and}_#hash~tilde^caret",
           "SwinIR-L--real---world,,GAN \"quoted\" 'single' `grave` <less> |bar|",
           "a" * 48, "BSRGAN"]


def _hostile_comparison():
    rng = np.random.default_rng(7)
    per_set = {m: {f"{k}.png": float(0.3 + 0.02 * j + rng.normal(0, 0.01)) for k in range(9 if j == 3 else 10)}
               for j, m in enumerate(HOSTILE)}
    rows = [{"set": k, "distance": d, **v} for d in ("wsd", "l2") for k, v in zstats.compare_methods(per_set).items()]
    return rep.Comparison({d: [r for r in rows if r["distance"] == d] for d in ("wsd", "l2")},
                          {d: per_set for d in ("wsd", "l2")}, {"wsd": True, "l2": True}, "wsd", [],
                          "tiny ViT; references: GT_50%_&_$x$")


def _compile(tmp_path, tables, documentclass):
    """pdflatex a two-column document that \\input's each table file; returns its log."""
    names = []
    for k, text in enumerate(tables):
        (tmp_path / f"t{k}.tex").write_text(text)
        names.append(f"t{k}.tex")
    body = "\n".join(rf"\input{{{n}}}" + "\n" + r"\lipsumish" for n in names)
    (tmp_path / "paper.tex").write_text(
        rf"\documentclass{documentclass}" + "\n" + r"\usepackage[T1]{fontenc}\usepackage{booktabs,tabularx}" + "\n"
        + r"\newcommand\lipsumish{Text of the paper around the tables, enough to fill a line or two of a column.}"
        + "\n" + r"\begin{document}" + "\n" + body + "\n" + r"\end{document}" + "\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    return log


def _needs_latex(cls=None):
    """Skip, saying why, where pdflatex (or the document class `cls`) is not installed; under CI,
    whose .ci/run installs Debian's texlive packages, fail instead: the tables must be compiled."""
    missing = "pdflatex" if not shutil.which("pdflatex") else None
    if cls and not missing and subprocess.run(["kpsewhich", cls], capture_output=True).returncode:
        missing = cls
    if missing:
        why = f"{missing} is not installed (Debian: texlive-latex-base, texlive-latex-recommended, texlive-publishers)"
        if os.environ.get("CI"):
            pytest.fail(why + "; .ci/run installs them")
        pytest.skip(why)


@pytest.mark.parametrize("documentclass", [r"[conference]{IEEEtran}", r"[twocolumn]{article}"])
def test_table_tex_compiles_within_one_column(tmp_path, wsd_run, documentclass):
    """The run's table.tex, one with long hostile names (escaped) and a left-out column, and corr's:
    they compile and none is wider than the column (no overfull box); the packages they need are
    named in their first line."""
    _needs_latex("IEEEtran.cls" if "IEEEtran" in documentclass else None)
    tables = [(wsd_run["rep"] / "table.tex").read_text(), rep.latex(_hostile_comparison())]
    assert all("booktabs" in t.splitlines()[0] and "tabularx" in t.splitlines()[0] for t in tables)
    log = _compile(tmp_path, tables, documentclass)
    assert "Overfull \\hbox" not in log and "Output written" in log


# ---------------------------------------------------------------- 8. corr --report

def _corr_files(tmp_path):
    rng = np.random.default_rng(4)
    n = 40
    dis, ref = [f"d{i}.png" for i in range(n)], [f"r{i % 8}.png" for i in range(n)]
    mos = rng.normal(size=n)
    paths = []
    for name, noise in (("pipal_<b>A<|b>_50%_&_$x$_a_rather_long_metric_name.csv", 0.4), ("pipal_B|C*.csv", 1.0)):
        path = tmp_path / name
        pd.DataFrame({"dis": dis, "ref": ref, "mos": mos, "pred": -(mos + noise * rng.normal(size=n))}).to_csv(
            path, index=False)
        paths.append(str(path))
    return paths


def test_corr_report_files_hold_the_numbers_of_corr_json(tmp_path, capsys):
    """`zsiqa corr -f A -f B --report DIR`: report.md, table.tex and a self-contained report.html
    with the coefficients `--json` gives, names escaped in each."""
    paths = _corr_files(tmp_path)
    args = [x for p in paths for x in ("-f", p)] + ["--n-boot", "200"]
    assert calc_scores.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert calc_scores.main([*args, "--report", str(tmp_path / "rep")]) == 0
    assert "report.html" in capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    tex = (tmp_path / "rep" / "table.tex").read_text()
    page = (tmp_path / "rep" / "report.html").read_text()
    names = [os.path.basename(p) for p in paths]
    for row, name in zip(result["metrics"], names):
        line = next(x for x in md.splitlines() if x.startswith("| " + rep.markdown_name(name) + " | "))
        for c in ("srcc", "plcc", "plcc_logistic", "krcc"):
            value, (low, high) = row[c], row[f"{c}_ci95"]
            if value is None:  # the logistic fit failed: no coefficient
                assert "—" in line
                continue
            assert f"{value:.4f}" in line and f"[{low:.4f}, {high:.4f}]" in line
            assert f"{value:.4f}" in tex and f"{value:.4f}" in page
        assert rep.tex(name) in tex.replace(r"\allowbreak{}", "")
    assert "<b>A<" not in page and "&lt;b&gt;A&lt;|b&gt;" in page
    assert not re.search(r"src=|href=|url\(|@import|https?://", page)


def test_corr_table_tex_compiles_within_one_column(tmp_path, capsys):
    _needs_latex()
    paths = _corr_files(tmp_path)
    assert calc_scores.main([x for p in paths for x in ("-f", p)] + ["--n-boot", "50", "--report",
                                                                    str(tmp_path / "rep")]) == 0
    log = _compile(tmp_path, [(tmp_path / "rep" / "table.tex").read_text()], r"[twocolumn]{article}")
    assert "Overfull \\hbox" not in log


def test_a_corr_report_folder_another_run_writes_is_refused_in_one_line(tmp_path, capsys):
    """corr --report takes the same report-folder lock as eval's: while another run holds it, one
    line and exit 2, and nothing is written into the folder."""
    paths, folder = _corr_files(tmp_path), tmp_path / "rep"
    folder.mkdir()
    with results.report_lock(str(folder)):
        fails_one_line(capsys, lambda: calc_scores.main([x for p in paths for x in ("-f", p)]
                                                        + ["--n-boot", "20", "--report", str(folder)]),
                       "choose another --report")
    assert sorted(p.name for p in folder.iterdir()) == [results.REPORT_LOCK]
