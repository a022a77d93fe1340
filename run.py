#!/usr/bin/env python3
"""Evaluate a backbone and distances on an IQA dataset: per-pair results files, correlations.

  python run.py -dat live --root /data/LIVE -m dinov1 -d all
  python run.py -dat pipal --root /data/PIPAL -m clip_vitb32 -d l2 -rob tra -pct 1
  python run.py -dat tid2013 --root /data/TID2013 -m dinov1 -d wsd --kinds tra,sca,rot --pcts 1,2,4,8
  python run.py -dat dirs --ref-dir GT --dis-dir OUT_A --dis-dir OUT_B -m dinov1 -d wsd

Writes <sdir>/<dataset>_<name>[_<rob>-<pct>].csv (header dis,ref,mos,pred; paths relative to
--root) with its record of settings beside it (.json), prints one summary row per distance
(SRCC, PLCC, KRCC, logistic PLCC, pairs/s) and appends it to <sdir>/summary.csv. An
interrupted run resumes where it stopped when the settings match (results.py); a run locks
its files. Under torchrun the pairs are sharded over the ranks and rank 0 writes the same
files as one process would.

Without labels (-dat dirs: output folders paired with a reference folder by file name, see
methods.py; or -dat csv with only ref,dis columns) every set (output folder, or the list) gets
<sdir>/<set>_<name>_<distance>[_<rob>-<pct>].csv (header dis,ref,pred; paths relative to their
folders), a table ranking the sets per distance (mean, bootstrap CI, Wilcoxon against the best)
appended to <sdir>/summary_unlabelled.csv, and a bar chart <sdir>/<name>_<distance>[_<rob>-<pct>]_methods.png.
All sets' pairs are scored in one pass, so a reference shared by several sets is encoded once.

--layers 1-6,9 compares only those blocks (1-based; recorded, so a resume with other blocks is
refused). --per-layer also writes, from the same pass, X_layers.csv beside each l2/cos results
file X.csv: the per-block distances (header dis,ref[,mos],block_<k>…), summing to X.csv's pred;
with it a pair counts as done only when both files hold it. --compile auto compiles the
backbone on CUDA for runs of at least 200,000 jobs to score (compilation pays from about there).
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import results
from utils import ArgParser, UserError, cli_entry, int_at_least, to_json

# H200 bench (dinov1 bf16, two runs): ~18 s of compilation; eager 1,184–1,218 vs compiled 1,287–1,343
# pairs/s (4–13 %), so it pays from about 180,000–400,000 PIPAL-size pairs (a PIPAL robustness sweep)
COMPILE_MIN_JOBS = 200_000


def build_parser():
    p = ArgParser(__doc__)
    p.add_argument("-dat", "--dataset", required=True, help="layout: pipal, live, tid2013, kadid10k, csv, dirs")
    p.add_argument("--root", help="dataset folder (csv: paths are relative to it; default the CSV's folder)")
    p.add_argument("--csv", help="-dat csv: the list (columns ref, dis, mos or dmos)")
    p.add_argument("--higher-is-better", choices=["yes", "no"],
                   help="-dat csv: label direction (default: mos yes, dmos no)")
    p.add_argument("--ref-dir", help="-dat dirs: the reference (ground-truth) folder")
    p.add_argument("--dis-dir", action="append",
                   help="-dat dirs: an output folder (one method) to score against --ref-dir; repeat per method")
    p.add_argument("-m", "--model", default="dinov1", help="backbone (default dinov1)")
    p.add_argument("-d", "--distance", default="wsd", help="distance, comma list or 'all' (default wsd)")
    p.add_argument("-s", "--saveas", help="name used in the results file names (default: the model)")
    p.add_argument("-sdir", "--savedir", default="results", help="folder for results files (default results/)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard earlier rows of the results files instead of resuming")
    p.add_argument("-rob", "--robustness", choices=["tra", "sca", "rot"],
                   help="apply a shift/zoom/rotation when loading")
    p.add_argument("-pct", "--pct", type=int, default=None,
                   help="its magnitude (percent, or degrees for rot; default 1)")
    p.add_argument("--kinds", help="sweep: comma list of tra,sca,rot (with --pcts); the clean run is included")
    p.add_argument("--pcts", default=None, help="sweep magnitudes (default 1,2,4,8)")
    p.add_argument("-r", "--resize", type=int_at_least(224, " (the window size)"), default=None,
                   help="resize both images to N×N first (N ≥ 224)")
    p.add_argument("--weights", help="checkpoint file (default: $ZSIQA_WEIGHTS_DIR, library caches, download)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--model-norm", action="store_true",
                   help="normalise windows with the model's own mean/std (not the published protocol)")
    p.add_argument("--precision", default="published",
                   help="published (default: as the paper ran), fp32, bf16 or fp16")
    p.add_argument("--batch-size", type=int_at_least(1), default=None,
                   help="windows per forward pass (default 256 on a GPU, 16 on a CPU)")
    p.add_argument("--workers", type=int_at_least(0), default=None,
                   help="image-decoding processes (default 8 on a GPU, 0 on a CPU)")
    p.add_argument("--limit", type=int_at_least(1), default=None,
                   help="only the first N pairs (-dat dirs: of each output folder)")
    p.add_argument("--skip-missing", action="store_true",
                   help="score the usable pairs instead of stopping at missing, unreadable or mis-sized images")
    p.add_argument("--layers", help="compare only these blocks (1-based, e.g. 1-6,9; default all)")
    p.add_argument("--per-layer", action="store_true",
                   help="also write X_layers.csv beside each l2/cos results file X.csv: per-block distances")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help=f"compile the backbone (auto: on CUDA with ≥ {COMPILE_MIN_JOBS} pairs to score)")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def variants_of(args):
    """[(robustness kind or '', pct)], the clean run first in a sweep; each checked (robustness.check)."""
    from robustness import check
    if args.pct is not None and not args.robustness:
        raise UserError("-pct is the magnitude of -rob tra|sca|rot: give -rob too (a sweep takes --kinds and --pcts)")
    if args.pcts is not None and not args.kinds:
        raise UserError("--pcts is the magnitudes of a --kinds sweep: give --kinds too")
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        spec = args.pcts or "1,2,4,8"
        try:
            pcts = [int(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise UserError(f"--pcts must be comma-separated integers, got {spec!r}") from None
        bad = [k for k in kinds if k not in ("tra", "sca", "rot")]
        if bad or not kinds or not pcts:
            raise UserError(f"--kinds takes tra,sca,rot (got {args.kinds!r}) and --pcts at least one integer")
        variants = [("", 0)] + [(k, p) for k in kinds for p in pcts]
    else:
        variants = [(args.robustness, 1 if args.pct is None else args.pct)] if args.robustness else [("", 0)]
    for kind, pct in variants:
        if kind:
            check(kind, pct)
    return variants


def _unreadable_reason(path, error):
    """Why an image file cannot be opened, for the up-front list: missing, too large for
    Pillow's decompression-bomb guard, or not a readable image."""
    from PIL import Image
    if not os.path.isfile(path):
        return "missing"
    if isinstance(error, Image.DecompressionBombError):
        return f"too large (over Pillow's decompression-bomb limit of {2 * Image.MAX_IMAGE_PIXELS:,} px)"
    return "unreadable (not an image Pillow can open)"


def check_images(dataset, pairs, skip_missing, resize=None, variants=(("", 0),)):
    """List unusable pairs up front, from image headers only: missing or unreadable files,
    reference and distorted of different sizes, a side under 224 px (also after a shift's
    crop). Stop with one line unless --skip-missing, which scores the other pairs.

    Returns:
        the usable pairs [(ref, dis, label)], in order.
    """
    from PIL import Image

    from utils import pair_problem
    sizes, unreadable = {}, {}
    for path in dict.fromkeys(p for r, d, _ in pairs for p in (dataset.ref_path(r), dataset.dis_path(d))):
        try:
            with Image.open(path) as im:
                sizes[path] = (resize, resize) if resize else im.size  # header only: fast
        except Exception as e:  # any missing or unreadable file counts as unusable
            unreadable[path] = _unreadable_reason(path, e)
    shrink = max((p for k, p in variants if k == "tra"), default=0)  # the largest shift crops the most

    def problem(ref, dis):
        ref, dis = dataset.ref_path(ref), dataset.dis_path(dis)
        if ref in unreadable or dis in unreadable:
            return unreadable.get(ref) or unreadable[dis]
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


@dataclass
class Plan:
    """What a run scores: its sets (datasets.Dataset: a labelled dataset, a label-free list, or
    one per output folder of -dat dirs), each set's usable pairs [(ref, dis, label)] and the
    number skipped up front. Pair i of the run (a job's index) is `index[i]` = (set, k)."""
    sets: list
    pairs: list
    skipped: list

    def __post_init__(self):
        self.index = [(s, k) for s, pairs in enumerate(self.pairs) for k in range(len(pairs))]

    @property
    def labelled(self):
        return self.sets[0].labelled

    @property
    def name(self):
        return self.sets[0].name if len(self.sets) == 1 else "dirs"

    def order(self, s):
        """Set s's pairs to score as results-file keys [(dis, ref)]."""
        return [(dis, ref) for ref, dis, _ in self.pairs[s]]

    def files(self):
        """Every pair of the run as paths on disk [(ref, dis)]: one list for one engine call."""
        return [(self.sets[s].ref_path(self.pairs[s][k][0]), self.sets[s].dis_path(self.pairs[s][k][1]))
                for s, k in self.index]


def load_sets(args):
    """The run's sets: one dataset (labelled, or a label-free list), or -dat dirs' folders."""
    from datasets import load_dataset, load_dirs
    if args.dataset != "dirs":
        if args.ref_dir or args.dis_dir:
            raise UserError("--ref-dir/--dis-dir go with -dat dirs (score output folders against references)")
        hib = None if args.higher_is_better is None else args.higher_is_better == "yes"
        return [load_dataset(args.dataset, args.root, csv_file=args.csv, higher_is_better=hib)]
    if not args.ref_dir or not args.dis_dir:
        raise UserError("-dat dirs needs --ref-dir GT and --dis-dir OUT (the flag once per output folder)")
    if args.root or args.csv:
        raise UserError("-dat dirs takes --ref-dir and --dis-dir, not --root or --csv")
    return load_dirs(args.ref_dir, args.dis_dir, args.skip_missing, lambda line: sys.stderr.write(line + "\n"))


def load_plan(args, variants):
    """The sets and the pairs to score: the first --limit of each set, the usable ones; the
    results folder is checked writable first, before any work."""
    results.check_writable(args.savedir)
    sets, pairs, skipped = [], [], []
    for dataset in load_sets(args):
        limited = dataset.pairs[: args.limit]
        results.check_names(dataset, limited)
        usable = check_images(dataset, limited, args.skip_missing, args.resize, variants)
        if not usable:
            sys.stderr.write(f"warning: no pairs to score in {dataset.root}; left out\n")
            continue
        sets.append(dataset)
        pairs.append(usable)
        skipped.append(len(limited) - len(usable))
    if not sets:
        raise UserError("no pairs to score")
    return Plan(sets, pairs, skipped)


def results_files(args, plan, variants):
    """{((set, variant index), distance): results path} and, per set, {path: (distance, variant,
    pred higher better)}; distances checked against the backbone (without loading it)."""
    from distances import DISTANCES
    from engine import parse_distances
    from models import get_backbone
    names = parse_distances(args.distance, get_backbone(args.model))
    paths, files = {}, []
    for s, dataset in enumerate(plan.sets):
        files.append({})
        for v, variant in enumerate(variants):
            for d in names:  # label-free sets: the distance always in the name (n_distances 0)
                path = results.results_path(args.savedir, dataset.name, args.model, d, variant, args.saveas,
                                            len(names) if dataset.labelled else 0)
                paths[((s, v), d)] = path
                files[s][path] = (d, variant, not DISTANCES[d].lower_better)
    results.check_utf8(paths.values(), "results file", "choose another -sdir or -s")
    return paths, files


def check_per_layer(args):
    """--per-layer needs a per-layer distance (l2, cos) among -d: checked before the model loads."""
    if not args.per_layer:
        return
    from distances import DISTANCES
    from engine import parse_distances
    from models import get_backbone
    backbone = get_backbone(args.model)
    names = parse_distances(args.distance, backbone)
    if not any(DISTANCES[d].per_layer for d in names):
        able = [d for d in backbone.distances if DISTANCES[d].per_layer]
        raise UserError(f"--per-layer writes per-block distances, which only {', '.join(able) or 'no distance'} "
                        f"of {backbone.name} have; -d has {', '.join(names)}")


def layer_files(args, paths):
    """--per-layer: {((set, variant), distance): X_layers.csv} for the per-layer distances' files."""
    from distances import DISTANCES
    if not args.per_layer:
        return {}
    return {key: results.layers_path(path) for key, path in paths.items() if DISTANCES[key[1]].per_layer}


def prepare(args, plan, records, paths, layer_paths, blocks):
    """Make every set's results files ready (results.prepare_many); returns {path: done keys}.
    A results file started afresh loses its old per-layer file; with --per-layer a pair of an
    l2/cos file counts as done only when its X_layers.csv holds it too."""
    fresh = [p for p in paths.values() if args.overwrite or not results.exists(p)]
    done = results.prepare_many([(records[s], results.labels_of(dataset.pairs), plan.order(s))
                                 for s, dataset in enumerate(plan.sets)], args.overwrite)
    for path in fresh:
        results.remove_layers(path)
    for key, lpath in layer_paths.items():
        s = key[0][0]
        done[paths[key]] &= results.finish_layers(lpath, results.labels_of(plan.sets[s].pairs), plan.order(s),
                                                  blocks)
    return done


def make_scorer(args, device):
    """The Scorer (compiled at once with --compile on; see `compile_if_it_pays` for auto)."""
    from engine import Scorer
    return Scorer(args.model, args.distance, device=device, precision=args.precision, weights=args.weights,
                  batch_size=args.batch_size, workers=args.workers, resize=args.resize, model_norm=args.model_norm,
                  layers=args.layers, compile=args.compile == "on")


def compile_if_it_pays(args, scorer, todo):
    """--compile auto: compile the backbone on CUDA when at least COMPILE_MIN_JOBS jobs are to score."""
    if args.compile == "auto" and scorer.device.type == "cuda" and len(todo) >= COMPILE_MIN_JOBS:
        scorer.compile_backbone()


@contextlib.contextmanager
def new_folders_undone(folder):
    """Folders made for `folder` inside the block are removed again when it fails and leaves
    them empty (a --layers out of range, found once the model is loaded, writes nothing)."""
    made, probe = [], os.path.abspath(folder)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        made.append(probe)
        probe = os.path.dirname(probe)
    try:
        yield
    except BaseException:
        for d in made:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


class Writers:
    """The run's results writers (torchrun: part files) and, with --per-layer, its per-layer ones."""

    def __init__(self, dist, scorer, plan, paths, layer_paths):
        def target(p):
            return p if dist.world == 1 else results.part_path(p, dist.rank)
        self.scorer, self.layer_keys = scorer, set(layer_paths)
        self.rows = results.ResultsWriter({k: target(p) for k, p in paths.items()}, plan.labelled)
        try:
            self.layers = results.LayersWriter({k: target(p) for k, p in layer_paths.items()}, scorer.blocks,
                                               plan.labelled)
        except BaseException:
            self.rows.close()
            raise

    def write(self, group, dis, ref, mos, row, per):
        for j, d in enumerate(self.scorer.distances):
            self.rows.write((group, d), dis, ref, mos, row[j])
            if (group, d) in self.layer_keys:
                self.layers.write((group, d), dis, ref, mos, per[0][self.scorer.layer_distances.index(d)])

    def close(self):
        self.rows.close()
        self.layers.close()


def todo_jobs(done, paths, plan):
    """The (variant, pair index) jobs some distance's file still lacks, variant-major."""
    groups = sorted({g for g, _ in paths})
    complete = {g: set.intersection(*(done[p] for (h, _), p in paths.items() if h == g)) for g in groups}
    keys = [(plan.pairs[s][k][1], plan.pairs[s][k][0]) for s, k in plan.index]
    return [(v, i) for v in sorted({v for _, v in groups}) for i, (s, _) in enumerate(plan.index)
            if keys[i] not in complete[(s, v)]]


def score(args, dist, scorer, plan, variants, paths, todo, layer_paths=None):
    """Score this rank's share of the jobs, appending rows to the results (torchrun: part)
    files as they finish. Returns (pairs scored, [[pairs skipped mid-run per variant] per set],
    seconds), summed over the ranks."""
    from robustness import Transform
    transforms = [Transform(k, p) if k else None for k, p in variants]
    skipped = np.zeros((len(plan.sets), len(variants)), dtype=int)
    files = plan.files()

    def skip(job, message):  # --skip-missing: a pair that cannot be decoded mid-run
        skipped[plan.index[job[1]][0], job[0]] += 1
        sys.stderr.write(f"warning: skipped {files[job[1]][1]}: {message}\n")
    progress = None
    if not args.no_progress and dist.rank == 0:
        from tqdm import tqdm
        progress = tqdm(total=len(todo), unit="pair", dynamic_ncols=True, desc=f"{plan.name} {args.model}",
                        disable=None, file=sys.stderr)
    count, started = 0, time.perf_counter()
    writer = Writers(dist, scorer, plan, paths, layer_paths or {})
    extra = {**({"on_error": skip} if args.skip_missing else {}), **({"per_layer": True} if layer_paths else {})}
    try:
        for (v, i), row, *per in scorer.score_files(files, transforms, jobs=dist.shard(files, todo), **extra):
            s, k = plan.index[i]
            ref, dis, mos = plan.pairs[s][k]
            writer.write((s, v), dis, ref, mos, row, per)
            count += 1
            if progress is not None:
                progress.update(dist.world)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    return dist.sum(count), dist.sum(skipped), time.perf_counter() - started


def _rate(count, elapsed):
    return round(count / elapsed, 2) if count and elapsed > 0 else float("nan")


def _finished_rows(path, dataset, order):
    """Finish a results file (results.finish); its rows whose score is a number, and how many
    were NaN or inf (kept in the file, left out of the statistics, warned about)."""
    rows = results.finish(path, results.labels_of(dataset.pairs), order)
    return results.drop_nonfinite(path, rows, lambda r: r[3], lambda r: r[0])


def summarise(args, plan, records, paths, stats):
    """Finish every results file (dataset order, current labels, parts merged) and append its
    summary row (correlations and the settings of its record) to summary.csv."""
    from calc_scores import correlations
    count, skipped, elapsed = stats
    summary = []
    for ((s, v), _d), path in paths.items():
        dataset, rec = plan.sets[s], records[path]
        rows, nonfinite = _finished_rows(path, dataset, plan.order(s))
        c = correlations([r[3] for r in rows], [r[2] for r in rows], dataset.higher_better, rec["pred_higher_better"])
        summary.append({**rec, **c, "n_skipped": int(plan.skipped[s] + skipped[s, v] + nonfinite),
                        "pairs_per_s": _rate(count, elapsed), "file": path})
    results.append_summary(args.savedir, summary)
    if args.kinds:
        from robustness import write_sweep
        table, png = write_sweep(summary, os.path.join(args.savedir,
                                                       f"{plan.name}_{args.saveas or args.model}_sweep"))
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    return summary


def summarise_unlabelled(args, plan, records, paths, stats):
    """Finish every label-free results file; one row per set, variant and distance: the
    statistics of its scores (methods.summarize) and, among ≥2 sets, the paired test against
    the best set on the references both scored. Rows go to summary_unlabelled.csv; one bar
    chart per variant and distance."""
    from methods import bar_chart, paired_tests, summarize
    count, skipped, elapsed = stats
    rows, scores = [], {}
    for ((s, v), d), path in paths.items():
        dataset, rec = plan.sets[s], records[path]
        got, nonfinite = _finished_rows(path, dataset, plan.order(s))
        scores.setdefault((v, d), {})[dataset.name] = {ref: pred for _, ref, _, pred in got}
        stat = summarize([pred for *_, pred in got])
        rows.append({"set": dataset.name, **rec, **stat, "ci95_low": stat["ci95"][0], "ci95_high": stat["ci95"][1],
                     "lower_better": not rec["pred_higher_better"], "vs": None, "n_common": None, "p_value": None,
                     "wins": None, "losses": None, "n_skipped": int(plan.skipped[s] + skipped[s, v] + nonfinite),
                     "pairs_per_s": _rate(count, elapsed), "file": path})
    keys = [(v, d) for ((_, v), d) in paths]
    lower = {key: row["lower_better"] for key, row in zip(keys, rows)}
    tests = {key: paired_tests(per_set, lower[key]) for key, per_set in scores.items() if len(per_set) > 1}
    for key, row in zip(keys, rows):
        row.update(tests.get(key, {}).get(row["set"], {}))
    results.append_summary(args.savedir, rows, "summary_unlabelled", results.UNLABELLED_FIELDS)
    for key in scores:
        group = [row for k, row in zip(keys, rows) if k == key]
        suffix = f"_{group[0]['robustness']}-{group[0]['pct']}" if group[0]["robustness"] != "none" else ""
        chart = os.path.join(args.savedir, f"{args.saveas or args.model}_{key[1]}{suffix}_methods.png")
        title = f"{args.saveas or args.model}, {key[1]}{suffix.replace('_', ', ')}: mean per set, 95% CI"
        bar_chart(group, chart, title)
        for row in group:
            row["chart"] = chart
    return rows


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


def report_unlabelled(args, rows):
    """Print the label-free rows: per variant, one table per distance ranking the sets
    (methods.format_table), or JSON with --json."""
    from methods import format_table
    if args.json:
        print(to_json(rows))
        return
    variants = dict.fromkeys((r["robustness"], r["pct"]) for r in rows)
    for kind, pct in variants:
        if len(variants) > 1 or kind != "none":
            print(f"[{'clean' if kind == 'none' else f'{kind}-{pct}'}]")
        for d in dict.fromkeys(r["distance"] for r in rows):
            group = [r for r in rows if r["distance"] == d and (r["robustness"], r["pct"]) == (kind, pct)]
            print(format_table(group, group[0]["lower_better"]))
    for r in rows:
        if r["n_skipped"]:
            print(f"{r['set']}, {r['distance']}: {r['n_skipped']} pair(s) skipped")
    print(f"{rows[0]['pairs_per_s']} pairs/s; per-pair files in {args.savedir}; summary appended to "
          f"{os.path.join(args.savedir, 'summary_unlabelled.csv')}; charts {rows[0]['chart']}"
          + (" …" if len({r['chart'] for r in rows}) > 1 else ""))


@cli_entry
def main(argv=None):
    """Check everything that can be checked before the model loads (arguments, results
    folder, labels, image headers, the lock), then score what the results files lack."""
    args = build_parser().parse_args(argv)
    import distributed
    with distributed.session() as dist:
        variants = variants_of(args)
        check_per_layer(args)
        plan = dist.from_rank0(lambda: load_plan(args, variants))
        paths, files = results_files(args, plan, variants)
        layer_paths = layer_files(args, paths)
        with new_folders_undone(args.savedir):  # the lock's folder goes again if the Scorer refuses (--layers)
            lock = dist.from_rank0(lambda: results.Lock(paths.values()), share=False)
            with lock or contextlib.nullcontext():
                scorer = make_scorer(args, dist.device(args.device))
                run_scoring(args, dist, scorer, plan, variants, paths, files, layer_paths)
    return 0


def run_scoring(args, dist, scorer, plan, variants, paths, files, layer_paths):
    """Records, resume, scoring, then (rank 0) the finished files and the summary."""
    per_set = [results.make_records(dataset, scorer.settings, files[s]) for s, dataset in enumerate(plan.sets)]
    records = {path: rec for recs in per_set for path, rec in recs.items()}
    todo = dist.from_rank0(lambda: todo_jobs(prepare(args, plan, per_set, paths, layer_paths, scorer.blocks),
                                             paths, plan))
    compile_if_it_pays(args, scorer, todo)
    stats = score(args, dist, scorer, plan, variants, paths, todo, layer_paths)
    if dist.rank != 0:
        return
    for key, lpath in layer_paths.items():
        s = key[0][0]
        results.finish_layers(lpath, results.labels_of(plan.sets[s].pairs), plan.order(s), scorer.blocks)
    if plan.labelled:
        report(args, summarise(args, plan, records, paths, stats))
    else:
        report_unlabelled(args, summarise_unlabelled(args, plan, records, paths, stats))
    return 0


if __name__ == "__main__":
    main()
