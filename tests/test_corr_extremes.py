"""corr names what a path that is no file is (a FIFO or /dev/zero would block or never end, a
folder is not "not found"), and computes from values near float64's limit without numpy's raw
warnings: coefficients are scale-free, so extreme columns are scaled by a power of two first."""
import json
import os

import numpy as np
import pytest
from scipy import stats

import calc_scores
from helpers import fails_one_line


def test_paths_that_are_no_file_are_named(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.csv")
    for argv, match in [(["-f", str(tmp_path / "fifo.csv")], "is not a regular file (a FIFO, socket or device)"),
                        (["-f", "/dev/zero"], "/dev/zero is not a regular file"),
                        (["-f", str(tmp_path)], f"results file {tmp_path} is a folder, not a file"),
                        (["--per-layer", str(tmp_path)], f"per-layer file {tmp_path} is a folder, not a file"),
                        (["--per-layer", str(tmp_path / "fifo.csv")], "per-layer file"),
                        (["-f", str(tmp_path / "none.csv")], "results file not found")]:
        fails_one_line(capsys, lambda argv=argv: calc_scores.main(["-dat", "pipal", *argv]), match)


def _file(tmp_path, pred, mos):
    path = tmp_path / "pipal_x_l2.csv"
    path.write_text("dis,ref,mos,pred\n" + "".join(f"d{i}.bmp,r{i % 3}.bmp,{float(m)!r},{float(p)!r}\n"
                                                   for i, (p, m) in enumerate(zip(pred, mos))))
    return str(path)


@pytest.mark.parametrize("column", ["pred", "mos", "both"])
def test_values_near_the_float64_limit(tmp_path, capsys, column):
    """PLCC equals scipy's on the same columns divided by 1e300 (not a power of two); nothing on
    stderr; --plot draws them."""
    rng = np.random.default_rng(0)
    pred = rng.uniform(1, 1.79, 30)
    mos = 1700 - 300 * pred + rng.normal(0, 40, 30)  # PIPAL-like: higher = better, falling with the distance
    big = {"pred": (pred * 1e308, mos), "mos": (pred, mos / 1500 * 1e308), "both": (pred * 1e308, mos / 1500 * 1e308)}
    p, m = big[column]
    path = _file(tmp_path, p, m)
    calc_scores.main(["-dat", "pipal", "-f", path, "--json", "--plot", str(tmp_path / "p.png")])
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert err == "" and (tmp_path / "p.png").stat().st_size > 0
    tame = [v / 1e300 if v.max() > 1e300 else v for v in (p, m)]
    assert got["plcc"] == pytest.approx(-stats.pearsonr(*tame)[0], rel=1e-9)  # pipal: higher = better, pred: distance
    assert got["srcc"] == pytest.approx(-stats.spearmanr(p, m)[0], rel=1e-12)
    assert np.isfinite(got["plcc_logistic"])
    calc_scores.main(["-dat", "pipal", "-f", path, "--byref"])
    out, err = capsys.readouterr()
    assert err == "" and "nan" not in out


def test_numeric_trouble_is_one_line(capsys):
    from zsiqa.correlate import one_line_warnings
    with one_line_warnings("x.csv"):
        np.float64(1e308) * 10  # overflow
        np.array([0.0]) / 0  # invalid
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: x.csv: the values are too extreme") and "overflow" in err
