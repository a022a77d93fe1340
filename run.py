#!/usr/bin/env python3
"""Evaluate a backbone and distances on an IQA dataset: per-pair results files, correlations.

  python run.py -dat live --root /data/LIVE -m dinov1 -d all
  python run.py -dat pipal --root /data/PIPAL -m clip_vitb32 -d l2 -rob tra -pct 1
  python run.py -dat tid2013 --root /data/TID2013 -m dinov1 -d wsd --kinds tra,sca,rot --pcts 1,2,4,8

Writes <sdir>/<dataset>_<name>[_<rob>-<pct>].csv (header dis,ref,mos,pred; paths relative to
--root), prints one summary row per distance (SRCC, PLCC, KRCC, logistic PLCC, pairs/s) and
appends it to <sdir>/summary.csv. An interrupted run resumes where it stopped. Under torchrun
the pairs are sharded over the ranks and rank 0 writes the same files as one process would.
"""
import csv
import os
import sys
import time

from utils import ArgParser, UserError, cli_entry, to_json

SUMMARY_FIELDS = ["dataset", "model", "distance", "robustness", "pct", "n", "srcc", "plcc", "krcc", "plcc_logistic", "pairs_per_s"]


def build_parser():
    p = ArgParser(description=__doc__.split("\n")[1])
    p.add_argument("-dat", "--dataset", required=True, help="layout: pipal, live, tid2013, kadid10k, csv")
    p.add_argument("--root", help="dataset folder (csv: paths are relative to it; default the CSV's folder)")
    p.add_argument("--csv", help="-dat csv: the list (columns ref, dis, mos or dmos)")
    p.add_argument("--higher-is-better", choices=["yes", "no"], help="-dat csv: label direction (default: mos yes, dmos no)")
    p.add_argument("-m", "--model", default="dinov1")
    p.add_argument("-d", "--distance", default="wsd", help="distance, comma list or 'all'")
    p.add_argument("-s", "--saveas", help="name used in the results file names (default: the model)")
    p.add_argument("-sdir", "--savedir", default="results", help="folder for results files (default results/)")
    p.add_argument("-rob", "--robustness", choices=["tra", "sca", "rot"], help="apply a shift/zoom/rotation when loading")
    p.add_argument("-pct", "--pct", type=int, default=1, help="its magnitude (percent, or degrees for rot; default 1)")
    p.add_argument("--kinds", help="sweep: comma list of tra,sca,rot (with --pcts); the clean run is included")
    p.add_argument("--pcts", default="1,2,4,8", help="sweep magnitudes (default 1,2,4,8)")
    p.add_argument("-r", "--resize", type=int, default=None, help="resize both images to N×N first")
    p.add_argument("--weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--model-norm", action="store_true", help="normalise windows with the model's own mean/std (not the published protocol)")
    p.add_argument("--precision", default="published")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default 256 on a GPU, 16 on a CPU)")
    p.add_argument("--workers", type=int, default=None, help="image-decoding processes (default 8 on a GPU, 0 on a CPU)")
    p.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    p.add_argument("--skip-missing", action="store_true", help="score the usable pairs instead of stopping at missing, unreadable or mis-sized images")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.add_argument("--no-progress", action="store_true")
    return p


def variants_of(args):
    """[(robustness kind or '', pct)], the clean run first in a sweep."""
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        try:
            pcts = [int(x) for x in args.pcts.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--pcts must be comma-separated integers, got {args.pcts!r}") from None
        bad = [k for k in kinds if k not in ("tra", "sca", "rot")]
        if bad or not kinds or not pcts:
            raise UserError(f"--kinds takes tra,sca,rot (got {args.kinds!r}) and --pcts at least one integer")
        return [("", 0)] + [(k, p) for k in kinds for p in pcts]
    return [(args.robustness, args.pct)] if args.robustness else [("", 0)]


def results_path(args, dataset, distance, n_distances, variant):
    """The seed's naming: <dataset>_<saveas>.csv for one distance with -s, else
    <dataset>_<saveas or model>_<distance>.csv; _<rob>-<pct> for robustness runs."""
    if args.saveas and n_distances == 1:
        stem = f"{dataset}_{args.saveas}"
    else:
        stem = f"{dataset}_{args.saveas or args.model}_{distance}"
    kind, pct = variant
    return os.path.join(args.savedir, stem + (f"_{kind}-{pct}" if kind else "") + ".csv")


def read_done(path):
    """Rows already in a results file: {(dis, ref): row}; a torn last line is ignored."""
    if not os.path.isfile(path):
        return {}
    done = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                float(row["pred"]), float(row["mos"])
                done[(row["dis"], row["ref"])] = row
            except (KeyError, TypeError, ValueError):
                continue
    return done


class ResultsWriter:
    """Appends finished rows to each (variant, distance) file as they come, flushed per row,
    so Ctrl-C or a crash leaves valid files; `finish_file` rewrites them in dataset order."""

    def __init__(self, paths):
        self.files, self.writers = {}, {}
        for key, path in paths.items():
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fresh = not os.path.isfile(path) or os.path.getsize(path) == 0
            if not fresh:
                with open(path, "rb") as f:  # a run killed mid-line: end the torn line
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
            f = open(path, "a", newline="")
            if fresh:
                f.write("dis,ref,mos,pred\n")
            elif torn:
                f.write("\n")
            self.files[key], self.writers[key] = f, csv.writer(f, lineterminator="\n")

    def write(self, key, dis, ref, mos, pred):
        self.writers[key].writerow([dis, ref, mos, float(pred)])
        self.files[key].flush()

    def close(self):
        for f in self.files.values():
            f.close()


def finish_file(path, order):
    """Rewrite a results file with the current pairs in dataset order (other rows kept after
    them), atomically; returns the rows of the current pairs."""
    done = read_done(path)
    rows = [done[k] for k in order if k in done]
    current = set(order)
    extra = [r for k, r in done.items() if k not in current]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, ["dis", "ref", "mos", "pred"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows + extra)
    os.replace(tmp, path)
    return rows


def append_summary(savedir, rows):
    path = os.path.join(savedir, "summary.csv")
    new = not os.path.isfile(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, SUMMARY_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerows(rows)


def check_images(dataset, skip_missing, resize=None, variants=(("", 0),)):
    """List unusable pairs up front, from image headers only: missing or unreadable files,
    reference and distorted of different sizes, a side under 224 px (also after a shift's
    crop). Stop with one line unless --skip-missing, which scores the other pairs."""
    from PIL import Image

    from utils import pair_problem
    sizes, unreadable = {}, set(dataset.missing())
    for rel in dict.fromkeys(p for r, d, _ in dataset.pairs for p in (r, d)):
        if rel in unreadable:
            continue
        try:
            with Image.open(dataset.path(rel)) as im:
                sizes[rel] = (resize, resize) if resize else im.size  # header only: fast
        except Exception:  # any unreadable file counts as unusable
            unreadable.add(rel)
    shrink = max((p for k, p in variants if k == "tra"), default=0)  # the largest shift crops the most

    def problem(ref, dis):
        if ref in unreadable or dis in unreadable:
            return "missing or unreadable"
        return pair_problem(sizes[ref], sizes[dis], shrink, bool(resize))

    bad = [(r, d, problem(r, d)) for r, d, _ in dataset.pairs]
    bad = [b for b in bad if b[2]]
    if not bad:
        return dataset.pairs
    kinds = sorted({why.split(" (")[0] for _, _, why in bad})
    examples = ", ".join(f"{d} ({why})" for _, d, why in bad[:3])
    msg = f"{len(bad)} of {len(dataset.pairs)} pair(s) unusable under {dataset.root}: {'; '.join(kinds)}; e.g. {examples}"
    if not skip_missing:
        raise UserError(msg + "; pass --skip-missing to score the other pairs")
    dropped = {(r, d) for r, d, _ in bad}
    kept = [p for p in dataset.pairs if (p[0], p[1]) not in dropped]
    sys.stderr.write(f"warning: {msg}; skipping them\n")
    return kept


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    import distributed
    from calc_scores import correlations
    from datasets import load_dataset
    from engine import Scorer
    from robustness import Transform

    dist = distributed.setup()
    hib = None if args.higher_is_better is None else args.higher_is_better == "yes"
    dataset = load_dataset(args.dataset, args.root, csv_file=args.csv, higher_is_better=hib)
    if args.limit is not None:
        dataset.pairs = dataset.pairs[: max(0, args.limit)]
    variants = variants_of(args)
    pairs = check_images(dataset, args.skip_missing, args.resize, variants) if dist.rank == 0 else None
    pairs = dist.broadcast(pairs)
    if not pairs:
        raise UserError(f"no pairs to score in {dataset.root}")
    scorer = Scorer(args.model, args.distance, device=dist.device(args.device), precision=args.precision,
                    weights=args.weights, batch_size=args.batch_size, workers=args.workers, resize=args.resize,
                    model_norm=args.model_norm)
    names = scorer.distances
    paths = {(v, d): results_path(args, dataset.name, d, len(names), variants[v]) for v in range(len(variants)) for d in names}
    order = [(dis, ref) for ref, dis, _ in pairs]
    if dist.rank == 0:  # rows of an interrupted multi-process run are kept, not recomputed
        for p in paths.values():
            distributed.merge_parts(p)
    dist.barrier()
    done = {key: read_done(p) for key, p in paths.items()}
    todo = [(v, i) for v in range(len(variants)) for i, k in enumerate(order) if not all(k in done[(v, d)] for d in names)]
    mine = dist.shard(pairs, todo)  # this rank's (v, i); reference groups stay on one rank
    transforms = [Transform(k, p) if k else None for k, p in variants]

    started = time.perf_counter()
    writer = ResultsWriter(paths if dist.world == 1 else {k: distributed.part_path(p, dist.rank) for k, p in paths.items()})
    progress = None
    if not args.no_progress and dist.rank == 0:
        from tqdm import tqdm
        progress = tqdm(total=len(todo), unit="pair", dynamic_ncols=True, desc=f"{dataset.name} {args.model}",
                        initial=0, disable=None, file=sys.stderr)
    count = 0
    try:
        files = [(dataset.path(r), dataset.path(d)) for r, d, _ in pairs]
        for (v, i), row in scorer.score_files(files, transforms, jobs=sorted(mine)):
            ref, dis, mos = pairs[i]
            for j, d in enumerate(names):
                writer.write((v, d), dis, ref, mos, row[j])
            count += 1
            if progress is not None:
                progress.update(dist.world if dist.world > 1 else 1)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    elapsed = time.perf_counter() - started
    if dist.world > 1:
        count = dist.sum(count)
        if dist.rank == 0:
            for p in paths.values():
                distributed.merge_parts(p)
        dist.barrier()
        if dist.rank != 0:
            return 0

    rate = count / elapsed if count and elapsed > 0 else float("nan")
    summary = []
    for v, (kind, pct) in enumerate(variants):
        for d in names:
            rows = finish_file(paths[(v, d)], order)
            c = correlations([float(r["pred"]) for r in rows], [float(r["mos"]) for r in rows], dataset.higher_better)
            summary.append({"dataset": dataset.name, "model": args.model, "distance": d, "robustness": kind or "none",
                            "pct": pct if kind else 0, **{k: c[k] for k in ("n", "srcc", "plcc", "krcc", "plcc_logistic")},
                            "pairs_per_s": round(rate, 2), "file": paths[(v, d)]})
    append_summary(args.savedir, summary)
    if args.kinds:
        from robustness import write_sweep
        table, png = write_sweep(summary, os.path.join(args.savedir, f"{dataset.name}_{args.saveas or args.model}_sweep"))
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    if args.json:
        print(to_json(summary))
    else:
        print(f"{'distance':8} {'rob':>7} {'n':>6} {'SRCC':>7} {'PLCC':>7} {'KRCC':>7} {'PLCC-log':>8} {'pairs/s':>8}  file")
        for r in summary:
            rob = f"{r['robustness']}-{r['pct']}" if r["robustness"] != "none" else "clean"
            print(f"{r['distance']:8} {rob:>7} {r['n']:>6} {r['srcc']:7.4f} {r['plcc']:7.4f} {r['krcc']:7.4f} "
                  f"{r['plcc_logistic']:8.4f} {r['pairs_per_s']:8.2f}  {r['file']}")
    return 0


if __name__ == "__main__":
    main()
