"""Label-free comparison of methods: pairing rules, summaries against numpy/scipy, the paired test."""
import os

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from zsiqa import pairing
from zsiqa import stats as zstats
from zsiqa.errors import UserError


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


@pytest.fixture
def folders(tmp_path):
    for rel in ("GT/0001.png", "GT/x/0002.png", "GT/0003.png"):
        _touch(tmp_path / rel)
    for rel in ("A/0001.jpg", "A/x/0002.png", "A/0003.bmp", "B/0001.png", "B/x/0002.jpg", "B/0003.png"):
        _touch(tmp_path / rel)
    return tmp_path


def test_pairing_by_relative_stem(folders):
    sets = pairing.pair_folders(str(folders / "GT"), [str(folders / "A"), str(folders / "B")])
    assert [s.name for s in sets] == ["A", "B"]
    assert sets[0].pairs == [("0001.png", "0001.jpg"), ("0003.png", "0003.bmp"), ("x/0002.png", "x/0002.png")]


def test_orphans_on_either_side(folders):
    _touch(folders / "A" / "extra.png")
    os.remove(folders / "A" / "0003.bmp")
    orphans = r"1 output file\(s\) without a reference \(e.g. extra.png\), 1 reference\(s\) without an output"
    with pytest.raises(UserError, match=orphans):
        pairing.pair_folders(str(folders / "GT"), [str(folders / "A")])
    said = []
    sets = pairing.pair_folders(str(folders / "GT"), [str(folders / "A")], skip_missing=True, warn=said.append)
    assert len(sets[0].pairs) == 2 and "scoring the 2 pairs found" in said[0]


@pytest.mark.parametrize("case,match", [("dup", "differ only by extension"), ("twice", "given twice"),
                                        ("empty", "holds no images"), ("noref", "folder not found"),
                                        ("nopartner", "no image has a partner"), ("same_name", "named 'X'"),
                                        ("same_but_case", "named, but for case, 'x'")])
def test_bad_folders(folders, case, match):
    gt, dirs = str(folders / "GT"), [str(folders / "A")]
    if case == "dup":
        _touch(folders / "A" / "0001.png")
    elif case == "twice":
        dirs = [str(folders / "A"), str(folders / "A") + "/"]
    elif case == "empty":
        os.makedirs(folders / "E")
        dirs = [str(folders / "E")]
    elif case == "noref":
        gt = str(folders / "nope")
    elif case == "nopartner":
        _touch(folders / "C" / "zzz.png")
        dirs = [str(folders / "C")]
    elif case == "same_name":
        _touch(folders / "sub" / "A" / "0001.png")
        dirs = [f"X={folders / 'A'}", f"X={folders / 'sub' / 'A'}"]
    elif case == "same_but_case":  # x and X name one results file on macOS and Windows
        _touch(folders / "sub" / "A" / "0001.png")
        dirs = [f"x={folders / 'A'}", f"X={folders / 'sub' / 'A'}"]
    with pytest.raises(UserError, match=match):
        pairing.pair_folders(gt, dirs)


def test_summary_equals_numpy():
    x = np.random.default_rng(1).gamma(2.0, 0.1, 300)
    s = zstats.summarize(x, seed=0)
    assert s["n"] == 300 and s["mean"] == pytest.approx(x.mean()) and s["median"] == pytest.approx(np.median(x))
    assert s["std"] == pytest.approx(x.std(ddof=1))
    half = 1.96 * x.std(ddof=1) / np.sqrt(300)  # the bootstrap interval is close to the normal one here
    assert s["ci95"][0] == pytest.approx(x.mean() - half, rel=0.1)
    assert s["ci95"][1] == pytest.approx(x.mean() + half, rel=0.1)
    assert zstats.summarize(x, seed=0) == s  # seeded


def test_paired_test_finds_the_clearly_better_method():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.1, 1, 60)
    per_set = {"good": dict(enumerate(base)), "bad": dict(enumerate(base + rng.uniform(0.01, 0.05, 60))),
               "same": dict(enumerate(base))}
    res = zstats.paired_tests(per_set)
    assert res["good"]["vs"] == "good" and res["good"]["p_value"] is None
    assert res["bad"]["p_value"] == pytest.approx(stats.wilcoxon(base + 0, list(per_set["bad"].values())).pvalue)
    assert res["bad"]["p_value"] < 1e-6 and res["bad"]["losses"] == 60 and res["bad"]["wins"] == 0
    assert res["same"]["p_value"] == 1.0 and res["same"]["wins"] == res["same"]["losses"] == 0
    partial = {"good": per_set["good"], "bad": {k: v for k, v in per_set["bad"].items() if k < 30}}
    assert zstats.paired_tests(partial)["bad"]["n_common"] == 30
