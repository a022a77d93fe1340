"""The corr command (`zsiqa corr`, calc_scores.py): correlations between a results file's
predictions and its labels, or per block of a per-layer file.

The label's direction comes from -dat or --label-higher-better when given, else from the
file's record (X.json beside X.csv, written by the eval command), else from the file name's
dataset prefix (published files have no record); a prediction column from a similarity metric
(PSNR, SSIM, …: higher = better) is flipped too.
"""
import contextlib
import os
import re
import sys
import warnings
from dataclasses import replace

import numpy as np

from zsiqa import bundled, metric_compare, metric_report, plots, results
from zsiqa.config import CorrConfig
from zsiqa.datasets import LAYOUTS
from zsiqa.errors import UserError, check_readable, writing
from zsiqa.jsontext import to_json
from zsiqa.stats import agreement_sign, block_correlations, correlations, correlations_by_reference

# what corr tells a user whose record is broken (it has no --overwrite of its own)
CORR_FIX = "correct or remove it (corr then reads the file without a record), or rerun run.py with --overwrite"
# prediction columns that are similarities (higher = better), negated as the published tables did
SIMILARITY_METRICS = ("psnr", "ssim", "msssim", "ms_ssim", "fsim", "vif", "gmsd_sim")


def guess_dataset(path):
    """The layout named by the file name's prefix (published files: pipal_..., live_...), or None."""
    name = os.path.basename(path).lower()
    return next((d for d in LAYOUTS if name.startswith(d + "_")), None)


def label_direction(args, record):
    """(dataset name, label higher = better): --label-higher-better, then -dat, then the
    record, then the file-name guess; UserError when none tells. A CSV list's direction (mos
    or dmos) is known from its record only: without one, the flag is needed."""
    dataset = args.dataset or (record or {}).get("dataset") or guess_dataset(args.file)
    if args.label_higher_better:
        return dataset, args.label_higher_better == "yes"
    if args.dataset in LAYOUTS and args.dataset != "csv":
        return dataset, LAYOUTS[args.dataset].higher_better
    if (record or {}).get("label_higher_better") is not None:  # a JSON boolean (results.read_record checks)
        return dataset, record["label_higher_better"]
    if args.dataset == "csv":
        raise UserError(f"{args.file}: a CSV list's label direction (mos: higher = better, dmos: higher = worse) is in "
                        "the record beside its results file, and there is none; pass --label-higher-better yes "
                        "(a mos column) or no (dmos)")
    if dataset in LAYOUTS and dataset != "csv":
        if record is None and not args.dataset and not bundled.is_published(args.file):  # its name is all we have
            sys.stderr.write(f"warning: {args.file} has no record beside it: its labels are taken as {dataset}'s "
                             f"({LAYOUTS[dataset].summary.split('(')[-1].rstrip(')')}) from its name; pass -dat or "
                             "--label-higher-better if it is another list\n")
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


def read_layers(path):
    """A per-layer file's rows (DataFrame: dis, ref, mos, block_<k>…), its block columns and the
    record of its results file (X.csv beside X_layers.csv; None when absent). Read by the rules
    of `results.read_frame`: a pair the engine scored NaN or inf (when a record says the eval
    command wrote the file) is left out with a warning, other bad rows and values are refused."""
    check_readable(path, "per-layer file")  # a folder, FIFO or device named as such, not "not found"
    results_file = path[: -len("_layers.csv")] + ".csv" if path.endswith("_layers.csv") else None
    record = results.read_record(results_file, CORR_FIX) if results_file else None
    header, rows = results.read_table(path)
    blocks = [c for c in header if re.fullmatch(r"block_\d+", c)]
    if "mos" not in header or not blocks:
        raise UserError(f"{path} is not a labelled per-layer file (header dis,ref,mos,block_1,…)")
    if record is not None:
        at = [header.index(b) for b in blocks]
        rows, _ = results.drop_nonfinite(path, rows, lambda r: sum(results.parsed(r[1][k]) for k in at),
                                         lambda r: r[1][0])
    if not rows:
        raise UserError(f"{path} holds no complete rows")
    return results.number_frame(path, header, rows, ["mos", *blocks]), blocks, record


SAFE_EXPONENT = 500  # |values| beyond 2**500 (or under 2**-500, not 0) square to more (less) than float64 holds


def scaled(frame, columns):
    """`frame` with each of `columns` whose largest |value| is beyond 2**±SAFE_EXPONENT divided by
    the power of two that brings it near 1 (exact: only the exponent changes), so that sums of
    squares do not overflow; every coefficient here is unchanged by such a scale. Returns
    (frame, {column: the power of two it was divided by})."""
    powers = {}
    for col in columns:
        top = float(np.max(np.abs(frame[col].to_numpy(float)))) if len(frame) else 0.0
        exponent = int(np.frexp(top)[1]) if top else 0
        if abs(exponent) > SAFE_EXPONENT:
            powers[col] = exponent
    if powers:
        frame = frame.assign(**{c: np.ldexp(frame[c].to_numpy(float), -e) for c, e in powers.items()})
    return frame, powers


@contextlib.contextmanager
def one_line_warnings(path):
    """numpy's and scipy's warnings inside the block (overflow, a constant input) become one
    `warning:` line naming the file, instead of their raw lines with source code."""
    with np.errstate(over="warn", divide="warn", invalid="warn"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    if caught:
        first = str(caught[0].message).splitlines()[0] if str(caught[0].message) else caught[0].category.__name__
        sys.stderr.write(f"warning: {path}: the values are too extreme to compute every coefficient in float64 "
                         f"({first}); one that could not be computed is nan\n")


def per_layer_main(a: CorrConfig):
    """--per-layer: SRCC/PLCC per block, as a table, JSON, or SRCC against the block (--plot)."""
    a = replace(a, file=a.per_layer)
    frame, blocks, record = read_layers(a.file)
    _, label_hb = label_direction(a, record)
    sign = agreement_sign(label_hb, pred_direction(a, record))
    frame, _ = scaled(frame, ["mos", *blocks])
    with one_line_warnings(a.file):
        rows = block_correlations({int(col.split("_")[1]): frame[col] for col in blocks}, frame.mos, sign)
    if a.plot:
        plots.srcc_per_block(rows, a.plot, os.path.basename(a.file))
    if a.json:
        print(to_json(rows))
        return 0
    print(f"{os.path.basename(a.file)}  n={len(frame)}")
    print(f"{'block':>5} {'SRCC':>7} {'PLCC':>7}")
    for r in rows:
        print(f"{r['block']:>5} {r['srcc']:7.4f} {r['plcc']:7.4f}")
    return 0


def main(a: CorrConfig):
    """Correlations of a results file (-f) or of each block of a per-layer file (--per-layer)."""
    if a.dataset is not None and a.dataset not in LAYOUTS:
        raise UserError(f"unknown dataset layout '{a.dataset}'; known: {', '.join(LAYOUTS)}")
    if "list" in (a.published or ()):
        print("\n".join(bundled.published_names()))
        return 0
    a = replace(a, file=(*a.file, *(bundled.published(name) for name in a.published)))
    if bool(a.file) == bool(a.per_layer):
        raise UserError("give results files (-f X.csv, --published NAME: either one repeated) or a per-layer file "
                        "(--per-layer X_layers.csv)")
    bootstrap = any(v is not None for v in (a.resample, a.seed, a.n_boot))
    if a.per_layer:
        if bootstrap or a.report:
            raise UserError("--resample, --seed, --n-boot and --report compare results files (-f), not a per-layer "
                            "file")
        return per_layer_main(a)
    for path in a.file:
        check_readable(path, "results file")  # a folder, FIFO or device named as such, not "not found"
    if len(a.file) > 1 or bootstrap or a.report:
        return compare_main(a)
    a = replace(a, file=a.file[0])
    frame, record = results.read_frame(a.file, CORR_FIX)
    dataset, label_hb = label_direction(a, record)
    pred_hb = pred_direction(a, record)
    frame, powers = scaled(frame, ["pred", "mos"])
    with one_line_warnings(a.file):
        result = correlations_by_reference(frame, label_hb, pred_hb) if a.byref else \
            correlations(frame.pred, frame.mos, label_hb, pred_hb)
    result = {"file": a.file, "dataset": dataset, "label_higher_better": label_hb, "pred_higher_better": pred_hb,
              **result}
    if a.plot:
        note = "".join(f", {c} / 2^{e}" for c, e in powers.items())  # the scale drawn, when extreme values were scaled
        with one_line_warnings(a.file):
            plots.scatter(frame.pred, frame.mos, label_hb, pred_hb, a.plot, os.path.basename(a.file) + note)
        result["plot"] = a.plot
    if a.json:
        print(to_json(result))
    else:
        print(f"{os.path.basename(a.file)}  n={result['n']}  SRCC {result['srcc']:.4f}  PLCC {result['plcc']:.4f}  "
              f"KRCC {result['krcc']:.4f}  PLCC(logistic) {result['plcc_logistic']:.4f}"
              + ("  (mean over references)" if a.byref else ""))
    return 0


def compare_main(a: CorrConfig):
    """Several results files (-f A.csv -f B.csv …), or one with --n-boot/--resample/--seed: each
    metric's coefficients with bootstrap intervals and paired tests against the best
    (`metric_compare`), on the pairs every file has; a table, or JSON."""
    if a.byref or a.plot:
        raise UserError("--byref and --plot take one results file without --resample, --seed or --n-boot")
    names, frames, labels, preds = metric_compare.metric_names(a.file), [], {}, []
    for path in a.file:
        frame, record = results.read_frame(path, CORR_FIX)
        one = replace(a, file=path)
        labels[path] = label_direction(one, record)
        preds.append(pred_direction(one, record))
        frames.append(frame)
    if len({hb for _, hb in labels.values()}) > 1:
        raise UserError("the files' labels run in different directions (" + ", ".join(
            f"{p}: {'higher' if hb else 'lower'} = better" for p, (_, hb) in labels.items())
            + "); pass -dat or --label-higher-better if they are one list")
    matched = metric_compare.match_pairs(names, frames)
    for path, (count, examples) in zip(a.file, matched["left_out"], strict=True):
        if count:
            sys.stderr.write(f"warning: {path}: {count} pair(s) not in every file left out (e.g. "
                             f"{', '.join(map(metric_report.printable, examples))})\n")
    dataset, label_hb = labels[a.file[0]]
    result = metric_compare.compare_metrics(names, matched["preds"], matched["mos"], matched["ref"], label_hb, preds,
                                            a.resample, a.n_boot or metric_compare.N_BOOT, a.seed or 0)
    for row, path, hb, (count, _) in zip(result["metrics"], a.file, preds, matched["left_out"], strict=True):
        row.update(file=path, pred_higher_better=hb, left_out=count)
    result = {"dataset": dataset, "label_higher_better": label_hb, **result}
    written = write_report(a.report, result, dataset) if a.report else None
    print(to_json(result) if a.json else metric_report.format_table(result, dataset))
    if written and not a.json:
        print(written)
    return 0


def write_report(folder, result, dataset):
    """corr --report DIR: the comparison of metrics written into DIR (`metric_report.write_metric_report`)
    while holding DIR's report lock, so that a second run writing DIR stops in one line; returns
    a line naming the files."""
    with writing(folder, "nothing was written"):
        os.makedirs(folder, exist_ok=True)
    with results.report_lock(folder):
        paths = metric_report.write_metric_report(folder, result, dataset)
    return f"report: {paths[-1]} (with {', '.join(os.path.basename(p) for p in paths[:-1])})"
