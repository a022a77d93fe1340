"""Statistics of scores: correlations with labels (SRCC, PLCC, KRCC, PLCC after the
5-parameter logistic fit), and for label-free comparisons of methods the bootstrap interval
of a mean and paired tests against the best method.

Correlations are signed so that agreement is positive whatever the label's and the
prediction's directions (`agreement_sign`).
"""
import warnings

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

from zsiqa.errors import UserError

NAN = float("nan")


def logistic5(x, b1, b2, b3, b4, b5):
    """The VQEG 5-parameter logistic: b1·(½ − 1/(1+e^{b2(x−b3)})) + b4·x + b5."""
    return b1 * (0.5 - 1 / (1 + np.exp(np.clip(b2 * (x - b3), -60, 60)))) + b4 * x + b5


def fit_logistic(x, y):
    """The fitted curve as a function of x, or None when the fit fails or has < 6 points.
    x is standardised first: MINPACK's difference steps are relative to each parameter,
    so a start like 2e-16 (a median at zero) would freeze the centre."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 6:
        return None
    centre, scale = np.median(x), x.std() or 1.0
    z = (x - centre) / scale
    start = [y.max() - y.min(), 4.0 * np.sign(stats.pearsonr(z, y)[0] or 1), 0.0, 0.0, float(y.mean())]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(logistic5, z, y, p0=start, maxfev=20000)
    except (RuntimeError, ValueError, TypeError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    return lambda v: logistic5((np.asarray(v, float) - centre) / scale, *params)


def agreement_sign(label_higher_better, pred_higher_better=False):
    """+1 or −1 so that sign · prediction rises with the label when they agree."""
    return -1.0 if label_higher_better != pred_higher_better else 1.0


def _varies(x, label):
    return len(x) >= 3 and np.ptp(x) > 0 and np.ptp(label) > 0


def correlations(pred, label, label_higher_better, pred_higher_better=False):
    """{'n', 'srcc', 'plcc', 'krcc', 'plcc_logistic'}, each signed so agreement is positive
    (NaN when fewer than 3 pairs or a constant column leave them undefined)."""
    pred, label = np.asarray(pred, float), np.asarray(label, float)
    x = agreement_sign(label_higher_better, pred_higher_better) * pred
    if not _varies(x, label):
        return {"n": len(x), "srcc": NAN, "plcc": NAN, "krcc": NAN, "plcc_logistic": NAN}
    curve = fit_logistic(x, label)
    return {"n": len(x), "srcc": float(stats.spearmanr(x, label)[0]), "plcc": float(stats.pearsonr(x, label)[0]),
            "krcc": float(stats.kendalltau(x, label)[0]),
            "plcc_logistic": float(stats.pearsonr(curve(x), label)[0]) if curve is not None else NAN}


def correlations_by_reference(frame, label_higher_better, pred_higher_better=False):
    """Each coefficient averaged over references (references with < 3 pairs skipped).
    frame: a DataFrame with columns ref, pred, mos."""
    groups = [g for _, g in frame.groupby("ref", sort=False) if len(g) >= 3]
    per = [correlations(g.pred, g.mos, label_higher_better, pred_higher_better) for g in groups]
    if not per:
        raise UserError("--byref needs references with at least 3 pairs each")
    with warnings.catch_warnings():  # a coefficient NaN for every reference (e.g. no logistic fit) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: float(np.nanmean([p[k] for p in per])) for k in ("srcc", "plcc", "krcc", "plcc_logistic")}
    return {"n": int(len(frame)), "refs": len(per), **out}


def block_correlations(columns, label, sign):
    """SRCC and PLCC of each block's per-pair distances with the label.

    Args:
        columns: {block number: per-pair values}. label: per-pair labels.
        sign: `agreement_sign` of the label and prediction directions.

    Returns:
        [{'block', 'srcc', 'plcc'}] in the order given.
    """
    label, rows = np.asarray(label, float), []
    for block, values in columns.items():
        x = sign * np.asarray(values, float)
        ok = _varies(x, label)
        rows.append({"block": block, "srcc": float(stats.spearmanr(x, label)[0]) if ok else NAN,
                     "plcc": float(stats.pearsonr(x, label)[0]) if ok else NAN})
    return rows


# ---------------------------------------------------------------- comparing methods without labels

def summarize(values, seed=0, n_boot=2000):
    """n, mean, std (ddof 1), median and the 95 % bootstrap interval of the mean (resampling
    images, seeded), of one method's per-image scores."""
    x = np.asarray(values, float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": NAN, "std": NAN, "median": NAN, "ci95": [NAN] * 2}
    return {"n": n, "mean": float(x.mean()), "std": float(x.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(x)), "ci95": _bootstrap_ci(x, np.mean, seed, n_boot)}


def _bootstrap_ci(x, statistic, seed, n_boot):
    """The 95 % percentile bootstrap interval of `statistic` (np.mean, np.median: taking `axis`)
    over n_boot resamples of the values x: scipy.stats.bootstrap (method 'percentile',
    vectorized, 200 resamples at a time) drawing from np.random.default_rng(seed), each resample
    rng.integers(0, n, (200, n)) as the interval was always drawn. Its ends are the 2.5th and
    97.5th percentiles of the bootstrap distribution by np.percentile (linear), the values
    written before scipy drew them bit for bit; scipy's own quantile of the same distribution
    agrees to within a few units in the last place. One value: [x, x] (nothing to resample;
    scipy needs two)."""
    if len(x) < 2:
        return [float(x[0])] * 2
    boot = stats.bootstrap((x,), statistic, n_resamples=n_boot, batch=200, vectorized=True, method="percentile",
                           rng=np.random.default_rng(seed)).bootstrap_distribution
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return [float(lo), float(hi)]


def shared_images(per_set):
    """The methods ranked together and the images they all have: ranking and tests use only
    these, so that an image some method lacks (a hard one, say) cannot make it look better.

    Args:
        per_set: {method: {image: score}}.

    Returns:
        (members, images): the methods with a finite mean, taken in order of their image count
        (most first, ties in the order given), each joining unless it shares no image with those
        before it (it is left out of the ranking, untested); and the sorted images every member
        has. ([], []) when no method has a score.
    """
    scored = [k for k, v in per_set.items() if v and np.isfinite(np.mean(list(v.values())))]
    members, common = [], None
    for name in sorted(scored, key=lambda k: -len(per_set[k])):
        have = set(per_set[name]) if common is None else common & set(per_set[name])
        if have:
            members, common = members + [name], have
    return members, sorted(common or [])


def signed_rank_test(a, b, lower_better=True):
    """The paired Wilcoxon signed-rank test of scores a against b (the best's), and its side.

    Args:
        a, b: paired scores (arrays of one length ≥ 1). lower_better: the distance's direction.

    Returns:
        (p, p_min, side): the two-sided p-value (scipy; 1 when every pair is tied); the smallest
        p-value the test can give for pairs of these sizes (every difference of one sign: 2/2^n
        for n nonzero differences when exact; when every pair is tied, for n pairs that differ);
        'worse' or 'better' where the signed ranks of a's
        differences lean that way (the one-sided alternative with the smaller p: the two-sided p
        is twice its p), None where they balance.
    """
    diff = (a - b) if lower_better else (b - a)  # > 0: a is worse than b
    if not np.any(diff):  # every pair tied: no evidence either way, though n pairs that differ could give some
        return 1.0, float(stats.wilcoxon(np.arange(1.0, len(diff) + 1)).pvalue), None
    nonzero = diff[diff != 0]
    ranks = stats.rankdata(np.abs(nonzero))
    lean = ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()
    side = "worse" if lean > 0 else "better" if lean < 0 else None
    return float(stats.wilcoxon(a, b).pvalue), float(stats.wilcoxon(np.abs(diff)).pvalue), side


def paired_tests(per_set, lower_better=True):
    """Each method against the best one on the images every ranked method has (`shared_images`).

    Args:
        per_set: {set name: {image key: score}}.
        lower_better: the distance's direction (all distances here: True).

    Returns:
        {set name: {"vs": the best (by mean over those images; None when no set has a score),
        "n_common": the images tested (0 for a set outside the ranking), "p_value" (Wilcoxon
        signed-rank, two-sided; None for the best itself and where no image is shared: no
        statistic from zero pairs), "p_min" and "side" (`signed_rank_test`; None untested),
        "wins", "losses" (images where this set is better / worse than the best; None without a
        shared image)}}.
    """
    members, keys = shared_images(per_set)
    sign = 1.0 if lower_better else -1.0
    means = {k: sign * float(np.mean([per_set[k][i] for i in keys])) for k in members}
    best = min((k for k in per_set if k in means), key=means.get) if means else None
    out = {}
    for name, scores in per_set.items():
        shared = keys if name in members else []
        a = np.array([scores[k] for k in shared], float)
        b = np.array([per_set[best][k] for k in shared], float)
        p, p_min, side = signed_rank_test(a, b, lower_better) if name != best and shared else (None, None, None)
        diff = sign * (a - b)  # > 0: worse than the best
        out[name] = {"vs": best, "n_common": len(shared), "p_value": p, "p_min": p_min, "side": side,
                     "wins": int((diff < 0).sum()) if shared else None,
                     "losses": int((diff > 0).sum()) if shared else None}
    return out


def holm(pvalues):
    """Holm's step-down adjustment of p-values from several tests against one best method.

    Args:
        pvalues: a list of p-values, None where no test was made (left None).

    Returns:
        the adjusted p-values in the same order: with the m p-values sorted ascending, the i-th
        (from 0) becomes the largest of (m − j)·p_(j) for j ≤ i, capped at 1.
    """
    order = sorted((p, k) for k, p in enumerate(pvalues) if p is not None)
    out, running = [None] * len(pvalues), 0.0
    for i, (p, k) in enumerate(order):
        running = max(running, min(1.0, (len(order) - i) * p))
        out[k] = running
    return out


def median_difference(a, b, seed=0, n_boot=2000):
    """The median of the paired differences a − b (an effect size in the distance's own units)
    and its 95 % bootstrap interval, resampling the image pairs (seeded); NaNs without pairs."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if not len(d):
        return NAN, [NAN, NAN]
    return float(np.median(d)), _bootstrap_ci(d, np.median, seed, n_boot)


def verdict(test, p_holm, p_holm_min, median_diff, lower_better=True, alpha=0.05):
    """What a method's comparison with the best says, in one word.

    Args:
        test: its `paired_tests` entry plus "set" and "n". p_holm, p_holm_min: its Holm-corrected
            p-value and the smallest one the tests made could give (Holm over their p_min).
        median_diff: its median paired difference to the best. alpha: the level.

    Returns:
        'no pairs' (no score), 'best', 'no test' (no image shared with the ranked methods),
        'worse' / 'better' (p_holm < alpha and the signed ranks lean that way, the median paired
        difference not the other way), 'mixed' (p_holm < alpha but the median difference points
        the other way: many small differences one way, a few large ones the other), 'n too small'
        (p_holm_min ≥ alpha: no outcome of these pairs could be significant) or 'n.s.'.
    """
    if not test["n"]:
        return "no pairs"
    if test["vs"] == test["set"]:
        return "best"
    if p_holm is None:
        return "no test"
    if p_holm >= alpha:
        return "n too small" if p_holm_min >= alpha else "n.s."
    lean = median_diff if lower_better else -median_diff  # > 0: worse than the best
    if test["side"] == "worse" and lean >= 0:
        return "worse"
    return "better" if test["side"] == "better" and lean <= 0 else "mixed"


def compare_methods(per_set, lower_better=True, alpha=0.05, seed=0):
    """Everything a comparison table reports, per method, for one distance.

    Args:
        per_set: {method: {image: score}}. lower_better: the distance's direction.
        alpha: the level of the Holm-corrected p-values.
        seed: of the bootstrap intervals.

    Returns:
        {method: summarize()'s n, mean, std, median, ci95 (over all its images); the same over the
        images every ranked method has (`shared_images`: what ranks), n_shared, mean_shared,
        std_shared, median_shared, ci95_shared, and n_left_out (its images outside them);
        paired_tests()' vs, n_common, p_value, p_min, side, wins, losses; p_holm (Holm over the
        methods tested against the best) and p_holm_min (the smallest p_holm these pairs could
        give); median_diff and median_diff_ci95 (this method's scores minus the best's, on the
        shared images; None for the best and without shared images); verdict (`verdict`), worse
        and better (the verdict is 'worse' / 'better')}.
    """
    members, keys = shared_images(per_set)
    tests = paired_tests(per_set, lower_better)
    names = list(per_set)
    adjusted = dict(zip(names, holm([tests[n]["p_value"] for n in names])))
    floors = dict(zip(names, holm([tests[n]["p_min"] for n in names])))
    rows = {}
    for name in names:
        rows[name] = row = _summaries(per_set[name], keys if name in members else [], seed)
        best = tests[name]["vs"]
        tested = tests[name]["p_value"] is not None
        diff, ci = median_difference([per_set[name][k] for k in keys], [per_set[best][k] for k in keys], seed) \
            if tested else (None, None)
        row.update(tests[name], p_holm=adjusted[name], p_holm_min=floors[name], median_diff=diff,
                   median_diff_ci95=ci)
        row["verdict"] = verdict({**tests[name], "set": name, "n": row["n"]}, adjusted[name], floors[name], diff,
                                 lower_better, alpha)
        row.update(worse=row["verdict"] == "worse", better=row["verdict"] == "better")
    return rows


def _summaries(scores, keys, seed):
    """summarize() of all a method's scores, and of those on `keys` (suffixed _shared)."""
    own = summarize(list(scores.values()), seed=seed)
    shared = own if len(keys) == own["n"] else summarize([scores[k] for k in keys], seed=seed)
    return {**own, **{f"{k}_shared": shared[k] for k in ("n", "mean", "std", "median", "ci95")},
            "n_left_out": own["n"] - shared["n"]}
