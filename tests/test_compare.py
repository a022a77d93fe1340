"""Label-free comparisons that cannot contradict their pairs: the side of a significant paired test
(a method better than the one ranked first is never marked worse), ranking and tests on the images
every ranked method has, significance that no outcome could reach said so, and whose wins the
counts are. Checked on score dicts against hand-counted exact Wilcoxon p-values and scipy, in
every table format, and end to end through the eval command with the tiny ViT."""
import csv
import os
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sp

from helpers import run_tiny
from minidata import _distort, _img
from zsiqa import plots
from zsiqa import report as rep
from zsiqa import stats as zstats

# summary_unlabelled.csv's columns before this change: all kept, under the same names
OLD_COLUMNS = ["set", "model", "distance", "robustness", "pct", "n", "n_skipped", "mean", "std", "median", "ci95_low",
               "ci95_high", "lower_better", "vs", "n_common", "p_value", "p_holm", "median_diff",
               "median_diff_ci95_low", "median_diff_ci95_high", "wins", "losses", "pairs_per_s", "precision", "device",
               "model_norm", "resize", "swd_seed", "layers", "limit", "weights", "ref_dir", "dis_dir", "methods",
               "file", "time", "run_id"]


def _exact_two_sided(diff):
    """The exact two-sided Wilcoxon signed-rank p of differences without ties or zeros, counted by
    hand: the share of the 2^n sign patterns whose smaller rank sum is at most the observed one."""
    d = np.asarray(diff, float)
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    t = int(min(ranks[d > 0].sum(), ranks[d < 0].sum()))
    ways = np.zeros(t + 1, dtype=np.int64)  # ways[s]: subsets of {1..n} with sum s (s ≤ t)
    ways[0] = 1
    for r in range(1, len(d) + 1):
        ways[r:] = ways[r:] + ways[:-r] if r <= t else ways[r:]
    return min(1.0, 2 * int(ways.sum()) / 2 ** len(d))


def _holm(p):
    """Holm's adjustment written out: the i-th smallest of m times m − i, kept monotone, capped at 1."""
    out, running = [0.0] * len(p), 0.0
    for i, k in enumerate(np.argsort(p)):
        running = max(running, min(1.0, (len(p) - i) * p[k]))
        out[k] = running
    return out


def _pq(n=16):
    """The hostile case as scores: P light noise (0.010…) except image 0 heavy (0.5), Q medium noise
    (0.020…) everywhere: P closer on 15 of 16 images, Q the lower mean."""
    rng = np.random.default_rng(3)
    p = 0.010 + rng.uniform(0, 1e-3, n)
    p[0] = 0.5
    q = 0.020 + rng.uniform(0, 1e-3, n)
    return {"P": {f"{k}.png": v for k, v in enumerate(p)}, "Q": {f"{k}.png": v for k, v in enumerate(q)}}


def _comparison(per_set, lower_better=True, distance="l2"):
    rows = [{"set": k, "distance": distance, **v} for k, v in zstats.compare_methods(per_set, lower_better).items()]
    return rows, rep.Comparison({distance: rows}, {distance: per_set}, {distance: lower_better}, distance, {}, "about")


def _md_rows(text):
    """{method: cells} of a Markdown report's table rows (names here need no escaping)."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if re.match(r"\| (\d|—) \|", line)]
    return {r[1].strip("*"): r for r in rows}


def _tex_rows(text):
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0]
    return {re.sub(r"\\textbf\{|\$\^\\dagger\$|\}", "", r.split(" & ")[0].strip()): r  # the name: the first column
            for r in body.strip().splitlines()}


# ---------------------------------------------------------------- score dicts

def test_a_method_better_on_the_pairs_is_never_marked_worse():
    """P wins 15 of 16 pairs, Q has the lower mean (P's one heavy image): Q ranks first, and P is
    marked significantly *better* on the paired test (it was marked '*', worse)."""
    per_set = _pq()
    p, q = (np.array(list(per_set[m].values())) for m in "PQ")
    assert q.mean() < p.mean() and (p < q).sum() == 15  # the case as described
    res = zstats.compare_methods(per_set)
    assert res["P"]["vs"] == "Q" and not res["P"]["worse"]
    assert res["Q"]["verdict"] == "best"
    assert res["P"]["p_value"] == pytest.approx(_exact_two_sided(p - q), rel=1e-12)
    assert res["P"]["p_value"] == pytest.approx(2 * 169 / 2 ** 16)  # 169 subsets of {1..16} sum to ≤ 16
    assert res["P"]["p_value"] == pytest.approx(2 * sp.wilcoxon(p, q, alternative="less").pvalue)
    assert res["P"]["side"] == "better" and res["P"]["verdict"] == "better"
    assert res["P"]["better"] and not res["P"]["worse"]
    assert (res["P"]["wins"], res["P"]["losses"]) == (15, 1) and res["P"]["median_diff"] < 0
    mirrored = zstats.compare_methods({m: {k: -v for k, v in s.items()} for m, s in per_set.items()}, False)
    assert {m: r["verdict"] for m, r in mirrored.items()} == {"P": "better", "Q": "best"}  # higher = more alike
    assert mirrored["P"]["p_value"] == res["P"]["p_value"] and mirrored["P"]["wins"] == 15


def test_identical_outputs_are_not_significant_rather_than_too_few():
    """Every pair tied: p = 1, not significant; 'n too small' would blame the 20 images."""
    same = {"A": dict(enumerate(np.linspace(0, 1, 20)))}
    res = zstats.compare_methods({**same, "B": dict(same["A"])})["B"]
    assert res["p_value"] == 1.0 and res["verdict"] == "n.s." and res["p_holm_min"] == pytest.approx(2 / 2 ** 20)


def test_the_mark_is_better_in_every_format():
    rows, c = _comparison(_pq())
    by = {r["set"]: r for r in rows}
    assert rep.significance_mark(by["P"]) == "better*" and rep.significance_mark(by["Q"]) == "best"  # the chart
    md = _md_rows(rep.markdown(c))
    assert md["Q"][0] == "1" and md["P"][0] == "2"  # ranked by mean: Q first
    assert md["P"][5] == f"{2 * 169 / 2 ** 16:.3g} better*" and "*" not in md["P"][5].replace("better*", "")
    tex = _tex_rows(rep.latex(c))
    assert r"better$^{*}$" in tex["P"] and r"$^\dagger$" not in tex["P"]
    assert rep.tex("better") in rep.latex(c).split(r"\caption{")[1]  # the caption explains the mark
    html = rep.page(c)
    assert "better*</td>" in html
    line = next(x for x in rep.format_table(rows).splitlines() if x.split()[1:2] == ["P"])
    assert "better*" in line and not re.search(r"\d \*", line)


def test_a_missing_hard_image_cannot_make_a_method_best():
    """Q lacks the hardest image: means over different images ranked Q first although P is better
    on all 9 images both have. Now both are ranked on those 9: P first, Q worse (9 of 9)."""
    rng = np.random.default_rng(4)
    p = list(0.01 + rng.uniform(0, 1e-3, 10))
    p[0] = 0.5  # the hard image
    per_set = {"P": {f"{k}": v for k, v in enumerate(p)}, "Q": {f"{k}": p[k] + 0.002 for k in range(1, 10)}}
    assert np.mean(list(per_set["Q"].values())) < np.mean(p)  # Q's own mean is lower
    rows, c = _comparison(per_set)
    res = {r["set"]: r for r in rows}
    assert res["Q"]["vs"] == "P" and res["Q"]["worse"] and [r["set"] for r in rep.ranked(rows)] == ["P", "Q"]
    assert res["P"]["verdict"] == "best" and res["Q"]["verdict"] == "worse"
    assert res["P"]["n_shared"] == res["Q"]["n_shared"] == res["Q"]["n_common"] == 9
    assert (res["P"]["n_left_out"], res["Q"]["n_left_out"]) == (1, 0)
    assert res["P"]["mean_shared"] == pytest.approx(np.mean(p[1:]))
    assert res["P"]["n"] == 10 and res["P"]["mean"] == pytest.approx(np.mean(p))  # its own statistics kept
    assert res["Q"]["p_value"] == pytest.approx(2 / 2 ** 9)  # every one of the 9 differences one way
    assert (res["Q"]["wins"], res["Q"]["losses"]) == (0, 9)
    assert [r["set"] for r in rep.ranked(rows)] == ["P", "Q"]
    md = rep.markdown(c)
    assert "Ranked by the mean over the 9 images both methods have" in md
    assert md.splitlines()[md.splitlines().index(next(x for x in md.splitlines() if x.startswith("| rank")))] \
        .endswith("| images better / worse than best | left out |")
    cells = _md_rows(md)
    assert cells["P"][2] == "9" and cells["P"][-1] == "1" and cells["Q"][-1] == "0"
    assert float(cells["P"][3]) == pytest.approx(np.mean(p[1:]), rel=1e-3)  # the ranking mean shown
    assert "Ranked by the mean over the 9 images both methods have" in rep.latex(c)
    assert "left out" in rep.format_table(rows).splitlines()[1]


def test_a_method_sharing_no_image_is_listed_last_untested():
    """B shares no image with A and C (and has the lowest mean): A and C are ranked on theirs, B
    listed last without a rank or a test."""
    per_set = {"A": {"0": 0.3, "1": 0.4, "2": 0.5}, "B": {"7": 0.01, "8": 0.02},
               "C": {"0": 0.35, "1": 0.45, "2": 0.55}}
    rows, c = _comparison(per_set)
    res = {r["set"]: r for r in rows}
    assert [r["set"] for r in rep.ranked(rows)] == ["A", "C", "B"] and res["C"]["vs"] == "A"
    assert res["A"]["verdict"] == "best" and res["B"]["verdict"] == "no test" and res["B"]["p_value"] is None
    assert res["B"]["n_common"] == 0 and res["B"]["wins"] is None and res["B"]["n_left_out"] == 2
    assert [r["set"] for r in rep.ranked(rows)] == ["A", "C", "B"]
    assert _md_rows(rep.markdown(c))["B"][0] == "—" and rep.significance_mark(res["B"]) == "—"
    assert "1 method sharing no image with them listed last" in rep.markdown(c)


def test_unreachable_significance_is_said():
    """6 images, 3 methods: the smallest exact two-sided p of 6 pairs is 2/2^6, Holm over 2 tests
    doubles it to 0.0625 > 0.05. Every table says 'n too small', not 'n.s.'."""
    base = np.linspace(0.1, 0.6, 6)
    per_set = {"A": dict(enumerate(base)), "B": dict(enumerate(base + np.arange(1, 7) * 1e-3)),
               "C": dict(enumerate(base + [2e-3, -1e-3, 3e-3, 1e-3, -2e-3, 4e-3]))}
    rows, c = _comparison(per_set)
    res = {r["set"]: r for r in rows}
    assert _md_rows(rep.markdown(c))["B"][5] == "0.0625 (n too small: min p = 0.0625)"
    floor = 2 * (2 / 2 ** 6)
    assert floor == 0.0625 and res["A"]["verdict"] == "best"
    assert res["B"]["losses"] == 6 and res["B"]["p_value"] == pytest.approx(2 / 2 ** 6)
    for m in "BC":
        assert res[m]["p_holm_min"] == pytest.approx(floor) and res[m]["verdict"] == "n too small"
        assert res[m]["p_holm"] >= 0.05 and not res[m]["worse"] and not res[m]["better"]
        assert rep.significance_mark(res[m]) == "n too small"
    cell = _md_rows(rep.markdown(c))["B"][5]
    assert cell == "0.0625 (n too small: min p = 0.0625)"
    assert "n too small: min p = 0.0625" in rep.latex(c) and "n too small: min p = 0.0625" in rep.page(c)
    assert "n too small: min p = 0.0625" in rep.format_table(rows) and "n.s." not in rep.format_table(rows)
    two = {k: per_set[k] for k in "AB"}  # one test: 2/2^6 = 0.03125 can reach 0.05, and does
    assert zstats.compare_methods(two)["B"]["verdict"] == "worse"


def test_sides_p_values_and_holm_against_scipy():
    """Random methods, some better and some worse on their pairs than the first-ranked: the two-sided
    p is scipy's (twice the smaller one-sided p), the side the one-sided test that is smaller, p_holm
    Holm by hand, and the marks follow them."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 1.0, 25)
    shifts = {"A": 0.0, "B": 0.02, "C": -0.01, "D": 0.001, "E": 0.05}
    per_set = {m: dict(enumerate(base + s + rng.normal(0, 0.003, 25))) for m, s in shifts.items()}
    per_set["C"][0] += 3.0  # C better on most pairs, pulled up by one image
    res = zstats.compare_methods(per_set)
    best = min(per_set, key=lambda m: np.mean(list(per_set[m].values())))
    others = [m for m in per_set if m != best]
    b = np.array(list(per_set[best].values()))
    less, greater = ({m: sp.wilcoxon(np.array(list(per_set[m].values())), b, alternative=alt).pvalue for m in others}
                     for alt in ("less", "greater"))
    raw = [min(1.0, 2 * min(less[m], greater[m])) for m in others]
    adjusted = dict(zip(others, _holm(raw)))
    for m, p in zip(others, raw):
        row = res[m]
        assert row["p_value"] == pytest.approx(p, rel=1e-9) and row["p_holm"] == pytest.approx(adjusted[m], rel=1e-9)
        assert row["worse"] == (adjusted[m] < 0.05 and greater[m] < less[m])
        assert row["side"] == ("better" if less[m] < greater[m] else "worse")
        assert row["better"] == (adjusted[m] < 0.05 and less[m] < greater[m])
        assert row["p_holm_min"] == pytest.approx(len(others) * 2 / 2 ** 25) and row["p_holm"] >= row["p_holm_min"]
    assert res["C"]["verdict"] == "better" and res["B"]["verdict"] == res["E"]["verdict"] == "worse"


def test_significant_but_leaning_both_ways_is_mixed():
    """55 small differences one way, 45 large the other: the signed ranks say worse (p < 0.05), the
    median difference says better. Neither mark is given."""
    rng = np.random.default_rng(8)
    best = rng.uniform(1, 2, 100)
    other = best + np.r_[-rng.uniform(0.001, 0.01, 55), rng.uniform(0.5, 1.0, 45)]
    res = zstats.compare_methods({"A": dict(enumerate(best)), "B": dict(enumerate(other))})["B"]
    assert sp.wilcoxon(other, best).pvalue < 0.05 and np.median(other - best) < 0
    assert sp.wilcoxon(other, best, alternative="greater").pvalue < 0.05
    assert not res["worse"] and not res["better"] and res["verdict"] == "mixed"


def test_one_method_and_whose_wins():
    rows, c = _comparison({"only": {"a": 1.0, "b": 2.0}})
    assert rep.markdown(c).startswith("# ZS-IQA comparison of 1 method\n")
    assert "<h1>ZS-IQA comparison of 1 method</h1>" in rep.page(c)
    assert "Mean over its 2 images." in rep.markdown(c)
    rows, c = _comparison(_pq())
    assert rep.markdown(c).startswith("# ZS-IQA comparison of 2 methods\n")
    assert "wins" not in rep.markdown(c) and "images better / worse than best" in rep.markdown(c)
    assert "<th>images better / worse than best</th>" in rep.page(c)
    assert "better/worse than best" in rep.format_table(rows).splitlines()[1]


# ---------------------------------------------------------------- end to end, tiny ViT

def _pq_folders(root, n=16):
    """GT, P (light noise, image 0 heavy), Q (medium noise) as PNG folders."""
    for k in range(n):
        _img(f"{root}/GT/{k}.png", 224, 232, 800 + k)
        _distort(f"{root}/GT/{k}.png", f"{root}/P/{k}.png", 12 if k == 0 else 1, 900 + k)
        _distort(f"{root}/GT/{k}.png", f"{root}/Q/{k}.png", 2, 1900 + k)
    return [f"{root}/GT", f"P={root}/P", f"Q={root}/Q"]


def _eval(tiny, tmp_path, folders, monkeypatch, *more):
    seen, draw = {}, plots.method_bars

    def spy(rows, path, title, marks=None):  # the chart's marks, per method
        seen.update({(r["distance"], r["set"]): m for r, m in zip(rows, marks or [])})
        return draw(rows, path, title, marks=marks)
    monkeypatch.setattr(plots, "method_bars", spy)
    gt, p, q = folders
    assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", p, "--dis-dir", q, "-d", "l2,wsd", "-sdir",
                    str(tmp_path / "r"), "--report", str(tmp_path / "rep"), *more) == 0
    return seen


def _per_image(tmp_path, method, distance):
    frame = pd.read_csv(tmp_path / "r" / f"{method}_tiny_vit_test_{distance}.csv")
    return dict(zip(frame.ref, frame.pred))


def test_eval_marks_follow_the_pairs(tiny, tmp_path, monkeypatch, capsys):
    """The hostile run itself: per distance, the method with the lower mean ranks first and the
    other's mark in the printed table, report.md, table.tex, report.html and the chart follows
    scipy's one-sided tests on the per-pair files; in l2 P wins 15 of 16 yet has the higher mean."""
    marks = _eval(tiny, tmp_path, _pq_folders(tmp_path / "d"), monkeypatch)
    printed = capsys.readouterr().out
    md = (tmp_path / "rep" / "report.md").read_text()
    sections = dict(zip(("l2", "wsd"), md.split("## ")[1:]))
    summary = list(csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv")))
    seen_better = False
    for distance in ("l2", "wsd"):
        per = {m: _per_image(tmp_path, m, distance) for m in "PQ"}
        first = min("PQ", key=lambda m: np.mean(list(per[m].values())))
        other = "Q" if first == "P" else "P"
        a, b = (np.array([per[m][k] for k in sorted(per["P"])]) for m in (other, first))
        less, greater = sp.wilcoxon(a, b, alternative="less").pvalue, sp.wilcoxon(a, b, alternative="greater").pvalue
        want = ("better*" if less < greater else "*") if 2 * min(less, greater) < 0.05 else "n.s."
        seen_better |= want == "better*"
        assert marks[(distance, first)] == "best" and marks[(distance, other)] == want
        cells = _md_rows(sections[distance])
        assert cells[first][0] == "1" and cells[other][5].endswith(" better*" if want == "better*" else " *")
        assert set(OLD_COLUMNS) | {"verdict", "n_shared", "n_left_out", "p_holm_min"} <= set(summary[0])
        row = next(r for r in summary if r["distance"] == distance and r["set"] == other)
        assert row["verdict"] == {"better*": "better", "*": "worse"}[want] and row["vs"] == first
        table = printed.split(f"{distance} (lower")[1]
        line = next(x for x in table.splitlines() if x.split()[1:2] == [other])
        assert line.split()[-2] == want and line.split()[-1] == f"{(a < b).sum()}/{(a > b).sum()}"
    assert seen_better  # the case as described: in l2 P is closer on 15 of 16 images but has the higher mean
    tex = (tmp_path / "rep" / "table.tex").read_text()
    assert r"better$^{*}$" in tex and "better*</td>" in (tmp_path / "rep" / "report.html").read_text()


def test_eval_with_the_hard_image_missing(tiny, tmp_path, monkeypatch, capsys):
    """--skip-missing and Q without image 0 (P's hard one): both ranked on the 15 images they share,
    P first, Q worse, P's left-out image counted."""
    folders = _pq_folders(tmp_path / "d")
    os.remove(tmp_path / "d" / "Q" / "0.png")
    marks = _eval(tiny, tmp_path, folders, monkeypatch, "--skip-missing")
    printed = capsys.readouterr().out
    summary = {(r["distance"], r["set"]): r for r in csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv"))}
    for distance in ("l2", "wsd"):
        per = {m: _per_image(tmp_path, m, distance) for m in "PQ"}
        shared = sorted(per["Q"])
        means = {m: np.mean([per[m][k] for k in shared]) for m in "PQ"}
        first, other = sorted("PQ", key=means.get)
        a, b = (np.array([per[m][k] for k in shared]) for m in (other, first))
        assert marks[(distance, first)] == "best" and summary[(distance, other)]["vs"] == first
        assert summary[(distance, first)]["verdict"] == "best"
        assert int(summary[(distance, "P")]["n_left_out"]) == 1 and int(summary[(distance, "Q")]["n_shared"]) == 15
        assert float(summary[(distance, other)]["p_value"]) == pytest.approx(sp.wilcoxon(a, b).pvalue, rel=1e-9)
        assert float(summary[(distance, "P")]["mean_shared"]) == pytest.approx(means["P"], rel=1e-9)
    assert (summary[("l2", "P")]["verdict"], summary[("l2", "Q")]["verdict"]) == ("best", "worse")
    assert np.mean(list(_per_image(tmp_path, "Q", "l2").values())) < np.mean(list(_per_image(tmp_path, "P", "l2")
                                                                                    .values()))  # Q's own mean lower
    assert "Ranked by the mean over the 15 images both methods have" in printed
    md = (tmp_path / "rep" / "report.md").read_text()
    assert _md_rows(md.split("## ")[1])["P"][-1] == "1"


def test_old_columns_kept_in_the_summary_header():
    from zsiqa import results
    assert [c for c in results.UNLABELLED_FIELDS if c in OLD_COLUMNS] == OLD_COLUMNS  # all there, in order
