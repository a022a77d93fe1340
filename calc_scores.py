#!/usr/bin/env python3
"""Correlations between predictions and labels from a results file (`dis,ref,mos,pred`).

  python calc_scores.py -dat pipal -f results/pipal_dinov1_wsd.csv [--byref] [--json] [--plot out.png]

SRCC, PLCC (plain Pearson) and KRCC over all pairs, signed so that agreement is positive
(PROTOCOL.md §6), plus PLCC after the standard 5-parameter logistic fit. --byref averages
each coefficient over references instead. The label's direction comes from -dat or
--label-higher-better when given, else from the file's record (X.json beside X.csv, written
by run.py), else from the file name's dataset prefix (published files have no record); a
prediction column from a similarity metric (PSNR, SSIM, …: higher = better) is flipped too.

  python calc_scores.py --per-layer results/pipal_dinov1_l2_layers.csv [--json] [--plot srcc.png]

--per-layer takes a per-layer file (run.py --per-layer) and gives SRCC and PLCC per block,
signed the same way, the directions from the record of X.csv beside X_layers.csv.
"""
import os
import re
import warnings

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit

import results
from datasets import LAYOUTS
from utils import ArgParser, UserError, cli_entry, to_json, writing_file

# prediction columns that are similarities (higher = better), negated as the published tables did
SIMILARITY_METRICS = ("psnr", "ssim", "msssim", "ms_ssim", "fsim", "vif", "gmsd_sim")


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


def correlations(pred, label, label_higher_better, pred_higher_better=False):
    """{'n', 'srcc', 'plcc', 'krcc', 'plcc_logistic'}, each signed so agreement is positive."""
    pred, label = np.asarray(pred, float), np.asarray(label, float)
    sign = agreement_sign(label_higher_better, pred_higher_better)
    x = sign * pred
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(label) == 0:
        return {"n": n, "srcc": float("nan"), "plcc": float("nan"), "krcc": float("nan"), "plcc_logistic": float("nan")}
    curve = fit_logistic(x, label)
    return {"n": n, "srcc": float(stats.spearmanr(x, label)[0]), "plcc": float(stats.pearsonr(x, label)[0]),
            "krcc": float(stats.kendalltau(x, label)[0]),
            "plcc_logistic": float(stats.pearsonr(curve(x), label)[0]) if curve is not None else float("nan")}


def correlations_by_reference(frame, label_higher_better, pred_higher_better=False):
    """Each coefficient averaged over references (references with < 3 pairs skipped)."""
    groups = [g for _, g in frame.groupby("ref", sort=False) if len(g) >= 3]
    per = [correlations(g.pred, g.mos, label_higher_better, pred_higher_better) for g in groups]
    if not per:
        raise UserError("--byref needs references with at least 3 pairs each")
    with warnings.catch_warnings():  # a coefficient NaN for every reference (e.g. no logistic fit) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {k: float(np.nanmean([p[k] for p in per])) for k in ("srcc", "plcc", "krcc", "plcc_logistic")}
    return {"n": int(len(frame)), "refs": len(per), **out}


def guess_dataset(path):
    """The layout named by the file name's prefix (published files: pipal_..., live_...), or None."""
    name = os.path.basename(path).lower()
    return next((d for d in LAYOUTS if name.startswith(d + "_")), None)


def label_direction(args, record):
    """(dataset name, label higher = better): --label-higher-better, then -dat, then the
    record, then the file-name guess; UserError when none tells."""
    dataset = args.dataset or (record or {}).get("dataset") or guess_dataset(args.file)
    if args.label_higher_better:
        return dataset, args.label_higher_better == "yes"
    if args.dataset in LAYOUTS and not (args.dataset == "csv" and record is not None):  # a list decides per file
        return dataset, LAYOUTS[args.dataset].higher_better
    if (record or {}).get("label_higher_better") is not None:  # a JSON boolean (results.read_record checks)
        return dataset, record["label_higher_better"]
    if dataset in LAYOUTS:
        return dataset, LAYOUTS[dataset].higher_better
    raise UserError(f"cannot tell the label direction of {args.file}: pass -dat ({', '.join(LAYOUTS)}) "
                    "or --label-higher-better")


def pred_direction(args, record):
    """Predictions higher = better: --pred-higher-better, the record's distance, the file name (psnr, …)."""
    if args.pred_higher_better:
        return args.pred_higher_better == "yes"
    if (record or {}).get("pred_higher_better") is not None:
        return record["pred_higher_better"]
    return is_similarity(args.file)


def is_similarity(path):
    stem = re.split(r"[_.\-]", os.path.basename(path).lower())
    return any(m in stem for m in SIMILARITY_METRICS)


def scatter_plot(frame, label_higher_better, pred_higher_better, out, title):
    """Prediction (signed) against label with the fitted logistic curve, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sign = agreement_sign(label_higher_better, pred_higher_better)
    x, y = sign * frame.pred.to_numpy(float), frame.mos.to_numpy(float)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.scatter(x, y, s=4, alpha=0.4, lw=0)
    curve = fit_logistic(x, y)
    if curve is not None:
        xs = np.linspace(x.min(), x.max(), 200)
        ax.plot(xs, curve(xs), "r-", lw=1.5, label="5-parameter logistic")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(("−" if sign < 0 else "") + "prediction")
    ax.set_ylabel("label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with writing_file(out):
        fig.savefig(out)
    plt.close(fig)


def read_layers(path):
    """A per-layer file's rows (DataFrame: dis, ref, mos, block_<k>…), its block columns and the
    record of its results file (X.csv beside X_layers.csv; None when absent). Bad rows and
    values are refused as `results.read_frame` refuses them (`results.read_table`, `number_frame`)."""
    if not os.path.isfile(path):
        raise UserError(f"per-layer file not found: {path}")
    results_file = path[: -len("_layers.csv")] + ".csv" if path.endswith("_layers.csv") else None
    record = results.read_record(results_file) if results_file else None
    header, rows = results.read_table(path)
    blocks = [c for c in header if re.fullmatch(r"block_\d+", c)]
    if "mos" not in header or not blocks:
        raise UserError(f"{path} is not a labelled per-layer file (header dis,ref,mos,block_1,…)")
    if not rows:
        raise UserError(f"{path} holds no complete rows")
    return results.number_frame(path, header, rows, ["mos", *blocks]), blocks, record


def per_layer_main(a):
    """--per-layer: SRCC/PLCC per block, as a table, JSON, or SRCC against the block (--plot)."""
    a.file = a.per_layer
    frame, blocks, record = read_layers(a.file)
    _, label_hb = label_direction(a, record)
    sign = agreement_sign(label_hb, pred_direction(a, record))
    label = frame.mos.to_numpy(float)
    rows = []
    for col in blocks:
        x = sign * frame[col].to_numpy(float)
        ok = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(label) > 0
        rows.append({"block": int(col.split("_")[1]),
                     "srcc": float(stats.spearmanr(x, label)[0]) if ok else float("nan"),
                     "plcc": float(stats.pearsonr(x, label)[0]) if ok else float("nan")})
    if a.plot:
        layer_plot(rows, a.plot, os.path.basename(a.file))
    if a.json:
        print(to_json(rows))
        return 0
    print(f"{os.path.basename(a.file)}  n={len(frame)}")
    print(f"{'block':>5} {'SRCC':>7} {'PLCC':>7}")
    for r in rows:
        print(f"{r['block']:>5} {r['srcc']:7.4f} {r['plcc']:7.4f}")
    return 0


def layer_plot(rows, out, title):
    """SRCC against the block number, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot([r["block"] for r in rows], [r["srcc"] for r in rows], "o-", lw=1.5)
    ax.set_xlabel("block")
    ax.set_ylabel("SRCC")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with writing_file(out):
        fig.savefig(out)
    plt.close(fig)


def build_parser():
    p = ArgParser(__doc__)
    p.add_argument("-dat", "--dataset",
                   help=f"layout, for the label's direction ({', '.join(LAYOUTS)}); default from the file name")
    p.add_argument("-f", "--file", help="results file with header dis,ref,mos,pred")
    p.add_argument("--per-layer", metavar="FILE", help="a per-layer file X_layers.csv: SRCC/PLCC per block")
    p.add_argument("--byref", action="store_true", help="average the coefficients over references")
    p.add_argument("--label-higher-better", choices=["yes", "no"], help="override the dataset's label direction")
    p.add_argument("--pred-higher-better", choices=["yes", "no"],
                   help="override: predictions are similarities (default: detected from the file name, e.g. psnr)")
    p.add_argument("--plot", help="write a scatter plot (PNG) with the fitted logistic curve "
                   "(--per-layer: SRCC against the block)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


@cli_entry
def main(argv=None):
    a = build_parser().parse_args(argv)
    if a.dataset is not None and a.dataset not in LAYOUTS:
        raise UserError(f"unknown dataset layout '{a.dataset}'; known: {', '.join(LAYOUTS)}")
    if bool(a.file) == bool(a.per_layer):
        raise UserError("give a results file (-f X.csv) or a per-layer file (--per-layer X_layers.csv)")
    if a.per_layer:
        return per_layer_main(a)
    frame, record = results.read_frame(a.file)
    dataset, label_hb = label_direction(a, record)
    pred_hb = pred_direction(a, record)
    result = correlations_by_reference(frame, label_hb, pred_hb) if a.byref else correlations(frame.pred, frame.mos,
                                                                                              label_hb, pred_hb)
    result = {"file": a.file, "dataset": dataset, "label_higher_better": label_hb, "pred_higher_better": pred_hb,
              **result}
    if a.plot:
        scatter_plot(frame, label_hb, pred_hb, a.plot, os.path.basename(a.file))
        result["plot"] = a.plot
    if a.json:
        print(to_json(result))
    else:
        print(f"{os.path.basename(a.file)}  n={result['n']}  SRCC {result['srcc']:.4f}  PLCC {result['plcc']:.4f}  "
              f"KRCC {result['krcc']:.4f}  PLCC(logistic) {result['plcc_logistic']:.4f}"
              + ("  (mean over references)" if a.byref else ""))
    return 0


if __name__ == "__main__":
    main()
