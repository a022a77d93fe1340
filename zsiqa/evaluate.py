"""The eval command (`zsiqa eval`, run.py): plan a dataset run, check everything that can be
checked before the model loads, score what the results files lack, then finish the files and
summarise them.

A run's sets are one dataset (labelled, or a label-free list) or one label-free set per output
folder (-dat dirs); all sets' pairs go through one engine pass, so a reference shared by
several sets is encoded once. Results files, records, resume and locks: results.py.
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from zsiqa import distributed, plots, results, robustness
from zsiqa.datasets import load_dataset, load_dirs
from zsiqa.distances import DISTANCES, parse_distances
from zsiqa.errors import UserError
from zsiqa.models import get_backbone
from zsiqa.output import to_json
from zsiqa.report import format_table
from zsiqa.scorer import Scorer
from zsiqa.stats import correlations, paired_tests, summarize
from zsiqa.windows import pair_problem

SWEEP_FIELDS = ["distance", "robustness", "pct", "n", "srcc", "plcc", "krcc", "plcc_logistic"]


def variants_of(args):
    """[(robustness kind or '', pct)], the clean run first in a sweep; each checked (robustness.check)."""
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
            robustness.check(kind, pct)
    return variants


def _unreadable_reason(path, error):
    """Why an image file cannot be opened, for the up-front list: missing, too large for
    Pillow's decompression-bomb guard, or not a readable image."""
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
    if args.dataset != "dirs":
        if args.ref_dir or args.dis_dir:
            raise UserError("--ref-dir/--dis-dir go with -dat dirs (score output folders against references)")
        hib = None if args.label_higher_better is None else args.label_higher_better == "yes"
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
    backbone = get_backbone(args.model)
    names = parse_distances(args.distance, backbone)
    if not any(DISTANCES[d].per_layer for d in names):
        able = [d for d in backbone.distances if DISTANCES[d].per_layer]
        raise UserError(f"--per-layer writes per-block distances, which only {', '.join(able) or 'no distance'} "
                        f"of {backbone.name} have; -d has {', '.join(names)}")


def layer_files(args, paths):
    """--per-layer: {((set, variant), distance): X_layers.csv} for the per-layer distances' files."""
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
        done[paths[key]] &= results.done_keys(results.finish(lpath, results.labels_of(plan.sets[s].pairs),
                                                             plan.order(s), blocks))
    return done


def make_scorer(args, device):
    """The Scorer (compiled at once with --compile on; with auto once the jobs are known)."""
    return Scorer(args.model, args.distance, device=device, precision=args.precision, weights=args.weights,
                  batch_size=args.batch_size, workers=args.workers, resize=args.resize, model_norm=args.model_norm,
                  layers=args.layers, compile=args.compile == "on")


@contextlib.contextmanager
def new_folders_undone(folder, leftovers=()):
    """Folders made for `folder` inside the block are removed again when it fails and leaves
    nothing in them but `leftovers` (the run's lock files): a --layers out of range, found once
    the model is loaded, writes nothing."""
    made, probe = [], os.path.abspath(folder)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        made.append(probe)
        probe = os.path.dirname(probe)
    try:
        yield
    except BaseException:
        names = {os.path.abspath(p) for p in leftovers}
        for d in made:  # deepest first
            with contextlib.suppress(OSError):
                inside = [os.path.join(d, n) for n in os.listdir(d)]
                if names.issuperset(inside):
                    for path in inside:
                        os.remove(path)
                    os.rmdir(d)
        raise


class Writers:
    """The run's row writer: its results files (torchrun: part files) and, with --per-layer,
    their per-layer files, keyed ((set, variant), distance) and ('layers', key)."""

    def __init__(self, dist, scorer, plan, paths, layer_paths):
        def target(p):
            return p if dist.world == 1 else results.part_path(p, dist.rank)
        self.scorer, self.layer_keys = scorer, set(layer_paths)
        per_layer = results.Columns(plan.labelled, scorer.blocks)
        files = {**{k: target(p) for k, p in paths.items()},
                 **{("layers", k): target(p) for k, p in layer_paths.items()}}
        columns = {k: per_layer if k[0] == "layers" else results.Columns(plan.labelled) for k in files}
        self.rows = results.RowWriter(files, columns)

    def write(self, group, dis, ref, mos, row, per):
        for j, d in enumerate(self.scorer.distances):
            self.rows.write((group, d), dis, ref, mos, [row[j]])
            if (group, d) in self.layer_keys:
                self.rows.write(("layers", (group, d)), dis, ref, mos, per[0][self.scorer.layer_distances.index(d)])

    def close(self):
        self.rows.close()


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
    transforms = [robustness.Transform(k, p) if k else None for k, p in variants]
    skipped = np.zeros((len(plan.sets), len(variants)), dtype=int)
    files = plan.files()

    def skip(job, message):  # --skip-missing: a pair that cannot be decoded mid-run
        skipped[plan.index[job[1]][0], job[0]] += 1
        sys.stderr.write(f"warning: skipped {files[job[1]][1]}: {message}\n")
    progress = None
    if not args.no_progress and dist.rank == 0:
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
    rows, nonfinite = results.drop_nonfinite(path, rows, lambda r: r[3][0], lambda r: r[0])
    return [(dis, ref, mos, values[0]) for dis, ref, mos, values in rows], nonfinite


def summarise(args, plan, records, paths, stats):
    """Finish every results file (dataset order, current labels, parts merged) and append its
    summary row (correlations and the settings of its record) to summary.csv."""
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
        stem = os.path.join(args.savedir, f"{plan.name}_{args.saveas or args.model}_sweep")
        table = results.write_table(stem + ".csv", SWEEP_FIELDS, summary)
        png = plots.sweep(summary, stem + ".png")
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    return summary


def summarise_unlabelled(args, plan, records, paths, stats):
    """Finish every label-free results file; one row per set, variant and distance: the
    statistics of its scores (stats.summarize) and, among ≥2 sets, the paired test against
    the best set on the references both scored. Rows go to summary_unlabelled.csv; one bar
    chart per variant and distance."""
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
        plots.method_bars(group, chart, title)
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
    (report.format_table), or JSON with --json."""
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


def main(args):
    """Check everything that can be checked before the model loads (arguments, results
    folder, labels, image headers, the lock), then score what the results files lack."""
    with distributed.session() as dist:
        variants = variants_of(args)
        check_per_layer(args)
        plan = dist.from_rank0(lambda: load_plan(args, variants))
        paths, files = results_files(args, plan, variants)
        layer_paths = layer_files(args, paths)
        locks = [results.lock_path(p) for p in paths.values()]
        with new_folders_undone(args.savedir, locks):  # the lock's folder goes again if the Scorer refuses (--layers)
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
    if args.compile == "auto":
        scorer.compile_if_it_pays(len(todo))
    stats = score(args, dist, scorer, plan, variants, paths, todo, layer_paths)
    if dist.rank != 0:
        return
    for key, lpath in layer_paths.items():
        s = key[0][0]
        results.finish(lpath, results.labels_of(plan.sets[s].pairs), plan.order(s), scorer.blocks)
    if plan.labelled:
        report(args, summarise(args, plan, records, paths, stats))
    else:
        report_unlabelled(args, summarise_unlabelled(args, plan, records, paths, stats))
    return 0
