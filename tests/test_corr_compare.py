"""`zsiqa corr -f A.csv -f B.csv …`: several metrics on the same labelled pairs, with bootstrap
intervals and paired tests, checked against scipy on a by-hand loop bootstrap with the same
generator protocol, and against the published figures."""
import json
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calc_scores
from helpers import ROOT, fails_one_line
from zsiqa import metric_compare
from zsiqa.stats import fit_logistic

PUBLISHED = ROOT / "zsiqa" / "data" / "published"


def _hand_bootstrap(xs, y, groups, n_boot, seed):
    """Resample b: rng.integers(0, G, G) clusters, every pair of each drawn cluster; scipy's
    coefficients of the resampled arrays, per metric: {coefficient: (n_boot, metrics)}."""
    rng, n_groups = np.random.default_rng(seed), groups.max() + 1
    members = [np.flatnonzero(groups == g) for g in range(n_groups)]
    curves = [fit_logistic(x, y) for x in xs]
    out = {c: np.zeros((n_boot, len(xs))) for c in metric_compare.COEFFICIENTS}
    for b in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, n_groups, n_groups)])
        for k, x in enumerate(xs):
            out["srcc"][b, k] = stats.spearmanr(x[idx], y[idx])[0]
            out["plcc"][b, k] = stats.pearsonr(x[idx], y[idx])[0]
            out["krcc"][b, k] = stats.kendalltau(x[idx], y[idx])[0]
            out["plcc_logistic"][b, k] = stats.pearsonr(curves[k](x)[idx], y[idx])[0] if curves[k] else np.nan
    return out


def _data(n=60, refs=10, seed=1):
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(size=n), 1)  # ties in the labels
    xs = [np.round(y + rng.normal(size=n), 1), np.round(y + 2 * rng.normal(size=n), 1),
          rng.integers(0, 6, n).astype(float)]  # heavy ties
    return xs, y, np.arange(n) % refs


@pytest.mark.parametrize("resample", ["pairs", "refs"])
def test_resampled_coefficients_equal_scipy_on_the_same_resamples(resample):
    xs, y, refs = _data()
    groups = refs if resample == "refs" else np.arange(len(y))
    got = metric_compare.bootstrap_coefficients(xs, y, groups, 23, seed=5)
    want = _hand_bootstrap(xs, y, groups, 23, seed=5)
    for c in metric_compare.COEFFICIENTS:
        assert np.allclose(got[c], want[c], atol=1e-10), c


def test_discordant_counts_between_references_equal_the_direct_count():
    """The cluster bootstrap's Kendall count (a matrix between references, computed once) equals
    the count on each resample's pairs, and the level-by-level count equals a brute-force one."""
    rng = np.random.default_rng(2)
    values, clusters = rng.integers(0, 7, 50), rng.integers(0, 6, 50)
    levels = metric_compare.merge_levels(values)
    between = metric_compare.discordant_by_cluster(levels, clusters, 6)
    inverted = np.triu(values[:, None] > values[None, :], 1)
    want = np.array([[inverted[np.ix_(clusters == g, clusters == h)].sum() for h in range(6)] for g in range(6)])
    assert np.array_equal(between, want)
    weights = rng.integers(0, 4, (3, 50)).astype(float)
    assert np.array_equal(metric_compare.discordant(levels, weights),
                          [(inverted * np.outer(w, w)).sum() for w in weights])


def _by_hand_tests(points, boot, alpha=0.05):
    """The documented p-value and Holm by hand: (best, [p], [p_holm]) against the highest point."""
    best = int(np.argmax(points))
    ps = []
    for k in range(len(points)):
        d = boot[:, k] - boot[:, best]
        ps.append(None if k == best else min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (len(d) + 1)))
    tested = sorted((p, k) for k, p in enumerate(ps) if p is not None)
    holm, running = [None] * len(ps), 0.0
    for i, (p, k) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))
        holm[k] = running
    return best, ps, holm


def test_intervals_and_paired_tests_match_a_hand_bootstrap():
    xs, y, refs = _data(n=80, refs=16, seed=3)
    xs = xs[:2] + [y + np.random.default_rng(9).normal(size=80) * 0.3]  # a clearly better third metric
    names = ["a", "b", "c"]
    got = metric_compare.compare_metrics(names, xs, y, refs, True, [True] * 3, n_boot=200, seed=7)
    assert got["resample"] == "refs" and got["refs"] == 16 and got["n"] == 80
    want = _hand_bootstrap(xs, y, refs, 200, seed=7)
    for c in metric_compare.COEFFICIENTS:
        for k, row in enumerate(got["metrics"]):
            assert row[f"{c}_ci95"] == pytest.approx(list(np.percentile(want[c][:, k], [2.5, 97.5])), abs=1e-10,
                                                     nan_ok=True)
    for c, fn in [("srcc", stats.spearmanr), ("plcc", stats.pearsonr)]:
        points = [fn(x, y)[0] for x in xs]
        best, ps, holm = _by_hand_tests(points, want[c])
        for k, row in enumerate(got["metrics"]):
            assert row[c] == pytest.approx(points[k]) and row[f"{c}_vs"] == names[best]
            assert row[f"{c}_p"] == (None if ps[k] is None else pytest.approx(ps[k]))
            assert row[f"{c}_p_holm"] == (None if holm[k] is None else pytest.approx(holm[k]))
            if k != best:
                d = want[c][:, k] - want[c][:, best]
                assert row[f"{c}_diff_ci95"] == pytest.approx(list(np.percentile(d, [2.5, 97.5])), abs=1e-10)
                assert row[f"{c}_worse"] == (holm[k] < 0.05)
    assert got["metrics"][2]["srcc_vs"] == "c" and got["metrics"][0]["srcc_worse"]


def test_the_p_value_formula():
    assert metric_compare.bootstrap_p(np.zeros(99)) == 1.0  # identical metrics: no evidence
    assert metric_compare.bootstrap_p(-np.ones(99)) == pytest.approx(2 / 100)  # every Δ* below 0
    assert metric_compare.bootstrap_p([-1, -1, 1, np.nan]) == pytest.approx(2 * 2 / 4)
    assert metric_compare.bootstrap_p([np.nan]) is None


def _corr(argv, capsys):
    code = calc_scores.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_published_pipal_files_give_the_published_srcc_and_dinov1_wsd_is_better(capsys):
    """pipal_dinov1_wsd vs pipal_clip_vitb32_l2: the point figures are SUMMARY.md's / the README's
    (0.6414 / 0.6329 / 0.4598 and 0.6194 / 0.6492 / 0.4400), on the 200 references."""
    a, b = str(PUBLISHED / "pipal_dinov1_wsd.csv"), str(PUBLISHED / "pipal_clip_vitb32_l2.csv")
    _, out, _ = _corr(["-f", a, "-f", b, "--n-boot", "200", "--json"], capsys)
    got = json.loads(out)
    assert got["n"] == 23200 and got["refs"] == 200 and got["resample"] == "refs" and got["dataset"] == "pipal"
    rows = {r["metric"]: r for r in got["metrics"]}
    wsd, l2 = rows["pipal_dinov1_wsd.csv"], rows["pipal_clip_vitb32_l2.csv"]
    assert [round(wsd[c], 4) for c in ("srcc", "plcc", "krcc")] == [0.6414, 0.6329, 0.4598]
    assert [round(l2[c], 4) for c in ("srcc", "plcc", "krcc")] == [0.6194, 0.6492, 0.4400]
    assert wsd["srcc_vs"] == "pipal_dinov1_wsd.csv" and l2["plcc_vs"] == "pipal_clip_vitb32_l2.csv"
    assert l2["srcc_diff"] == pytest.approx(l2["srcc"] - wsd["srcc"])
    for row in (wsd, l2):
        for c in metric_compare.COEFFICIENTS:
            assert row[f"{c}_ci95"][0] < row[c] < row[f"{c}_ci95"][1]
    _, single, _ = _corr(["-f", a, "--json"], capsys)  # the point values are corr's on one file
    assert {k: wsd[k] for k in ("srcc", "plcc", "krcc", "plcc_logistic")} == \
        {k: v for k, v in json.loads(single).items() if k in ("srcc", "plcc", "krcc", "plcc_logistic")}


def test_the_table_says_what_was_resampled(capsys):
    a, b = str(PUBLISHED / "live_dinov1_l2.csv"), str(PUBLISHED / "live_psnr.csv")
    _, out, err = _corr(["-f", a, "-f", b, "--n-boot", "100", "--resample", "pairs"], capsys)
    lines = out.splitlines()
    assert lines[0].startswith("live: 779 pairs in every file") and "100 resamples of the pairs, seed 0" in lines[0]
    assert lines[2].startswith("live_dinov1_l2.csv ") and "0.9639 [" in lines[2] and "0.8730 [" in lines[3]
    assert lines[-2].split()[1] == "best" and lines[-1].split()[0] == "live_psnr.csv" and lines[-1].endswith("*")
    assert "not in every file" not in err  # LIVE's img38.bmp twice per reference: matched by occurrence
    _, out, _ = _corr(["-f", a, "-f", b, "--n-boot", "100"], capsys)
    assert "resamples of the 29 references (cluster bootstrap" in out.splitlines()[0]


def test_one_file_keeps_its_output_and_takes_intervals_when_asked(capsys):
    a = str(PUBLISHED / "live_psnr.csv")
    _, out, _ = _corr(["-f", a], capsys)
    assert out.startswith("live_psnr.csv  n=779  SRCC 0.8730  PLCC 0.8435") and len(out.splitlines()) == 1
    _, out, _ = _corr(["-f", a, "--n-boot", "50", "--json"], capsys)
    row = json.loads(out)["metrics"][0]
    assert row["srcc_vs"] == "live_psnr.csv" and row["srcc_p"] is None and row["srcc_ci95"][0] < 0.873


def _write(path, dis, ref, mos, pred, record=None):
    pd.DataFrame({"dis": dis, "ref": ref, "mos": mos, "pred": pred}).to_csv(path, index=False, na_rep="nan")
    if record is not None:
        path.with_suffix(".json").write_text(json.dumps(record))
    return str(path)


def _pair_files(tmp_path, n=30):
    rng = np.random.default_rng(4)
    dis, ref = [f"d{i}.png" for i in range(n)], [f"r{i % 5}.png" for i in range(n)]
    mos = rng.normal(size=n)
    return dis, ref, mos, _write(tmp_path / "kadid10k_a.csv", dis, ref, mos, -mos + rng.normal(size=n)), \
        _write(tmp_path / "kadid10k_b.csv", dis, ref, mos, -mos + 2 * rng.normal(size=n))


def _refused(argv, capsys, match):
    fails_one_line(capsys, lambda: calc_scores.main(argv), match)


def test_the_same_file_twice_is_refused_and_a_copy_ties(tmp_path, capsys):
    dis, ref, mos, a, b = _pair_files(tmp_path)
    _refused(["-f", a, "-f", a], capsys, "given twice")
    _refused(["-f", a, "-f", os.path.join(str(tmp_path), ".", "kadid10k_a.csv")], capsys, "given twice")
    copy = tmp_path / "kadid10k_copy.csv"
    copy.write_bytes(open(a, "rb").read())
    _, out, _ = _corr(["-f", a, "-f", str(copy), "--n-boot", "50", "--json"], capsys)
    rows = json.loads(out)["metrics"]
    assert rows[0]["srcc"] == rows[1]["srcc"] and rows[1]["srcc_p"] == 1.0 and not rows[1]["srcc_worse"]


def test_files_of_different_datasets_share_no_pair(capsys):
    _refused(["-f", str(PUBLISHED / "live_psnr.csv"), "-f", str(PUBLISHED / "tid2013_clip_vitb32_cos.csv")],
             capsys, "no (dis, ref) pair is in every file")


def test_unmatched_pairs_are_named_and_left_out(tmp_path, capsys):
    dis, ref, mos, a, _ = _pair_files(tmp_path)
    b = _write(tmp_path / "kadid10k_c.csv", dis[3:] + ["x.png"], ref[3:] + ["r0.png"], list(mos[3:]) + [0.0],
               -np.r_[mos[3:], 0.0])
    _, out, err = _corr(["-f", a, "-f", b, "--n-boot", "20", "--json"], capsys)
    assert json.loads(out)["n"] == 27
    assert f"{a}: 3 pair(s) not in every file left out (e.g. d0.png|r0.png, d1.png|r1.png, d2.png|r2.png)" in err
    assert f"{b}: 1 pair(s) not in every file left out (e.g. x.png|r0.png)" in err
    assert json.loads(out)["metrics"][1]["srcc"] == pytest.approx(stats.spearmanr(mos[3:], mos[3:])[0])


def test_labels_that_disagree_are_refused(tmp_path, capsys):
    dis, ref, mos, a, _ = _pair_files(tmp_path)
    b = _write(tmp_path / "kadid10k_d.csv", dis, ref, np.r_[mos[:-1], mos[-1] + 1], -mos)
    _refused(["-f", a, "-f", b], capsys, "label 1 matched pair(s) differently (first d29.png|r4.png")
    c = _write(tmp_path / "kadid10k_e.csv", dis, ref, mos, -mos, {"dataset": "csv", "label_higher_better": False,
                                                                   "pred_higher_better": False})
    _refused(["-f", a, "-f", c], capsys, "labels run in different directions")


def test_a_constant_metric_has_no_coefficient_and_no_test(tmp_path, capsys):
    dis, ref, mos, a, b = _pair_files(tmp_path)
    flat = _write(tmp_path / "kadid10k_flat.csv", dis, ref, mos, np.ones(len(mos)))
    _, out, _ = _corr(["-f", a, "-f", b, "-f", flat, "--n-boot", "30", "--json"], capsys)
    rows = json.loads(out)["metrics"]
    assert rows[2]["srcc"] is None and rows[2]["srcc_ci95"] == [None, None] and rows[2]["srcc_p"] is None
    assert rows[1]["srcc_p"] is not None and rows[1]["srcc_p_holm"] == pytest.approx(rows[1]["srcc_p"])  # 1 test
    _, out, _ = _corr(["-f", a, "-f", flat, "--n-boot", "30"], capsys)
    assert out.splitlines()[3].split()[1:] == ["—", "—", "—", "—"]


def test_too_few_pairs_and_too_few_references(tmp_path, capsys):
    a = _write(tmp_path / "kadid10k_a.csv", ["d1", "d2", "d3"], ["r", "r", "r"], [1.0, 2, 3], [3.0, 2, 1])
    b = _write(tmp_path / "kadid10k_b.csv", ["d1", "d2", "d4"], ["r", "r", "r"], [1.0, 2, 3], [3.0, 1, 2])
    _refused(["-f", a, "-f", b], capsys, "2 pair(s) are in every file; correlations need at least 3")
    _refused(["-f", a, "--resample", "refs"], capsys, "--resample refs draws references, and these pairs have 1")
    _, out, _ = _corr(["-f", a, "--n-boot", "10", "--json"], capsys)
    assert json.loads(out)["resample"] == "pairs"  # one reference: nothing to cluster


def test_a_nan_row_of_a_record_file_is_left_out_with_a_warning(tmp_path, capsys):
    dis, ref, mos, a, _ = _pair_files(tmp_path)
    pred = -mos.copy()
    pred[5] = np.nan
    b = _write(tmp_path / "kadid10k_nan.csv", dis, ref, mos, pred, {"dataset": "kadid10k", "label_higher_better": True,
                                                                    "pred_higher_better": False})
    _, out, err = _corr(["-f", a, "-f", b, "--n-boot", "20", "--json"], capsys)
    assert "1 pair(s) scored NaN or inf (first d5.png)" in err and "1 pair(s) not in every file" in err
    assert json.loads(out)["n"] == 29


def test_duplicate_names_are_told_apart_and_options_for_one_file_refused(tmp_path, capsys):
    dis, ref, mos, a, _ = _pair_files(tmp_path)
    (tmp_path / "other").mkdir()
    b = _write(tmp_path / "other" / "kadid10k_a.csv", dis, ref, mos, mos[::-1])
    _, out, _ = _corr(["-f", a, "-f", b, "--n-boot", "20", "--json"], capsys)
    assert [r["metric"] for r in json.loads(out)["metrics"]] == [a, b]
    _refused(["-f", a, "-f", b, "--byref"], capsys, "--byref and --plot take one results file")


def test_seeded(tmp_path, capsys):
    _, _, _, a, b = _pair_files(tmp_path)
    runs = [json.loads(_corr(["-f", a, "-f", b, "--n-boot", "40", "--seed", s, "--json"], capsys)[1])
            for s in ("3", "3", "4")]
    assert runs[0] == runs[1] and runs[0]["metrics"][0]["srcc_ci95"] != runs[2]["metrics"][0]["srcc_ci95"]
