#!/usr/bin/env python3
"""Evaluate a backbone and distances on an IQA dataset: per-pair results files, correlations.

  python run.py -dat live --root /data/LIVE -m dinov1 -d all
  python run.py -dat pipal --root /data/PIPAL -m clip_vitb32 -d l2 -rob tra -pct 1
  python run.py -dat tid2013 --root /data/TID2013 -m dinov1 -d wsd --kinds tra,sca,rot --pcts 1,2,4,8

Writes <sdir>/<dataset>_<name>[_<rob>-<pct>].csv (header dis,ref,mos,pred; paths relative to
--root) with its record of settings beside it (.json), prints one summary row per distance
(SRCC, PLCC, KRCC, logistic PLCC, pairs/s) and appends it to <sdir>/summary.csv. An
interrupted run resumes where it stopped when the settings match (results.py); a run locks
its files. Under torchrun the pairs are sharded over the ranks and rank 0 writes the same
files as one process would.
"""
import contextlib
import os
import sys
import time

import numpy as np

import results
from utils import ArgParser, UserError, cli_entry, int_at_least, to_json


def build_parser():
    p = ArgParser(description=__doc__.split("\n")[1])
    p.add_argument("-dat", "--dataset", required=True, help="layout: pipal, live, tid2013, kadid10k, csv")
    p.add_argument("--root", help="dataset folder (csv: paths are relative to it; default the CSV's folder)")
    p.add_argument("--csv", help="-dat csv: the list (columns ref, dis, mos or dmos)")
    p.add_argument("--higher-is-better", choices=["yes", "no"],
                   help="-dat csv: label direction (default: mos yes, dmos no)")
    p.add_argument("-m", "--model", default="dinov1")
    p.add_argument("-d", "--distance", default="wsd", help="distance, comma list or 'all'")
    p.add_argument("-s", "--saveas", help="name used in the results file names (default: the model)")
    p.add_argument("-sdir", "--savedir", default="results", help="folder for results files (default results/)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard earlier rows of the results files instead of resuming")
    p.add_argument("-rob", "--robustness", choices=["tra", "sca", "rot"],
                   help="apply a shift/zoom/rotation when loading")
    p.add_argument("-pct", "--pct", type=int, default=1, help="its magnitude (percent, or degrees for rot; default 1)")
    p.add_argument("--kinds", help="sweep: comma list of tra,sca,rot (with --pcts); the clean run is included")
    p.add_argument("--pcts", default="1,2,4,8", help="sweep magnitudes (default 1,2,4,8)")
    p.add_argument("-r", "--resize", type=int_at_least(224, " (the window size)"), default=None,
                   help="resize both images to N×N first (N ≥ 224)")
    p.add_argument("--weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-norm", action="store_true",
                   help="normalise windows with the model's own mean/std (not the published protocol)")
    p.add_argument("--precision", default="published")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="windows per forward pass (default 256 on a GPU, 16 on a CPU)")
    p.add_argument("--workers", type=int_at_least(0), default=None,
                   help="image-decoding processes (default 8 on a GPU, 0 on a CPU)")
    p.add_argument("--limit", type=int_at_least(1), default=None, help="only the first N pairs")
    p.add_argument("--skip-missing", action="store_true",
                   help="score the usable pairs instead of stopping at missing, unreadable or mis-sized images")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def variants_of(args):
    """[(robustness kind or '', pct)], the clean run first in a sweep; each checked (robustness.check)."""
    from robustness import check
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        try:
            pcts = [int(x) for x in args.pcts.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--pcts must be comma-separated integers, got {args.pcts!r}") from None
        bad = [k for k in kinds if k not in ("tra", "sca", "rot")]
        if bad or not kinds or not pcts:
            raise UserError(f"--kinds takes tra,sca,rot (got {args.kinds!r}) and --pcts at least one integer")
        variants = [("", 0)] + [(k, p) for k in kinds for p in pcts]
    else:
        variants = [(args.robustness, args.pct)] if args.robustness else [("", 0)]
    for kind, pct in variants:
        if kind:
            check(kind, pct)
    return variants


def check_images(dataset, pairs, skip_missing, resize=None, variants=(("", 0),)):
    """List unusable pairs up front, from image headers only: missing or unreadable files,
    reference and distorted of different sizes, a side under 224 px (also after a shift's
    crop). Stop with one line unless --skip-missing, which scores the other pairs.

    Returns:
        the usable pairs [(ref, dis, label)], in order.
    """
    from PIL import Image

    from utils import pair_problem
    sizes, unreadable = {}, set()
    for rel in dict.fromkeys(p for r, d, _ in pairs for p in (r, d)):
        try:
            with Image.open(dataset.path(rel)) as im:
                sizes[rel] = (resize, resize) if resize else im.size  # header only: fast
        except Exception:  # any missing or unreadable file counts as unusable
            unreadable.add(rel)
    shrink = max((p for k, p in variants if k == "tra"), default=0)  # the largest shift crops the most

    def problem(ref, dis):
        if ref in unreadable or dis in unreadable:
            return "missing or unreadable"
        return pair_problem(sizes[ref], sizes[dis], shrink, bool(resize))

    why = [problem(r, d) for r, d, _ in pairs]
    bad = [(d, w) for (_, d, _), w in zip(pairs, why, strict=False) if w]
    if not bad:
        return pairs
    kinds = sorted({w.split(" (")[0] for _, w in bad})
    examples = ", ".join(f"{d} ({w})" for d, w in bad[:3])
    msg = f"{len(bad)} of {len(pairs)} pair(s) unusable under {dataset.root}: {'; '.join(kinds)}; e.g. {examples}"
    if not skip_missing:
        raise UserError(msg + "; pass --skip-missing to score the other pairs")
    sys.stderr.write(f"warning: {msg}; skipping them\n")
    return [p for p, w in zip(pairs, why, strict=False) if not w]


def load_pairs(args, variants):
    """The dataset (all its pairs, for labels) and the pairs to score: the first --limit, the
    usable ones; the results folder is checked writable first, before any work."""
    from datasets import load_dataset
    results.check_writable(args.savedir)
    hib = None if args.higher_is_better is None else args.higher_is_better == "yes"
    dataset = load_dataset(args.dataset, args.root, csv_file=args.csv, higher_is_better=hib)
    pairs = check_images(dataset, dataset.pairs[: args.limit], args.skip_missing, args.resize, variants)
    if not pairs:
        raise UserError(f"no pairs to score in {dataset.root}")
    return dataset, pairs, len(dataset.pairs[: args.limit]) - len(pairs)


def results_files(args, dataset_name, variants):
    """{(variant index, distance): results path} and {path: (distance, variant, pred higher
    better)}; distances checked against the backbone (without loading it)."""
    from distances import DISTANCES
    from engine import parse_distances
    from models import get_backbone
    names = parse_distances(args.distance, get_backbone(args.model))
    paths = {(v, d): results.results_path(args.savedir, dataset_name, args.model, d, variants[v], args.saveas,
                                          len(names))
             for v in range(len(variants)) for d in names}
    return paths, {p: (d, variants[v], not DISTANCES[d].lower_better) for (v, d), p in paths.items()}


def todo_jobs(done, paths, order):
    """The (variant, pair index) jobs some distance's file still lacks, variant-major."""
    variants = sorted({v for v, _ in paths})
    complete = {v: set.intersection(*(done[p] for (w, _), p in paths.items() if w == v)) for v in variants}
    return [(v, i) for v in variants for i, key in enumerate(order) if key not in complete[v]]


def score(args, dist, scorer, dataset, pairs, variants, paths, todo):
    """Score this rank's share of the jobs, appending rows to the results (torchrun: part)
    files as they finish. Returns (pairs scored, [pairs skipped mid-run per variant], seconds),
    summed over the ranks."""
    from robustness import Transform
    transforms = [Transform(k, p) if k else None for k, p in variants]
    skipped = np.zeros(len(variants), dtype=int)

    def skip(job, message):  # --skip-missing: a pair that cannot be decoded mid-run
        skipped[job[0]] += 1
        sys.stderr.write(f"warning: skipped {pairs[job[1]][1]}: {message}\n")
    targets = paths if dist.world == 1 else {k: results.part_path(p, dist.rank) for k, p in paths.items()}
    progress = None
    if not args.no_progress and dist.rank == 0:
        from tqdm import tqdm
        progress = tqdm(total=len(todo), unit="pair", dynamic_ncols=True, desc=f"{dataset.name} {args.model}",
                        disable=None, file=sys.stderr)
    files = [(dataset.path(r), dataset.path(d)) for r, d, _ in pairs]
    count, started = 0, time.perf_counter()
    writer = results.ResultsWriter(targets)
    try:
        for (v, i), row in scorer.score_files(files, transforms, jobs=dist.shard(pairs, todo),
                                              **({"on_error": skip} if args.skip_missing else {})):
            ref, dis, mos = pairs[i]
            for j, d in enumerate(scorer.distances):
                writer.write((v, d), dis, ref, mos, row[j])
            count += 1
            if progress is not None:
                progress.update(dist.world)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    return dist.sum(count), dist.sum(skipped), time.perf_counter() - started


def summarise(args, dataset, records, paths, order, stats):
    """Finish every results file (dataset order, current labels, parts merged) and append its
    summary row (correlations and the settings of its record) to summary.csv."""
    from calc_scores import correlations
    labels = results.labels_of(dataset.pairs)
    count, skipped, elapsed, skipped_up_front = stats
    rate = count / elapsed if count and elapsed > 0 else float("nan")
    summary = []
    for (v, _d), path in paths.items():
        rec = records[path]
        rows = results.finish(path, labels, order)
        c = correlations([r[3] for r in rows], [r[2] for r in rows], dataset.higher_better, rec["pred_higher_better"])
        summary.append({**rec, **c, "n_skipped": int(skipped_up_front + skipped[v]), "pairs_per_s": round(rate, 2),
                        "file": path})
    results.append_summary(args.savedir, summary)
    if args.kinds:
        from robustness import write_sweep
        table, png = write_sweep(summary, os.path.join(args.savedir,
                                                       f"{dataset.name}_{args.saveas or args.model}_sweep"))
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    return summary


def report(args, summary):
    """Print the summary rows (a table, or JSON with --json)."""
    if args.json:
        print(to_json(summary))
        return
    print(f"{'distance':8} {'rob':>7} {'n':>6} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7} {'PLCC-log':>8} "
          f"{'pairs/s':>8}  file")
    for r in summary:
        rob = f"{r['robustness']}-{r['pct']}" if r["robustness"] != "none" else "clean"
        print(f"{r['distance']:8} {rob:>7} {r['n']:>6} {r['srcc']:7.4f} {r['plcc']:7.4f} {r['krcc']:7.4f} "
              f"{r['plcc_logistic']:8.4f} {r['pairs_per_s']:8.2f}  {r['file']}")
        if r["n_skipped"]:
            print(f"{'':8} {'':>7} {r['n_skipped']:>6} pair(s) skipped")


@cli_entry
def main(argv=None):
    """Check everything that can be checked before the model loads (arguments, results
    folder, labels, image headers, the lock), then score what the results files lack."""
    args = build_parser().parse_args(argv)
    import distributed
    from engine import Scorer
    dist = distributed.setup()
    variants = variants_of(args)
    dataset, pairs, skipped_up_front = dist.from_rank0(lambda: load_pairs(args, variants))
    paths, files = results_files(args, dataset.name, variants)
    lock = dist.from_rank0(lambda: results.Lock(paths.values()), share=False)
    with lock or contextlib.nullcontext():
        scorer = Scorer(args.model, args.distance, device=dist.device(args.device), precision=args.precision,
                        weights=args.weights, batch_size=args.batch_size, workers=args.workers, resize=args.resize,
                        model_norm=args.model_norm)
        records = results.make_records(dataset, scorer.settings, files)
        order = [(dis, ref) for ref, dis, _ in pairs]
        todo = dist.from_rank0(lambda: todo_jobs(
            results.prepare(records, results.labels_of(dataset.pairs), order, args.overwrite), paths, order))
        stats = score(args, dist, scorer, dataset, pairs, variants, paths, todo)
        if dist.rank != 0:
            return 0
        report(args, summarise(args, dataset, records, paths, order, (*stats, skipped_up_front)))
    return 0


if __name__ == "__main__":
    main()
