"""calc_scores: the published per-image files reproduce SUMMARY.md; fits and options."""
import hashlib
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calc_scores
from helpers import REFERENCE, ROOT, fails_one_line

PUBLISHED = ROOT / "zsiqa" / "data" / "published"  # the six per-image files, shipped for `zsiqa corr`
# sha256 of the authors' files as the project's spec folder holds them
PUBLISHED_SHA256 = {
    "live_dinov1_l2": "4c70b4315cc24f96acaa32193daf4a6d3e699f6b7892eadc70540e28254dd004",
    "live_psnr": "974080a34be03d805c28d4227e69b0f1db117111bf90b0d21d5f74e4abefa716",
    "pipal_clip_vitb32_l2": "df191b1464643db673e89bf6de80732d86868b9d463385a49bc6a6615f2fa20e",
    "pipal_dinov1_l2_tra-1": "fada451c8007aec9f9df927f1d5857d6f750572a18e49e691cdc9447d4f3ba90",
    "pipal_dinov1_wsd": "4ff421bde0616153eebc06a53d3b2c4f471f3f5f555e43c27fca9e646ee21559",
    "tid2013_clip_vitb32_cos": "14b82e5fdde65760111a1f99a75189a6bd238f283c33c67b06eaec11a1a7d22b",
}
FILES = ["live_dinov1_l2", "live_psnr", "pipal_clip_vitb32_l2", "pipal_dinov1_wsd", "tid2013_clip_vitb32_cos"]


def _summary_clean():
    """SUMMARY.md's clean table: {(dataset, method): (srcc, plcc, krcc)}."""
    text = (REFERENCE / "SUMMARY.md").read_text()
    clean = text.split("## Clean")[1].split("## Robustness")[0]
    out = {}
    for line in clean.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and re.match(r"[\d.]+ /", cells[1]):
            for ds, cell in zip(("pipal", "live", "tid2013"), cells[1:], strict=False):
                if cell != "—":
                    out[(ds, cells[0])] = tuple(float(x) for x in cell.split("/"))
    return out


def _summary_robust():
    text = (REFERENCE / "SUMMARY.md").read_text().split("## Robustness")[1]
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and re.match(r"[\d.]+ /", cells[1]):
            for ds, cell in zip(("pipal", "live", "tid2013"), cells[1:], strict=False):
                for kind, v in zip(("clean", "tra", "sca", "rot"), cell.split("/"), strict=False):
                    if v.strip() != "—":
                        out[(ds, cells[0], kind)] = float(v)
    return out


def _readme_rows():
    """The README's accuracy table: {(dataset, method_distance): (srcc, plcc)} and the PIPAL
    robustness column {(method_distance, kind): srcc}."""
    text = (ROOT / "README.md").read_text()
    clean, robust = {}, {}
    for line in text[text.index("## Reproducing the paper"):].splitlines():
        m = re.match(r"\| `?([\w]+)`? \| ([a-z0-9—]+) \| (.*) \|$", line)
        if m and re.match(r"[\d.]+ /", m[3].strip()):  # a row of figures (not the header)
            method = f"{m[1]}_{m[2]}" if m[2] != "—" else m[1].lower()
            cells = [c.strip() for c in m[3].split("|")]
            for dataset, cell in zip(("pipal", "live", "tid2013"), cells[:3]):
                if cell != "—":
                    clean[(dataset, method)] = tuple(float(x) for x in cell.split("/"))
            for kind, v in zip(("clean", "tra", "sca", "rot"), cells[3].split("/")):
                robust[(method, kind)] = float(v)
    return clean, robust


@pytest.mark.parametrize("name", FILES)
def test_shipped_files_reproduce_the_readme_table(name, capsys):
    """`zsiqa corr` on the per-image files in zsiqa/data/published/ gives the README's figures."""
    dataset, method = name.split("_", 1)
    calc_scores.main(["-f", str(PUBLISHED / f"{name}.csv"), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert (round(got["srcc"], 4), round(got["plcc"], 4)) == _readme_rows()[0][(dataset, method)]


def test_shipped_robustness_file_reproduces_the_readme_table(capsys):
    calc_scores.main(["-dat", "pipal", "-f", str(PUBLISHED / "pipal_dinov1_l2_tra-1.csv"), "--json"])
    assert round(json.loads(capsys.readouterr().out)["srcc"], 3) == _readme_rows()[1][("dinov1_l2", "tra")]


@pytest.mark.parametrize("name", [*FILES, "pipal_dinov1_l2_tra-1"])
def test_published_by_name_gives_the_readme_table_without_a_warning(name, capsys):
    """`zsiqa corr --published NAME` (the files travel inside the package) prints the README's
    figures; their directions are known, so nothing is said about a missing record."""
    dataset, method = name.split("_", 1)
    assert calc_scores.main(["--published", name, "--json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)
    if name.endswith("_tra-1"):
        assert round(got["srcc"], 3) == _readme_rows()[1][("dinov1_l2", "tra")]
    else:
        assert (round(got["srcc"], 4), round(got["plcc"], 4)) == _readme_rows()[0][(dataset, method)]
    assert got["dataset"] == dataset and out.err == ""
    calc_scores.main(["-f", str(PUBLISHED / f"{name}.csv")])  # named by its path: the same, quietly
    assert capsys.readouterr().err == ""


def test_published_list_and_refusals(tmp_path, capsys):
    assert calc_scores.main(["--published", "list"]) == 0
    assert capsys.readouterr().out.split() == sorted(p.stem for p in PUBLISHED.glob("*.csv"))
    fails_one_line(capsys, lambda: calc_scores.main(["--published", "pipal_dinov2_wsd"]), "pipal_dinov1_wsd")
    both = ["--published", "live_psnr", "-f", str(PUBLISHED / "live_psnr.csv")]  # one file named two ways
    fails_one_line(capsys, lambda: calc_scores.main(both), "is given twice")
    pair = ["--published", "pipal_dinov1_wsd", "--published", "pipal_clip_vitb32_l2", "--json", "--n-boot", "50"]
    assert calc_scores.main(pair) == 0  # the published names compare as -f files do
    got = {os.path.basename(m["file"]): round(m["srcc"], 4) for m in json.loads(capsys.readouterr().out)["metrics"]}
    assert got == {"pipal_dinov1_wsd.csv": 0.6414, "pipal_clip_vitb32_l2.csv": 0.6194}
    copy = tmp_path / "live_psnr.csv"  # a copy elsewhere is any file: its name is all there is to go by
    copy.write_bytes((PUBLISHED / "live_psnr.csv").read_bytes())
    calc_scores.main(["-f", str(copy)])
    assert "no record beside it" in capsys.readouterr().err


@pytest.mark.golden
def test_shipped_files_are_the_published_ones():
    shipped = {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in PUBLISHED.glob("*.csv")}
    assert shipped == PUBLISHED_SHA256


@pytest.mark.golden
@pytest.mark.parametrize("name", FILES)
def test_published_files_reproduce_summary(name, capsys):
    dataset, method = name.split("_", 1)
    calc_scores.main(["-f", str(PUBLISHED / f"{name}.csv"), "--json"])
    got = json.loads(capsys.readouterr().out)
    want = _summary_clean()[(dataset, method)]
    assert got["n"] == {"pipal": 23200, "live": 779, "tid2013": 3000}[dataset]
    assert [round(got[k], 4) for k in ("srcc", "plcc", "krcc")] == list(want)


@pytest.mark.golden
def test_published_robustness_file_reproduces_summary(capsys):
    calc_scores.main(["-dat", "pipal", "-f", str(PUBLISHED / "pipal_dinov1_l2_tra-1.csv"), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert round(got["srcc"], 3) == _summary_robust()[("pipal", "dinov1_l2", "tra")]


def _frame(tmp_path):
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 2, 60)
    mos = 80 / (1 + np.exp(3 * (pred - 1))) + rng.normal(0, 2, 60)  # higher pred → lower MOS
    refs = [f"r{i % 4}.png" for i in range(60)]
    f = tmp_path / "kadid10k_test_l2.csv"
    frame = pd.DataFrame({"dis": [f"d{i}.png" for i in range(60)], "ref": refs, "mos": mos, "pred": pred})
    frame.to_csv(f, index=False)
    return f, pred, mos, refs


def test_signs_byref_and_plot(tmp_path, capsys):
    f, pred, mos, refs = _frame(tmp_path)
    calc_scores.main(["-f", str(f), "--json", "--plot", str(tmp_path / "s.png")])
    got = json.loads(capsys.readouterr().out)
    assert got["dataset"] == "kadid10k" and got["label_higher_better"]
    assert got["srcc"] == pytest.approx(stats.spearmanr(-pred, mos)[0]) and got["srcc"] > 0.9
    assert got["plcc_logistic"] >= got["plcc"] - 1e-9  # the fit can only straighten the relation
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    calc_scores.main(["-f", str(f), "--json", "--byref"])
    by = json.loads(capsys.readouterr().out)
    per = [stats.spearmanr(-pred[[i for i in range(60) if refs[i] == r]],
                           mos[[i for i in range(60) if refs[i] == r]])[0] for r in sorted(set(refs))]
    assert by["refs"] == 4 and by["srcc"] == pytest.approx(np.mean(per))


def test_logistic_fit_recovers_a_logistic():
    x = np.linspace(-3, 3, 80)
    from zsiqa import stats as zstats
    y = zstats.logistic5(x, 10, 1.5, 0.2, 0.3, 5)
    curve = zstats.fit_logistic(x, y)
    assert np.allclose(curve(x), y, atol=1e-6)
    assert zstats.fit_logistic(x[:5], y[:5]) is None


def test_bad_results_files(tmp_path, capsys):
    (tmp_path / "live_x.csv").write_text("a,b\n1,2\n")
    for argv, match in [(["-f", str(tmp_path / "none.csv")], "not found"),
                        (["-f", str(tmp_path / "live_x.csv")], "lacks column"),
                        (["-f", str(tmp_path / "other.csv")], "not found")]:
        fails_one_line(capsys, lambda argv=argv: calc_scores.main(argv), match)
    (tmp_path / "mystery.csv").write_text("dis,ref,mos,pred\na,b,1,2\n")
    with pytest.raises(SystemExit):
        calc_scores.main(["-f", str(tmp_path / "mystery.csv")])
    assert "label direction" in capsys.readouterr().err


def test_plot_that_cannot_be_written_is_one_line(tmp_path, capsys):
    import calc_scores
    path = tmp_path / "pipal_x_l2.csv"
    rows = "".join(f"d{i}.bmp,r.bmp,{1500 + 10 * i},{0.5 - 0.01 * i * i}\n" for i in range(8))
    path.write_text("dis,ref,mos,pred\n" + rows)
    for target, match in [(tmp_path / "nodir" / "x.png", "cannot write"), (tmp_path / "x.xyz", "cannot write a .xyz"),
                          (tmp_path, "is a folder")]:
        fails_one_line(capsys, lambda target=target: calc_scores.main(["-dat", "pipal", "-f", str(path),
                                                                       "--plot", str(target)]), match, warnings=False)
    assert not (tmp_path.parent / f"{tmp_path.name}.png").exists()  # matplotlib's name for the folder's path
    # a name without an extension: the PNG matplotlib writes is the file reported
    assert calc_scores.main(["-dat", "pipal", "-f", str(path), "--plot", str(tmp_path / "scat"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(tmp_path / "scat.png")
    assert (tmp_path / "scat.png").read_bytes()[:4] == b"\x89PNG" and not (tmp_path / "scat").exists()


@pytest.mark.parametrize("record", ["{bad", "[]", "null", '{"dataset": 3}', "folder"])
def test_broken_record_names_what_corr_can_do(tmp_path, capsys, record):
    """corr has no --overwrite: its message for a broken record says what helps corr; a record
    that is a folder is refused, not taken for no record."""
    path = tmp_path / "pipal_x_l2.csv"
    path.write_text("dis,ref,mos,pred\n" + "".join(ROWS))
    if record == "folder":
        (tmp_path / "pipal_x_l2.json").mkdir()
    else:
        (tmp_path / "pipal_x_l2.json").write_text(record)
    line = fails_one_line(capsys, lambda: calc_scores.main(["-f", str(path)]), "pipal_x_l2.json",
                          "move it away" if record == "folder" else "correct or remove it", warnings=False)
    assert "pass --overwrite to run.py to start" not in line



ROWS = [f"d{i}.bmp,r{i % 2}.bmp,{1500 + 10 * i},{0.5 - 0.01 * i * i}\n" for i in range(8)]  # line 3: ...,1510,0.49


def _with_line3(row):
    return "<header>\n" + "".join(ROWS[:1] + [row] + ROWS[2:])


@pytest.mark.parametrize("text,match", [
    (_with_line3("d1.bmp,r1.bmp,1510,\n"), "line 3: pred is blank"),
    (_with_line3("d1.bmp,r1.bmp,1510,abc\n"), "line 3: pred is 'abc', not a finite number"),
    (_with_line3("d1.bmp,r1.bmp,1510,inf\n"), "line 3: pred is 'inf', not a finite number"),
    (_with_line3("d1.bmp,r1.bmp,1510,-inf\n"), "line 3: pred is '-inf', not a finite number"),
    (_with_line3("d1.bmp,r1.bmp,nan,0.49\n"), "line 3: mos is 'nan', not a finite number"),
    (_with_line3("d1.bmp,r1.bmp,1510,0,49\n"), "line 3: 5 field(s), the header has 4"),
    (_with_line3("d1.bmp,r1.bmp\n"), "line 3: 2 field(s), the header has 4"),
    ("<header>\n" + "".join(ROWS) + "<header>\n" + "".join(ROWS), "line 10: the header again"),
    ("", "is empty"), ("\n", "is empty"), ("<header>\n", "holds no complete rows")])
@pytest.mark.parametrize("kind", ["results", "per-layer"])
def test_damaged_files_refused_with_file_and_line(tmp_path, capsys, text, match, kind):
    """-f and --per-layer read through one rule: a blank, non-numeric or non-finite value, a row of
    another length, a repeated header, an empty file are one line naming the file and line, exit 2
    (--per-layer gave a traceback or a table of nan, -f took inf and printed numbers from it)."""
    last = "pred" if kind == "results" else "block_1"
    path = tmp_path / ("pipal_x_l2.csv" if kind == "results" else "pipal_x_l2_layers.csv")
    path.write_text(text.replace("<header>", f"dis,ref,mos,{last}"))
    fails_one_line(capsys, lambda: calc_scores.main(["-f" if kind == "results" else "--per-layer", str(path)]),
                   str(path), match.replace("pred", last), warnings=False)


def test_column_missing_or_named_twice_or_no_labels(tmp_path, capsys):
    for header, match in [("dis,ref,mos", "lacks column(s) pred"), ("dis,ref,mos,pred,pred", "column name twice"),
                          ("dis,ref,pred", "label-free")]:
        path = tmp_path / "pipal_x_l2.csv"
        path.write_text(header + "\n" + "".join(f"d{i},r,{i}" + ",0.5" * (header.count(",") - 2) + "\n"
                                                 for i in range(8)))
        fails_one_line(capsys, lambda path=path: calc_scores.main(["-f", str(path)]), match, warnings=False)


def test_names_stay_names(tmp_path, capsys):
    """Names are read as text: 'NA' and '001' stay names (pandas made them NaN and 1), so --byref
    groups the references as written."""
    path = tmp_path / "pipal_x_l2.csv"
    path.write_text("dis,ref,mos,pred\n" + "".join(f"d{i},{('NA', '001')[i % 2]},{1500 + 10 * i},{-0.1 * i}\n"
                                                   for i in range(8)))
    calc_scores.main(["-f", str(path), "--byref", "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["refs"] == 2 and got["srcc"] == pytest.approx(1.0)


def test_results_file_resaved_with_a_byte_order_mark(tmp_path, capsys):
    """A results file re-saved by Excel or Notepad starts with a UTF-8 byte-order mark: read as
    without it (the header's first name became '\\ufeffdis', 'lacks column dis')."""
    f, pred, mos, _ = _frame(tmp_path)
    calc_scores.main(["-f", str(f), "--json"])
    plain = json.loads(capsys.readouterr().out)
    marked = tmp_path / f.name.replace(".csv", "_bom.csv")
    marked.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    calc_scores.main(["-f", str(marked), "--json", "-dat", "kadid10k"])
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == plain["n"] == 60
    assert got["srcc"] == plain["srcc"] == pytest.approx(stats.spearmanr(-pred, mos)[0])
