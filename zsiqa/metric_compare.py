"""Several metrics compared on the same labelled pairs (`zsiqa corr -f A.csv -f B.csv …`): each
one's SRCC, PLCC, PLCC after the logistic fit and KRCC with 95 % percentile bootstrap intervals,
and paired bootstrap tests of each metric's SRCC and PLCC against the best one's, Holm-corrected.

Every coefficient of every metric is computed on the same resamples, so differences are paired.
A resample is drawn as indices (of pairs, or of references for the cluster bootstrap) and held
as counts: how often each pair is in it. A coefficient of the resample is computed from the
original arrays weighted by those counts, which is exactly what scipy computes on the resampled
arrays (ties of repeated pairs included), in numpy over a chunk of resamples at a time; the
O(n log n) Kendall count runs as the levels of a merge sort whose arrangements are fixed by the
data, so only the counts change between resamples. docs/metrics_compare.md has the method.
"""
import os

import numpy as np

from zsiqa.errors import UserError
from zsiqa.stats import NAN, agreement_sign, correlations, fit_logistic, holm

COEFFICIENTS = ("srcc", "plcc", "plcc_logistic", "krcc")
TESTED = ("srcc", "plcc")  # coefficients tested against the best metric's
RESAMPLE = ("refs", "pairs")
N_BOOT = 2000  # about 5 s of CPU for 2 metrics on PIPAL's 23,200 pairs (refs; pairs: about 20 s)
CHUNK_VALUES = 400_000  # resamples × pairs held in one array (a chunk of resamples)
CLUSTER_VALUES = 20_000_000  # clusters × pairs up to which Kendall's count is taken between clusters
ALPHA = 0.05
LABEL_RTOL = 1e-6  # labels of one pair in two files agree when this close (a rewritten file's rounding)


# ---------------------------------------------------------------- matching the files' pairs

def match_pairs(names, frames, examples=3):
    """The pairs every file has, matched by (dis, ref), and what each file has beyond them.

    A (dis, ref) named twice in one file (LIVE's published files name jp2k/img38.bmp and
    wn/img38.bmp alike) is matched by occurrence: its first row with the other file's first.

    Args:
        names: a name per file. frames: a DataFrame (dis, ref, mos, pred) per file.
        examples: how many unmatched pairs to name per file.

    Returns:
        {"dis", "ref", "mos": arrays of the matched pairs in the first file's order, "preds": a
        prediction array per file, "left_out": per file (its pair count left out, up to
        `examples` of them as 'dis|ref')}.

    Raises:
        UserError: when no pair is in every file, or two files label a matched pair differently.
    """
    keyed = [f.set_index([f["dis"], f["ref"], f.groupby(["dis", "ref"]).cumcount()]) for f in frames]
    shared = keyed[0].index
    for k in keyed[1:]:
        shared = shared[shared.isin(k.index)]
    if not len(shared):
        sizes = ", ".join(f"{n}: {len(f)}" for n, f in zip(names, frames, strict=True))
        raise UserError(f"no (dis, ref) pair is in every file ({sizes} pairs): they are not results of one "
                        "dataset; compare files of one list")
    rows = [k.loc[shared] for k in keyed]
    check_labels(names, rows)
    left = [(len(k) - len(shared), [f"{d}|{r}" for d, r, _ in k.index[~k.index.isin(shared)][:examples]])
            for k in keyed]
    return {"dis": rows[0]["dis"].to_numpy(), "ref": rows[0]["ref"].to_numpy(), "mos": rows[0]["mos"].to_numpy(float),
            "preds": [r["pred"].to_numpy(float) for r in rows], "left_out": left}


def check_labels(names, rows):
    """UserError naming the first matched pair whose label differs between the first file and another."""
    first = rows[0]["mos"].to_numpy(float)
    for name, r in zip(names[1:], rows[1:], strict=True):
        other = r["mos"].to_numpy(float)
        bad = np.flatnonzero(~np.isclose(other, first, rtol=LABEL_RTOL, atol=0))
        if len(bad):
            k = bad[0]
            raise UserError(f"{names[0]} and {name} label {len(bad)} matched pair(s) differently (first "
                            f"{r['dis'].iloc[k]}|{r['ref'].iloc[k]}: {first[k]:g} against {other[k]:g}): "
                            "compare results of one labelled list")


# ---------------------------------------------------------------- resampling

def choose_resample(refs, asked=None):
    """What a resample draws: 'refs' (a cluster bootstrap) or 'pairs'.

    Args:
        refs: each pair's reference. asked: --resample ('refs', 'pairs') or None for the default.

    Returns:
        `asked`, or by default 'refs' when references repeat (some reference has several distorted
        versions: pairs of one reference are not independent) and there are at least 2, else 'pairs'.

    Raises:
        UserError: 'refs' asked with fewer than 2 references (every resample would be the same).
    """
    n_refs = len(set(refs))
    if asked == "refs" and n_refs < 2:
        raise UserError(f"--resample refs draws references, and these pairs have {n_refs}; use --resample pairs")
    if asked:
        return asked
    return "refs" if 2 <= n_refs < len(refs) else "pairs"


def resample_counts(groups, n_boot, seed=0):
    """The bootstrap resamples, as counts, a chunk at a time.

    Resample b draws `rng.integers(0, G, G)` (G clusters: pairs, or references) from
    `np.random.default_rng(seed)`, in order b = 0, 1, …; a pair is in it as often as its
    cluster was drawn.

    Args:
        groups: each pair's cluster, an integer array with values 0..G−1.
        n_boot: resamples. seed: of the generator.

    Yields:
        (cluster counts (size, G), pair counts (size, n)) float arrays, size ≤ CHUNK_VALUES // n
        resamples each.
    """
    groups = np.asarray(groups)
    n_groups, rng = int(groups.max()) + 1, np.random.default_rng(seed)
    chunk = max(1, CHUNK_VALUES // len(groups))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        draws = np.stack([rng.integers(0, n_groups, n_groups) for _ in range(size)])
        flat = (draws + n_groups * np.arange(size)[:, None]).ravel()
        counts = np.bincount(flat, minlength=size * n_groups).reshape(size, n_groups).astype(float)
        yield counts, counts[:, groups]


# ---------------------------------------------------------------- weighted coefficients

def runs(order, *columns):
    """The last sorted position of each run of equal values (of all `columns` at once) in `order`,
    and each sorted position's run."""
    change = np.zeros(len(order), bool)
    change[0] = True
    for c in columns:
        s = c[order]
        change[1:] |= s[1:] != s[:-1]
    return np.r_[np.flatnonzero(change)[1:] - 1, len(order) - 1], np.cumsum(change) - 1


def merge_levels(values):
    """The arrangements of a weighted inversion count of `values` (in their given order): per
    merge-sort level, the positions of each block's left half and right half, sorted within the
    block by value (left before right on ties), n standing for 'none'."""
    n, pos, levels, half = len(values), np.arange(len(values)), [], 1
    while half < n:
        block, right = pos // (2 * half), (pos // half) % 2
        key = np.lexsort((right, values, block))
        left = right[key] == 0
        levels.append((np.where(left, key, n).astype(np.int32), np.where(left, n, key).astype(np.int32)))
        half *= 2
    return levels


def discordant(levels, weights):
    """Σ w_p·w_q over p before q with value_p > value_q, per row of weights (in `merge_levels`'
    order): the weighted inversion count, level by level of a merge sort.

    Args:
        levels: `merge_levels(values)`. weights: (size, n) counts.

    Returns:
        (size,) floats (exact integers).
    """
    size, n = weights.shape
    padded = np.zeros((size, n + 1))
    padded[:, :n] = weights
    sums, out = weights, np.zeros(size)
    for left, right in levels:
        if sums.shape[1] % 2:
            sums = np.concatenate([sums, np.zeros((size, 1))], axis=1)
        lt, rt = sums[:, 0::2], sums[:, 1::2]  # each block's left and right half totals
        before = np.cumsum(lt, axis=1) - lt
        out += (rt * (lt + before)).sum(1) - np.einsum("ij,ij->i", padded[:, right], np.cumsum(padded[:, left], 1))
        sums = lt + rt
    return out


def discordant_by_cluster(levels, clusters, n_clusters):
    """The inversion counts between clusters: with pair weights constant within a cluster (the
    cluster bootstrap), `discordant` is c·M·cᵀ for the clusters' counts c, so M is computed once.

    Args:
        levels: `merge_levels(values)`. clusters: each position's cluster (in the levels' order).
        n_clusters: G.

    Returns:
        M, (G, G): M[g, h] = the pairs p before q with value_p > value_q, p in g and q in h.
    """
    from scipy import sparse
    n = len(clusters)
    member = np.zeros((n + 1, n_clusters), np.float32)  # one-hot rows (exact: counts stay far below 2**24)
    member[np.arange(n), clusters] = 1
    out = np.zeros((n_clusters, n_clusters))
    for level, (left, right) in enumerate(levels):
        block = 2 ** (level + 1)
        cumulative = np.cumsum(member[left], axis=0)  # left pairs per cluster up to each place of the arrangement
        at = np.flatnonzero(right < n)  # the right halves' pairs, each with the left pairs of its block after it
        after = cumulative[np.minimum((at // block + 1) * block, n) - 1] - cumulative[at]
        of = sparse.csr_matrix((np.ones(len(at)), (np.arange(len(at)), clusters[right[at]])),
                               shape=(len(at), n_clusters))
        out += (of.T @ after).T
    return out


class Prepared:
    """One metric's pairs, arranged once for every resample: signed predictions x, their sort
    order by (x, label), the runs of equal x and of equal (x, label), the merge levels of the
    labels in that order (Kendall), and the logistic curve fitted on all pairs, applied to x."""

    def __init__(self, x, label, clusters=None):
        self.x = np.asarray(x, float)
        self.order = np.lexsort((label, self.x))
        self.x_ends, self.x_run = runs(self.order, self.x)
        self.xy_ends, _ = runs(self.order, self.x, label)
        self.levels = merge_levels(np.unique(label, return_inverse=True)[1][self.order])
        curve = fit_logistic(self.x, label) if np.ptp(self.x) > 0 else None  # constant: no curve
        self.fitted = curve(self.x) if curve is not None else None
        self.between = None  # `discordant_by_cluster`, when resamples draw few clusters
        if clusters is not None and (n_clusters := int(clusters.max()) + 1) * len(self.x) <= CLUSTER_VALUES:
            self.between, self.levels = discordant_by_cluster(self.levels, clusters[self.order], n_clusters), None

    def discordant(self, cluster_counts, weights):
        """`discordant` of each resample: weights in this metric's order, cluster_counts of them."""
        if self.between is not None:
            return np.einsum("ij,jk,ik->i", cluster_counts, self.between, cluster_counts)
        return discordant(self.levels, weights)


def _run_totals(cumulative, ends):
    """(start, end) cumulative weights of each run: its weight is end − start."""
    end = cumulative[:, ends]
    return np.concatenate([np.zeros((len(end), 1)), end[:, :-1]], axis=1), end


def _tied(start, end):
    count = end - start
    return (count * (count - 1) / 2).sum(1)


def _pearson_sums(weights, a, b):
    """Weighted Pearson r of two fixed columns, per row of weights (standardised first)."""
    a, b = (a - a.mean()) / (a.std() or 1.0), (b - b.mean()) / (b.std() or 1.0)
    # einsum, not BLAS: a multi-threaded BLAS spinning on a busy machine slows these small products
    total, sa, sb, saa, sbb, sab = np.einsum("ij,jk->ki", weights, np.stack([np.ones_like(a), a, b, a * a, b * b,
                                                                               a * b], 1))
    cov, va, vb = sab - sa * sb / total, saa - sa * sa / total, sbb - sb * sb / total
    return cov / np.sqrt(va * vb)


def chunk_coefficients(metric, label_sums, cluster_counts, weights):
    """Every coefficient of one metric on a chunk of resamples.

    Args:
        metric: its `Prepared`. cluster_counts, weights: (size, G) and (size, n) counts
            (`resample_counts`).
        label_sums: `label_chunk(…)` of the same weights: the labels' weighted ranks, ties, sums.

    Returns:
        {coefficient: (size,) array}: SRCC (Pearson of the mid-ranks in the resample), PLCC,
        PLCC of the fitted curve's values (the curve fitted once on all pairs), KRCC (tau-b).
    """
    label, w_rank_label, label_ties, label_sq = label_sums
    w = weights[:, metric.order]
    cumulative = np.cumsum(w, axis=1)
    start, end = _run_totals(cumulative, metric.x_ends)
    total = cumulative[:, -1]
    rank = (start + end + 1) / 2  # mid-rank of each run of equal x in the resample
    mean = (total + 1) / 2
    rank_sq = ((end - start) * rank * rank).sum(1) - total * mean * mean
    cross = np.einsum("ij,ij->i", rank[:, metric.x_run], w_rank_label[:, metric.order]) - total * mean * mean
    pairs = total * (total - 1) / 2
    x_ties, xy_ties = _tied(start, end), _tied(*_run_totals(cumulative, metric.xy_ends))
    agree = pairs - x_ties - label_ties + xy_ties - 2 * metric.discordant(cluster_counts, w)
    fitted = _pearson_sums(weights, metric.fitted, label) if metric.fitted is not None else np.full(len(w), NAN)
    return {"srcc": cross / np.sqrt(rank_sq * label_sq), "plcc": _pearson_sums(weights, metric.x, label),
            "plcc_logistic": fitted, "krcc": agree / np.sqrt((pairs - x_ties) * (pairs - label_ties))}


def label_chunk(label, label_runs, weights):
    """The labels' share of `chunk_coefficients`: (label, weight × mid-rank per pair, tied pairs,
    centred sum of squared ranks), per row of weights."""
    order, ends, run = label_runs
    cumulative = np.cumsum(weights[:, order], axis=1)
    start, end = _run_totals(cumulative, ends)
    total = cumulative[:, -1]
    rank = (start + end + 1) / 2
    per_pair = np.empty_like(weights)
    per_pair[:, order] = rank[:, run]
    mean = (total + 1) / 2
    return label, weights * per_pair, _tied(start, end), ((end - start) * rank * rank).sum(1) - total * mean * mean


def bootstrap_coefficients(xs, label, groups, n_boot, seed=0):
    """Every coefficient of every metric on each of the same bootstrap resamples.

    Args:
        xs: per metric, its predictions signed so that agreement with `label` is positive.
        label: the labels. groups: each pair's cluster (`resample_counts`). n_boot, seed: as there.

    Returns:
        {coefficient: (n_boot, metrics) array}; NaN where a resample leaves one undefined (a
        constant column).
    """
    label = np.asarray(label, float)
    groups = np.asarray(groups)
    metrics = [Prepared(x, label, groups if groups.max() + 1 < len(groups) else None) for x in xs]
    order = np.argsort(label, kind="stable")
    label_runs = (order, *runs(order, label))
    out = {c: [] for c in COEFFICIENTS}
    with np.errstate(divide="ignore", invalid="ignore"):
        for counts, weights in resample_counts(groups, n_boot, seed):
            shared = label_chunk(label, label_runs, weights)
            per = [chunk_coefficients(m, shared, counts, weights) for m in metrics]
            for c in COEFFICIENTS:
                out[c].append(np.stack([p[c] for p in per], axis=1))
    return {c: np.concatenate(v) for c, v in out.items()}


# ---------------------------------------------------------------- intervals and tests

def percentile_interval(values):
    """The 95 % percentile interval of bootstrap values (NaNs left out; [NaN, NaN] when all are)."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    return [float(v) for v in np.percentile(values, [2.5, 97.5])] if len(values) else [NAN, NAN]


def bootstrap_p(delta):
    """The two-sided p-value of a paired bootstrap test that a difference is zero.

    p = min(1, 2·min(1 + #{Δ* ≤ 0}, 1 + #{Δ* ≥ 0}) / (B + 1)) over the B finite bootstrap
    differences Δ* (the +1s count the observed sample as one of the resamples, so p > 0).

    Args:
        delta: the bootstrap differences (NaNs left out).

    Returns:
        the p-value, or None without a finite difference.
    """
    delta = np.asarray(delta, float)
    delta = delta[np.isfinite(delta)]
    if not len(delta):
        return None
    low, high = 1 + int((delta <= 0).sum()), 1 + int((delta >= 0).sum())
    return min(1.0, 2 * min(low, high) / (len(delta) + 1))


def paired_tests(points, boot, names):
    """Each metric's coefficient against the best one's on the same resamples, Holm-corrected.

    Args:
        points: each metric's coefficient on all pairs. boot: (n_boot, metrics) of it.
        names: the metrics' names.

    Returns:
        per metric {"vs": the best's name (highest point value; None when none is finite),
        "diff": its point value minus the best's, "diff_ci95", "p", "p_holm" (None for the best
        and for a metric whose value is undefined)}.
    """
    finite = [k for k, v in enumerate(points) if np.isfinite(v)]
    best = max(finite, key=lambda k: points[k]) if finite else None
    rows = []
    for k in range(len(points)):
        tested = best is not None and k != best and k in finite
        delta = boot[:, k] - boot[:, best] if tested else None
        rows.append({"vs": names[best] if best is not None else None,
                     "diff": points[k] - points[best] if k in finite and best is not None else NAN,
                     "diff_ci95": percentile_interval(delta) if tested else [NAN, NAN],
                     "p": bootstrap_p(delta) if tested else None})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = adjusted
    return rows


def compare_metrics(names, preds, label, refs, label_higher_better, pred_higher_better, resample=None,
                    n_boot=N_BOOT, seed=0):
    """Metrics compared on the same labelled pairs: coefficients, intervals, paired tests.

    Args:
        names: a name per metric. preds: its predictions per pair (arrays of one length).
        label: the labels. refs: each pair's reference. label_higher_better: the label's direction.
        pred_higher_better: per metric, its direction. resample: 'refs', 'pairs' or None
            (`choose_resample`). n_boot, seed: the resamples (`resample_counts`).

    Returns:
        {"n", "refs", "resample", "n_boot", "seed", "metrics": [per metric {"metric", "n",
        each coefficient and its "<coefficient>_ci95"; for SRCC and PLCC "<c>_vs", "<c>_diff",
        "<c>_diff_ci95", "<c>_p", "<c>_p_holm" (`paired_tests`), "<c>_worse" (p_holm < 0.05)}]}.

    Raises:
        UserError: fewer than 3 pairs, or 'refs' asked with fewer than 2 references.
    """
    label = np.asarray(label, float)
    if len(label) < 3:
        raise UserError(f"{len(label)} pair(s) are in every file; correlations need at least 3")
    resample = choose_resample(refs, resample)
    groups = np.unique(np.asarray(refs), return_inverse=True)[1] if resample == "refs" else np.arange(len(label))
    signs = [agreement_sign(label_higher_better, hb) for hb in pred_higher_better]
    points = [correlations(p, label, label_higher_better, hb) for p, hb in zip(preds, pred_higher_better,
                                                                                 strict=True)]
    boot = bootstrap_coefficients([s * np.asarray(p, float) for s, p in zip(signs, preds, strict=True)], label,
                                  groups, n_boot, seed)
    rows = [{"metric": name, "n": point["n"]} for name, point in zip(names, points, strict=True)]
    for c in COEFFICIENTS:
        for k, row in enumerate(rows):
            row[c], row[f"{c}_ci95"] = points[k][c], percentile_interval(boot[c][:, k])
    for c in TESTED:
        for row, test in zip(rows, paired_tests([p[c] for p in points], boot[c], names), strict=True):
            row.update({f"{c}_{k}": v for k, v in test.items()})
            row[f"{c}_worse"] = test["p_holm"] is not None and test["p_holm"] < ALPHA
    return {"n": len(label), "refs": len(set(refs)), "resample": resample, "n_boot": n_boot, "seed": seed,
            "metrics": rows}


# ---------------------------------------------------------------- names and the table

def metric_names(paths):
    """A name per results file: its file name, or the path as given where two files share a name.

    Raises:
        UserError: when one file is given twice (the same path, or two paths to one file).
    """
    seen = {}
    for path in paths:
        real = os.path.realpath(path)
        if real in seen:
            raise UserError(f"{path} is given twice (also as {seen[real]}): each -f names another metric's file")
        seen[real] = path
    base = [os.path.basename(p) for p in paths]
    return [b if base.count(b) == 1 else p for b, p in zip(base, paths, strict=True)]
