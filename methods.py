"""Scoring your own outputs without labels: pair output folders with a reference folder, then
summarise each method (mean with a bootstrap interval), test methods against the best one on
the images they share (Wilcoxon signed-rank), and draw the per-method means.

Pairing rule: a file under an output folder goes with the reference that has the same
relative path without extension (`GT/x/0001.png` ↔ `OUT/x/0001.jpg`; subfolders kept).
"""
import os
from dataclasses import dataclass

import numpy as np
from scipy import stats

from utils import UserError, writing_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")
SHOWN = 3  # names quoted in a message about many files


@dataclass
class MethodSet:
    """One output folder: its name (the folder's), folder, and pairs (ref path, dis path),
    both relative to their own folders."""
    name: str
    folder: str
    pairs: list


def _images_by_stem(folder):
    """{relative path without extension: relative path} of the images under folder;
    UserError naming two files that share a stem."""
    found, clashes = {}, []
    for base, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.startswith(".") or not f.lower().endswith(IMAGE_EXTENSIONS):
                continue
            rel = os.path.relpath(os.path.join(base, f), folder).replace(os.sep, "/")
            stem = os.path.splitext(rel)[0]
            if stem in found:
                clashes.append(f"{found[stem]} and {rel}")
            found[stem] = rel
    if clashes:
        raise UserError(f"{folder}: {len(clashes)} file name(s) differ only by extension, so the pairing is "
                        f"ambiguous: {'; '.join(clashes[:SHOWN])}")
    return found


def _listing(names):
    return ", ".join(sorted(names)[:SHOWN]) + (", …" if len(names) > SHOWN else "")


def _check_folders(ref_dir, dis_dirs):
    if not dis_dirs:
        raise UserError("-dat dirs needs at least one --dis-dir")
    for d in [ref_dir, *dis_dirs]:
        if not d or not os.path.isdir(d):
            raise UserError(f"folder not found: {d}")
    real = [os.path.realpath(d) for d in dis_dirs]
    if os.path.realpath(ref_dir) in real:
        raise UserError(f"{ref_dir} is given as both the reference folder and an output folder")
    twice = sorted({d for d in real if real.count(d) > 1})
    if twice:
        raise UserError(f"output folder given twice: {twice[0]}")
    names = [os.path.basename(os.path.normpath(d)) for d in dis_dirs]
    same = sorted({n for n in names if names.count(n) > 1})
    if same:
        raise UserError(f"two output folders are named '{same[0]}': results files are named after folders; rename one")
    return names


def pair_folders(ref_dir, dis_dirs, skip_missing=False, warn=None):
    """Pair every output folder's images with the references.

    Args:
        ref_dir: the reference (ground-truth) folder.
        dis_dirs: output folders, one per method.
        skip_missing: score the pairs found instead of stopping at files without a partner.
        warn: a function taking one line, for what --skip-missing skips.

    Returns:
        [MethodSet] in the order given. Raises UserError (one line) for missing or repeated
        folders, ambiguous names, an output folder with no partners, and (unless
        skip_missing) files of either side without a partner.
    """
    names = _check_folders(ref_dir, dis_dirs)
    refs = _images_by_stem(ref_dir)
    if not refs:
        raise UserError(f"no images in the reference folder {ref_dir}")
    sets = []
    for name, folder in zip(names, dis_dirs):
        outs = _images_by_stem(folder)
        common = [s for s in outs if s in refs]
        if not common:
            raise UserError(f"{folder}: no image has a partner in {ref_dir} (same relative path without extension)"
                            + (f"; e.g. {_listing(outs.values())}" if outs else "; the folder holds no images"))
        orphans = [outs[s] for s in outs if s not in refs]
        unmatched = [refs[s] for s in refs if s not in outs]
        if orphans or unmatched:
            msg = (f"{folder}: {len(orphans)} output file(s) without a reference"
                   + (f" (e.g. {_listing(orphans)})" if orphans else "")
                   + f", {len(unmatched)} reference(s) without an output"
                   + (f" (e.g. {_listing(unmatched)})" if unmatched else ""))
            if not skip_missing:
                raise UserError(msg + "; pass --skip-missing to score the pairs found")
            if warn:
                warn(f"warning: {msg}; scoring the {len(common)} pairs found")
        sets.append(MethodSet(name, folder, [(refs[s], outs[s]) for s in sorted(common)]))
    return sets


def summarize(values, seed=0, n_boot=2000):
    """n, mean, std (ddof 1), median and the 95 % bootstrap interval of the mean (resampling
    images, seeded), of one method's per-image scores."""
    x = np.asarray(values, float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": float("nan"), "std": float("nan"), "median": float("nan"), "ci95": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    means = np.concatenate([x[rng.integers(0, n, (min(200, n_boot - s), n))].mean(1) for s in range(0, n_boot, 200)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"n": n, "mean": float(x.mean()), "std": float(x.std(ddof=1)) if n > 1 else 0.0,
            "median": float(np.median(x)), "ci95": [float(lo), float(hi)]}


def paired_tests(per_set, lower_better=True):
    """Each method against the best one (by mean) on the images both scored.

    Args:
        per_set: {set name: {image key: score}}.
        lower_better: the distance's direction (all distances here: True).

    Returns:
        {set name: {"vs": best name, "n_common", "p_value" (Wilcoxon signed-rank, two-sided;
        None for the best itself), "wins", "losses" (images where this set is better / worse
        than the best)}}.
    """
    means = {k: np.mean(list(v.values())) for k, v in per_set.items() if v}
    best = (min if lower_better else max)(means, key=means.get)
    out = {}
    for name, scores in per_set.items():
        keys = sorted(set(scores) & set(per_set[best]))
        a = np.array([scores[k] for k in keys])
        b = np.array([per_set[best][k] for k in keys])
        diff = (a - b) if lower_better else (b - a)  # > 0: worse than the best
        p = None
        if name != best:
            p = 1.0 if not np.any(diff) else float(stats.wilcoxon(a, b).pvalue)
        out[name] = {"vs": best, "n_common": len(keys), "p_value": p,
                     "wins": int((diff < 0).sum()), "losses": int((diff > 0).sum())}
    return out


def format_table(rows, lower_better=True):
    """Rows (set, distance, n, mean, std, median, ci95, vs_best...) as a ranked text table."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = sorted((r for r in rows if r["distance"] == distance), key=lambda r: r["mean"],
                       reverse=not lower_better)
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':20} {'n':>6} {'mean':>10} {'std':>10} {'median':>10} "
                     f"{'95% CI of mean':>23} "
                     f"{'p vs best':>10} {'wins/losses':>12}")
        for rank, r in enumerate(group, 1):
            p = "best" if r.get("p_value") is None else f"{r['p_value']:.3g}"
            wl = "" if r.get("p_value") is None else f"{r['wins']}/{r['losses']}"
            lines.append(f"  {rank:>4} {r['set'][:20]:20} {r['n']:>6} {r['mean']:10.5g} {r['std']:10.4g} "
                         f"{r['median']:10.5g} "
                         f"[{r['ci95'][0]:10.5g}, {r['ci95'][1]:10.5g}] {p:>10} {wl:>12}")
    return "\n".join(lines)


def bar_chart(rows, path, title):
    """Per-set means with their 95 % intervals for one distance, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["set"] for r in rows]
    means = np.array([r["mean"] for r in rows])
    err = np.abs(np.array([r["ci95"] for r in rows]).T - means)
    fig, ax = plt.subplots(figsize=(max(3.5, 1.1 * len(rows) + 1.5), 3.4), dpi=120)
    ax.bar(range(len(rows)), means, yerr=err, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"mean {rows[0]['distance']} (lower = closer)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with writing_file(path):
        fig.savefig(path)
    plt.close(fig)
    return path
