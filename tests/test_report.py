"""A comparison report a paper can use: one `run.py -dat dirs --report DIR` over BasicSR-style
method folders; its statistics against scipy and by hand, its Markdown, LaTeX and HTML (parsed,
every embedded image decoded, no outside resource, sorted in a real browser), the summary rows
of a repeated run, and the worst pairs' maps."""
import base64
import csv
import datetime
import html.parser
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as sp

import minidata
import run
from helpers import fails_one_line, run_tiny
from zsiqa import models
from zsiqa import report as report_module
from zsiqa import stats as zstats
from zsiqa.report import tex

METHODS = {"esrgan": 1, "swinir": 3, "a_long_method_name_with_50%_more_&_odd_chars": 2}
K = 2


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_weights):
    """The run, once for the module: three methods in BasicSR's layout runs/<method>/visualization
    (the third named with NAME=PATH), two distances, --report and --maps."""
    from tinymodel import register_tiny
    root = tmp_path_factory.mktemp("report")
    gt, outs = minidata.make_dirs(str(root / "d"), levels=tuple(METHODS.items()), n=7, sub=False)
    dis_dirs = []
    for i, (method, out) in enumerate(zip(METHODS, outs)):
        folder = root / "runs" / (method if i < 2 else "third") / "visualization"
        folder.parent.mkdir(parents=True)
        os.rename(out, folder)
        dis_dirs += ["--dis-dir", str(folder) if i < 2 else f"{method}={folder}"]
    saved = dict(models.BACKBONES)
    register_tiny(models.BACKBONES)
    try:
        args = ["-dat", "dirs", "--ref-dir", gt, *dis_dirs, "-m", "tiny_vit_test", "--weights", tiny_weights, "-d",
                "wsd,l2", "--device", "cpu", "--no-progress", "-sdir", str(root / "r"), "--report", str(root / "rep"),
                "--report-worst", str(K), "--maps", "1"]
        assert run.main(args) == 0
        first = list(csv.DictReader(open(root / "r" / "summary_unlabelled.csv")))
        assert run.main(args) == 0  # the same run again: its summary rows replace the first ones
    finally:
        models.BACKBONES.clear()
        models.BACKBONES.update(saved)
    return {"root": root, "rep": root / "rep", "out": root / "r", "gt": gt, "first_summary": first}


def _scores(made, method, distance):
    """{image: score} from the method's results file (what the run wrote per pair)."""
    frame = pd.read_csv(made["out"] / f"{method}_tiny_vit_test_{distance}.csv")
    return dict(zip(frame.ref, frame.pred))


def _holm(p):
    """Holm's step-down adjustment, written out: multiply the i-th smallest of m by m − i, keep it
    monotone, cap at 1."""
    m, order, out, running = len(p), np.argsort(p), [0.0] * len(p), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out


def _expected(made, distance):
    """{method: (mean, Holm p vs best or None)} from the results files, scipy and _holm."""
    per = {m: _scores(made, m, distance) for m in METHODS}
    best = min(per, key=lambda m: np.mean(list(per[m].values())))
    others = [m for m in METHODS if m != best]
    raw = [sp.wilcoxon([per[m][i] for i in sorted(per[m])], [per[best][i] for i in sorted(per[m])]).pvalue
           for m in others]
    holm = dict(zip(others, _holm(raw)))
    return best, {m: (np.mean(list(per[m].values())), holm.get(m)) for m in METHODS}


# ---------------------------------------------------------------- statistics

def test_holm_matches_the_procedure_by_hand():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = list(rng.uniform(0, 0.2, rng.integers(1, 9)))
        assert np.allclose(zstats.holm(p), _holm(p))
    assert zstats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])


def test_bootstrap_intervals_are_seeded_percentiles():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    boot = np.random.default_rng(0)
    means = np.concatenate([x[boot.integers(0, 40, (200, 40))].mean(1) for _ in range(10)])
    assert zstats.summarize(x)["ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
    a, b = rng.normal(size=30), rng.normal(size=30)
    boot = np.random.default_rng(0)
    meds = np.concatenate([np.median((a - b)[boot.integers(0, 30, (200, 30))], axis=1) for _ in range(10)])
    diff, ci = zstats.median_difference(a, b)
    assert diff == pytest.approx(np.median(a - b)) and ci == pytest.approx(list(np.percentile(meds, [2.5, 97.5])))


def test_method_names_from_basicsr_paths(made):
    assert {p.name for p in made["out"].glob("*_wsd.csv")} == {f"{m}_tiny_vit_test_wsd.csv" for m in METHODS}


# ---------------------------------------------------------------- the files

def test_scores_csv_is_every_image_in_long_form(made):
    frame = pd.read_csv(made["rep"] / "scores.csv", keep_default_na=False)
    assert list(frame.columns) == ["image", "method", "distance", "score"]
    assert len(frame) == 7 * len(METHODS) * 2
    for (method, distance), group in frame.groupby(["method", "distance"]):
        assert dict(zip(group.image, group.score)) == pytest.approx(_scores(made, method, distance), rel=1e-12)


def test_markdown_tables_rank_with_holm_corrected_p(made):
    text = (made["rep"] / "report.md").read_text()
    for distance in ("wsd", "l2"):
        best, want = _expected(made, distance)
        section = text.split(f"## {distance} (lower = more alike to the reference)")[1].split("##")[0]
        rows = [[_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip("|"))]
                for line in section.splitlines() if re.match(r"\| \d", line)]
        assert [r[1].strip("*") for r in rows] == sorted(METHODS, key=lambda m: want[m][0])
        assert rows[0][1] == f"**{best}**" and rows[0][5] == "best"
        for r in rows[1:]:
            mean, p = want[r[1]]
            assert float(r[3]) == pytest.approx(mean, rel=1e-3)
            assert float(r[5].rstrip(" *")) == pytest.approx(p, rel=1e-2)


def _unescape(cell):
    """A Markdown cell's text as CommonMark shows it: a backslash before punctuation is dropped."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", cell)


@pytest.mark.parametrize("name", ["<b>x</b>|y*z_w", "caf\u00e9 <1> & [link](http://x) ~~s~~ `c` \\",
                                  "a--b---c ,,d ``e'' 'f' \"g\""])
def test_names_print_literally_in_markdown_and_latex(name):
    """A method's name is shown as written: in Markdown every markup character escaped (an HTML
    tag, emphasis or a link rendered by a previewer), in LaTeX no < > | (¡ ¿ — in its default
    font encoding) and no special character left bare."""
    cell = report_module.markdown_name(name)
    assert _unescape(cell) == name
    assert not re.search(r"(?<!\\)[<>*_|`\[\]~&]", re.sub(r"\\.", "", cell))
    latex = tex(name)
    bare = re.sub(r"\\(text\w+\{\}|.)", "", latex)
    assert not re.search(r"[<>|&_%$#~^`'\"]|--|,,", bare), latex  # no ligature (en dash, curly or low quote)
    assert re.sub(r"\{\}", "", bare) == re.sub(r"[<>|&_%$#~^`'\"\\{}]", "", name)  # nothing else changed


def test_latex_table_structure(made):
    text = (made["rep"] / "table.tex").read_text()
    tables = re.findall(r"\\begin\{tabularx\}\{\\columnwidth\}\{(.*?)\}\n(.*?)\\end\{tabularx\}", text, re.S)
    assert len(tables) == 2 and text.count(r"\begin{table}") == text.count(r"\end{table}") == 2
    for (spec, body), distance in zip(tables, ("wsd", "l2")):
        spec = re.sub(r"@\{\}|>\{[^{}]*\}", "", spec)  # the column letters: X (the names) and r
        assert body.count(r"\toprule") == body.count(r"\midrule") == body.count(r"\bottomrule") == 1
        rows = body.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().replace(r"\allowbreak{}", "").splitlines()
        assert len(rows) == len(METHODS)
        for row in rows:  # every row has the columns of the spec, and ends the row
            assert row.count("&") - row.count(r"\&") == len(spec) - 1 and row.rstrip().endswith("\\\\")
        best, want = _expected(made, distance)
        assert rf"\textbf{{{tex(best)}}}" in rows[0]
        for row in rows[1:]:
            name = next(m for m in METHODS if tex(m) in row)
            assert (r"$^\dagger$" in row) == (want[name][1] >= 0.05)  # not significantly worse: marked
    assert tex(list(METHODS)[2]) == r"a\_long\_method\_name\_with\_50\%\_more\_\&\_odd\_chars"


class _Page(html.parser.HTMLParser):
    """Every tag with its attributes, and the per-image table's rows."""

    def __init__(self):
        super().__init__()
        self.tags, self.in_table, self.rows = [], False, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table" and attrs.get("id") == "per-image":
            self.in_table = True
        elif tag == "tr" and self.in_table:
            self.rows.append([])
        elif tag == "td" and self.in_table:
            self.rows[-1].append(attrs.get("data-value"))

    def handle_endtag(self, tag):
        if tag == "table":
            self.in_table = False


def _decode(uri):
    kind, data = re.fullmatch(r"data:(image/(?:png|jpeg|svg\+xml));base64,([A-Za-z0-9+/=]+)", uri).groups()
    raw = base64.b64decode(data, validate=True)
    if kind == "image/svg+xml":
        return ET.fromstring(raw)
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        return im


def test_html_is_self_contained_and_every_image_decodes(made):
    text = (made["rep"] / "report.html").read_text()
    page = _Page()
    page.feed(text)
    images = [a for t, a in page.tags if t == "img"]
    decoded = [_decode(a["src"]) for a in images]
    charts = [d for d, a in zip(decoded, images) if a["alt"].startswith("bar chart")]
    assert len(charts) == 2 and all(c.format == "PNG" and c.size[0] > 300 for c in charts)
    rows = sum(a["alt"].startswith("reference ") for a in images)  # the worst-images grid: one row per image
    assert K <= rows <= len(METHODS) * K
    assert len(decoded) - len(charts) == rows * (1 + 2 * len(METHODS) + 1)  # reference, output and map, colour bar
    assert not [a for t, a in page.tags if t in ("link", "iframe", "object", "embed") or (t == "script" and "src" in a)]
    assert not re.search(r"src=(?![\"']?data:)|url\(|@import|https?://", text)
    assert all(not re.match(r"[a-z]+:|/", a["href"]) for t, a in page.tags if t == "a")  # relative links to --maps
    assert len(page.rows) == 1 + 7  # a header row and one row per image


def _chromium(*args):
    """Headless Chromium on args. Without it the test skips, saying so; under CI (which installs it) it fails."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        why = "the HTML report is tested in Chromium: install Debian's chromium package (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tempfile.gettempdir()}/zsiqa-chrome-{os.getpid()}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.subprocess
def test_html_sorts_in_a_real_browser(made):
    """Chromium runs the page's script: sorting the per-image table by a column, descending (the
    page reads #sort=<column>-<dir>, counting the image column as 1), orders its rows by that
    column's numbers."""
    url = (made["rep"] / "report.html").as_uri()
    for column, direction in ((1, "desc"), (3, "asc")):  # 0-based here: the page's columns 2 and 4
        dom = _chromium("--virtual-time-budget=5000", "--dump-dom", f"{url}#sort={column + 1}-{direction}")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = _Page()
        page.feed(dom.stdout)
        values = [float(r[column]) for r in page.rows[1:]]
        assert values == sorted(values, reverse=direction == "desc") and len(values) == 7
        assert f'aria-sort="{"descending" if direction == "desc" else "ascending"}"' in dom.stdout


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.subprocess
def test_html_renders_in_a_real_browser(made, tmp_path):
    shot = tmp_path / "shot.png"
    proc = _chromium("--window-size=1200,1600", f"--screenshot={shot}", (made["rep"] / "report.html").as_uri())
    assert proc.returncode == 0 and "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # text, tables and images, not a blank page


# ---------------------------------------------------------------- summary rows, maps

def test_repeated_run_replaces_its_summary_rows(made):
    rows = list(csv.DictReader(open(made["out"] / "summary_unlabelled.csv")))
    first = made["first_summary"]
    assert len(rows) == len(first) == len(METHODS) * 2
    assert {r["run_id"] for r in rows} != {r["run_id"] for r in first} and len({r["run_id"] for r in rows}) == 1
    datetime.datetime.fromisoformat(rows[0]["time"])
    assert all(float(r["pairs_per_s"]) > 0 for r in first)
    assert {r["pairs_per_s"] for r in rows} == {""}  # the repeat scored nothing: no rate (it wrote nan)
    for distance in ("wsd", "l2"):
        best, want = _expected(made, distance)
        for r in (r for r in rows if r["distance"] == distance):
            if r["set"] == best:
                assert r["p_holm"] == r["p_value"] == ""
            else:
                assert float(r["p_holm"]) == pytest.approx(want[r["set"]][1], rel=1e-9)  # written unrounded


def test_maps_of_the_worst_pairs(made):
    for method in METHODS:
        folders = list((made["out"] / f"{method}_tiny_vit_test_maps").iterdir())
        assert len(folders) == 1  # --maps 1
        worst = max(_scores(made, method, "wsd").items(), key=lambda kv: kv[1])[0]
        assert folders[0].name == worst  # no folder in the name: written as it is
        assert {p.name for p in folders[0].iterdir()} == {"wsd.npy", "wsd.png", "l2.npy", "l2.png"}


def test_method_names_are_printed_whole(made, capsys, tiny):
    """The printed table gives long names whole (it cut them at 20 characters)."""
    gt, outs = minidata.make_dirs(str(made["root"] / "w"), levels=(("A" * 30 + "1", 1), ("A" * 30 + "2", 2)), n=2,
                                  sub=False)
    assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0], "--dis-dir", outs[1], "-d", "l2",
                    "-sdir", str(made["root"] / "w" / "r")) == 0
    out = capsys.readouterr().out
    assert "A" * 30 + "1" in out and "A" * 30 + "2" in out


def test_report_needs_a_label_free_run_and_a_writable_folder(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "--report", str(tmp_path / "x")),
                   "without labels")
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    (tmp_path / "file").write_text("x")
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0],
                                            "--report", str(tmp_path / "file" / "rep")), "cannot write")


def test_every_worst_pair_gets_its_own_maps_folder(tiny, tmp_path):
    """x/1.png and x__1.png each get a folder (both were x__1: one pair's maps were overwritten
    by the other's)."""
    gt, (out,) = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 2),), n=2, sub=True)
    for folder in (gt, out):
        shutil.copy(os.path.join(folder, "0.png"), os.path.join(folder, "x__1.png"))
    assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", out, "-d", "l2", "-sdir",
                    str(tmp_path / "r"), "--maps", "3") == 0
    names = {p.name for p in (tmp_path / "r" / f"A_{tiny[0]}_maps").iterdir()}
    assert names == {"0.png", "x%2F1.png", "x__1.png"}


def test_report_targets_checked_before_scoring(tiny, tmp_path, capsys):
    """A report file that is a folder, or --report-worst without --report, stop in one line
    before any pair is scored (the first wrote three of the four files after scoring)."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    (tmp_path / "rep" / "report.html").mkdir(parents=True)
    base = ["-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0], "-d", "l2", "-sdir", str(tmp_path / "r")]
    fails_one_line(capsys, lambda: run_tiny(tiny, *base, "--report", str(tmp_path / "rep")), "report.html is a folder")
    fails_one_line(capsys, lambda: run_tiny(tiny, *base, "--report-worst", "2"), "give --report too")
    assert not (tmp_path / "r").exists() and os.listdir(tmp_path / "rep") == ["report.html"]


def test_a_limited_run_adds_its_own_summary_rows(tiny, tmp_path):
    """--limit N scores another set of pairs: its rows join the full run's in the summary (they
    replaced them, and the full comparison was gone)."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=4, sub=False)
    base = ["-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0], "--dis-dir", outs[1], "-d", "l2", "-sdir",
            str(tmp_path / "r")]
    assert run_tiny(tiny, *base) == 0 and run_tiny(tiny, *base, "--limit", "2") == 0
    rows = list(csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv")))
    assert sorted((r["set"], r["n"], r["limit"]) for r in rows) == [("A", "2", "2"), ("A", "4", ""), ("B", "2", "2"),
                                                                  ("B", "4", "")]


def test_a_method_with_no_readable_output_is_ranked_last(tiny, tmp_path, capsys):
    """--skip-missing and a method none of whose files can be read: kept in the comparison as
    'no pairs', ranked last (it was left out, and the report never named it)."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=3, sub=False)
    junk = tmp_path / "d" / "Z"
    junk.mkdir()
    for k in range(3):
        (junk / f"{k}.png").write_bytes(b"not an image")
    assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0], "--dis-dir", str(junk), "-d", "l2",
                    "--skip-missing", "-sdir", str(tmp_path / "r"), "--report", str(tmp_path / "rep")) == 0
    assert "no pairs to score in" in capsys.readouterr().err
    rows = [line for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[-1].startswith("| — | Z | 0 | — |")  # unranked, no images, no mean
    summary = {r["set"]: r for r in csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv"))}
    assert summary["Z"]["n"] == "0" and summary["Z"]["n_skipped"] == "3" and summary["A"]["n"] == "3"


@pytest.mark.slow
def test_report_written_before_a_reader_stops(tiny_weights, tmp_path):
    """`run.py ... --report DIR | head -1`: the report and every file exist before the first printed
    line (the reader was gone before the tables; the report came after them and was lost)."""
    from helpers import ROOT
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=3, sub=False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line written at once: the first print meets the closed pipe
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "tiny_run.py"), tiny_weights, "-dat", "dirs",
                             "--ref-dir", gt, "--dis-dir", outs[0], "--dis-dir", outs[1], "-m", "tiny_vit_test",
                             "-d", "l2", "--device", "cpu", "--no-progress", "-sdir", str(tmp_path / "r"),
                             "--report", str(tmp_path / "rep")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and "Traceback" not in err, err
    assert {"report.html", "report.md", "table.tex", "scores.csv"} <= set(os.listdir(tmp_path / "rep"))
    assert len(list(csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv")))) == 2
