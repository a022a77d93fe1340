"""The eval command (`zsiqa eval`, run.py): plan a dataset run, check everything that can be
checked before the model loads, score what the results files lack, then finish the files and
summarise them.

A run's sets are one dataset (labelled, or a label-free list) or one label-free set per output
folder (-dat dirs); all sets' pairs go through one engine pass, so a reference shared by
several sets is encoded once. Results files, records, resume and locks: results.py.
"""
import collections
import contextlib
import datetime
import hashlib
import os
import re
import secrets
import sys
import time
import unicodedata
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from zsiqa import distributed, plots, results, robustness
from zsiqa.datasets import load_dataset, load_dirs
from zsiqa.distances import DISTANCES, parse_distances
from zsiqa.errors import UserError, warn_line, writing
from zsiqa.images import open_image, pair_problems, pil_to_tensor, to_float
from zsiqa.maps import SPATIAL
from zsiqa.models import get_backbone
from zsiqa.output import to_json
from zsiqa.report import REPORT_FILES, Comparison, Worst, format_table, ranked, shown, significance_mark, write_report
from zsiqa.scorer import Scorer
from zsiqa.stats import compare_methods, correlations

SWEEP_FIELDS = ["distance", "robustness", "pct", "n", "srcc", "plcc", "krcc", "plcc_logistic"]


def variants_of(args):
    """[(robustness kind or '', pct)], the clean run first in a sweep; each checked (robustness.check).
    A transform is chosen one way: -rob/-pct, or a --kinds/--pcts sweep, each kind and magnitude once."""
    if args.pct is not None and not args.robustness:
        raise UserError("-pct is the magnitude of -rob tra|sca|rot: give -rob too (a sweep takes --kinds and --pcts)")
    if args.pcts is not None and not args.kinds:
        raise UserError("--pcts is the magnitudes of a --kinds sweep: give --kinds too")
    if args.kinds and args.robustness:
        raise UserError("-rob/-pct choose one transform and --kinds/--pcts a sweep: give one of the two")
    if not args.kinds:
        variants = [(args.robustness, 1 if args.pct is None else args.pct)] if args.robustness else [("", 0)]
    else:
        kinds = _listed("--kinds", args.kinds, str)
        pcts = _listed("--pcts", args.pcts or "1,2,4,8", int)
        bad = [k for k in kinds if k not in robustness.TRANSFORMS]
        if bad or not kinds or not pcts:
            raise UserError(f"--kinds takes {','.join(robustness.TRANSFORMS)} (got {args.kinds!r}) and --pcts at least "
                            "one integer")
        variants = [("", 0)] + [(k, p) for k in kinds for p in pcts]
    for kind, pct in variants:
        if kind:
            robustness.check(kind, pct)
    return variants


def _listed(flag, spec, kind):
    """A comma list of a flag's values, each of `kind` and given once."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    try:
        values = [kind(x) if kind is str or len(x.lstrip("+-")) <= 18 else None for x in items]
    except ValueError:
        values = [None]
    if None in values:
        raise UserError(f"{flag} must be comma-separated integers, got {spec[:40]!r}")
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise UserError(f"{flag} lists {', '.join(twice)} more than once")
    return values


def check_images(dataset, pairs, skip_missing, resize=None, variants=(("", 0),)):
    """List unusable pairs up front, from image headers only: missing or unreadable files,
    reference and distorted of different sizes, a side under 224 px (also after a shift's
    crop). Stop with one line unless --skip-missing, which scores the other pairs.

    Returns:
        the usable pairs [(ref, dis, label)], in order.
    """
    shrink = max((p for k, p in variants if k == "tra"), default=0)  # the largest shift crops the most
    why = [reason for reason, _ in pair_problems([(dataset.ref_path(r), dataset.dis_path(d)) for r, d, _ in pairs],
                                                 resize, shrink, warn=warn_line)]
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
    stamps: list  # per set, what each image is (results.image_stamps): rows of changed images are scored again

    def __post_init__(self):
        self.index = [(s, k) for s, pairs in enumerate(self.pairs) for k in range(len(pairs))]

    @property
    def labelled(self):
        return self.sets[0].labelled

    @property
    def name(self):
        return self.sets[0].name if len(self.sets) == 1 else "dirs"

    def image_key(self, s):
        """How set s names an image in comparisons: by its reference where each reference has one
        output (output folders: so that methods' outputs of one reference pair up), else by the
        distorted image (a label-free list with several outputs per reference)."""
        refs = [ref for ref, _, _ in self.pairs[s]]
        return (lambda dis, ref: ref) if len(set(refs)) == len(refs) else (lambda dis, ref: dis)

    def order(self, s):
        """Set s's pairs to score as results-file keys [(dis, ref)]."""
        return [(dis, ref) for ref, dis, _ in self.pairs[s]]

    def files(self):
        """Every pair of the run as paths on disk [(dis, ref)]: one list for one engine call."""
        return [(self.sets[s].dis_path(self.pairs[s][k][1]), self.sets[s].ref_path(self.pairs[s][k][0]))
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
    return load_dirs(args.ref_dir, args.dis_dir, args.skip_missing, lambda line: sys.stderr.write(line + "\n"),
                     skip=[args.savedir])


def load_plan(args, variants):
    """The sets and the pairs to score: the first --limit of each set, the usable ones; the
    results folder is checked writable first, before any work."""
    results.check_writable(args.savedir)
    sets, pairs, skipped = [], [], []
    for dataset in load_sets(args):
        limited = dataset.pairs[: args.limit]
        results.check_names(dataset, limited)
        usable = check_images(dataset, limited, args.skip_missing, args.resize, variants)
        if not usable:  # kept: a method none of whose outputs can be read is ranked last, not dropped
            sys.stderr.write(f"warning: no pairs to score in {dataset.root}\n")
        sets.append(dataset)
        pairs.append(usable)
        skipped.append(len(limited) - len(usable))
    if not any(pairs):
        raise UserError("no pairs to score")
    return Plan(sets, pairs, skipped, [results.image_stamps(d, d.pairs) for d in sets])


def check_outputs(args, plan, variants):
    """--report and --maps N compare methods without labels; the report folder must be writable
    (both checked before the model loads)."""
    if (args.report or args.worst_maps) and plan.labelled:
        raise UserError("--report and --maps N compare methods scored without labels (-dat dirs, or a -dat csv list of "
                        "ref,dis): for a labelled dataset use calc_scores.py")
    if args.report_worst is not None and not args.report:
        raise UserError("--report-worst K is the number of worst images in --report DIR: give --report too")
    if args.report:
        results.check_writable(args.report)
        taken = [p for p in report_paths(args, variants) if os.path.isdir(p)]
        if taken:
            raise UserError(f"cannot write the report: {taken[0]} is a folder")


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
    results.check_file_names(paths.values())
    check_output_names(args, plan, variants, names, paths)
    return paths, files


def check_output_names(args, plan, variants, names, paths):
    """Every name the run writes, checked before any work (results.check_lengths: no name over
    NAME_MAX, no path over PATH_MAX): the results files with their records, locks and per-layer
    files, the charts, the report's files and the --maps folders and files (`map_folders`, which
    also refuses images whose folders one file system could not tell apart)."""
    derived = [(p, results.record_path(p), results.lock_path(p)) for p in paths.values()]
    if args.per_layer:
        derived += [(results.layers_path(p), results.lock_path(results.layers_path(p))) for p in paths.values()]
    results.check_lengths([p for group in derived for p in group], "results file",
                          "choose a shorter -sdir, -s or method name")
    outputs = [] if plan.labelled else [chart_path(args, plan, v, d) for v in variants for d in names]
    if args.kinds:
        stem = os.path.join(args.savedir, f"{plan.name}_{args.saveas or args.model}_sweep")
        outputs += [stem + ".csv", stem + ".png"]
    if args.report:
        outputs += report_paths(args, variants) + [os.path.join(args.report, REPORT_LOCK)]
    for s, dataset in enumerate(plan.sets):
        folders = map_folders(plan, s) if args.worst_maps else {}
        longest = max(folders.values(), key=lambda n: len(n.encode("utf-8")), default=None)
        outputs += [os.path.join(maps_root(args, dataset, v), longest, f"{d}.{ext}")
                    for v in variants for d in names for ext in ("npy", "png")] if longest else []
    results.check_lengths(outputs, "output", "choose a shorter -sdir, -s, --report or method name")


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


def prepare(args, plan, scorer, files, paths, layer_paths):
    """The records of every set's results files (with the images' stamps, kept in the results
    folder's store) and the files made ready for them (results.prepare).

    Returns:
        ({path: record}, {path: (dis, ref) it holds}) for every results and per-layer file.
    """
    per_set = [results.make_records(dataset, scorer.settings, files[s], results.save_stamps(args.savedir, stamps))
               for s, (dataset, stamps) in enumerate(zip(plan.sets, plan.stamps, strict=True))]
    layers = {paths[key]: (lpath, scorer.blocks) for key, lpath in layer_paths.items()}
    sets = [(per_set[s], results.labels_of(dataset.pairs), plan.order(s), plan.stamps[s])
            for s, dataset in enumerate(plan.sets)]
    done = results.prepare(sets, args.overwrite, layers, warn=lambda line: sys.stderr.write(line + "\n"))
    return {path: rec for recs in per_set for path, rec in recs.items()}, done


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
    their per-layer files, keyed ((set, variant), distance) and ('layers', key). A file gets
    only the pairs it lacks."""

    def __init__(self, dist, scorer, plan, files, done):
        def target(p):
            return p if dist.world == 1 else results.part_path(p, dist.rank)
        self.scorer = scorer
        per_layer = results.Columns(plan.labelled, scorer.blocks)
        columns = {k: per_layer if k[0] == "layers" else results.Columns(plan.labelled) for k in files}
        self.rows = results.RowWriter({k: target(p) for k, p in files.items()}, columns,
                                      held={k: done[p] for k, p in files.items()})

    def write(self, group, dis, ref, mos, row, per):
        for j, d in enumerate(self.scorer.distances):
            self.rows.write((group, d), dis, ref, mos, [row[j]])
            if ("layers", (group, d)) in self.rows.paths:
                self.rows.write(("layers", (group, d)), dis, ref, mos, per[0][self.scorer.layer_distances.index(d)])

    def close(self):
        self.rows.close()
        for path in self.rows.replaced:
            sys.stderr.write(f"warning: {path} was replaced, removed or truncated during the run; this run's rows "
                             "were written to the file now there\n")


def run_files(paths, layer_paths):
    """Every file a run writes, keyed as Writers keys them: results files, then per-layer files."""
    return {**paths, **{("layers", key): lpath for key, lpath in layer_paths.items()}}


def _group(key):
    """The (set, variant) of a Writers key."""
    return key[1][0] if key[0] == "layers" else key[0]


def todo_jobs(done, files, plan):
    """The (variant, pair index) jobs some file of their set and variant still lacks, variant-major."""
    groups = sorted({_group(key) for key in files})
    complete = {g: set.intersection(*(done[p] for k, p in files.items() if _group(k) == g)) for g in groups}
    keys = [(plan.pairs[s][k][1], plan.pairs[s][k][0]) for s, k in plan.index]
    return [(v, i) for v in sorted({v for _, v in groups}) for i, (s, _) in enumerate(plan.index)
            if keys[i] not in complete[(s, v)]]


@dataclass
class Scored:
    """What a run's scoring did, over all ranks: pairs scored, the (dis, ref) skipped mid-run
    per (set, variant) (undecodable with --skip-missing), the seconds it took and when it ended
    (time.perf_counter)."""
    count: int
    skipped: dict
    seconds: float
    ended: float

    def n_skipped(self, group):
        return len(self.skipped.get(group, ()))


def score(args, dist, scorer, plan, variants, files, done, todo):
    """Score this rank's share of the jobs, appending rows to the results (torchrun: part)
    files as they finish. Returns what was done (Scored), summed over the ranks."""
    transforms = [robustness.Transform(k, p) if k else None for k, p in variants]
    skipped, disk = {}, plan.files()

    def skip(job, message):  # --skip-missing: a pair that cannot be decoded mid-run
        s, k = plan.index[job[1]]
        skipped.setdefault((s, job[0]), set()).add((plan.pairs[s][k][1], plan.pairs[s][k][0]))
        sys.stderr.write(f"warning: skipped {disk[job[1]][0]}: {message}\n")
    progress = None
    if not args.no_progress and dist.rank == 0:
        progress = tqdm(total=len(todo), unit="pair", dynamic_ncols=True, desc=f"{plan.name} {args.model}",
                        disable=None, file=sys.stderr)
    count, started = 0, time.perf_counter()
    writer = Writers(dist, scorer, plan, files, done)
    per_layer = any(k[0] == "layers" for k in files)
    extra = {**({"on_error": skip} if args.skip_missing else {}), **({"per_layer": True} if per_layer else {})}
    try:
        for (v, i), row, *per in scorer.score_files(disk, transforms, jobs=dist.shard(disk, todo), **extra):
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
    return Scored(dist.sum(count), dist.union(skipped), time.perf_counter() - started, time.perf_counter())


def timed(args, scored, rows):
    """The rows with the run's fixed costs, for --json (bench --via-run reads them): seconds from
    the command's start (arguments parsed) to the first pair scored, and from the last to now."""
    before = round(scored.ended - scored.seconds - args.started, 2)
    after = round(time.perf_counter() - scored.ended, 2)
    return [{**row, "seconds_before_scoring": before, "seconds_after_scoring": after} for row in rows]


def _rate(count, elapsed):
    """This run's scoring rate, pairs/s; None when it scored nothing (every pair resumed)."""
    return round(count / elapsed, 2) if count and elapsed > 0 else None


def _rate_text(rate):
    return "—" if rate is None else f"{rate:.2f}"


def finish_files(plan, files, scored, blocks):
    """Finish every file of the run (dataset order, current labels, parts merged) and check that
    each holds what it should: the planned pairs, less those skipped mid-run, read from the file
    on disk.

    Returns:
        {path: rows [(dis, ref, mos, (values…))]}. UserError, with every row kept, when a file
        lacks pairs (a file edited or replaced after this run's last write, say): never a summary
        of fewer pairs than were planned without a word.
    """
    finished, short = {}, []
    for key, path in files.items():
        group = _group(key)
        order = plan.order(group[0])
        rows = results.finish(path, results.labels_of(plan.sets[group[0]].pairs), order,
                              blocks if key[0] == "layers" else ())
        finished[path] = rows
        held = {(dis, ref) for dis, ref, *_ in rows} | scored.skipped.get(group, set())
        missing = [k for k in order if k not in held]
        if missing:
            short.append(f"{path} lacks {len(missing)} of {len(order)} pairs (e.g. {missing[0][0]})")
    if not any(finished[p] for k, p in files.items() if k[0] != "layers"):
        raise UserError("no pair could be scored: every one was skipped (see the warnings above)")
    if short:
        raise UserError(f"{short[0]}" + (f" (and {len(short) - 1} more file(s))" if len(short) > 1 else "")
                        + ": was it edited, replaced or removed during the run? its other rows are kept; run the "
                          "same command again to score the missing pairs")
    return finished


def _scores(path, rows):
    """A results file's finished rows as (dis, ref, mos, pred) with a number for pred, and how
    many were NaN or inf (kept in the file, left out of the statistics, warned about)."""
    rows, nonfinite = results.drop_nonfinite(path, rows, lambda r: r[3][0], lambda r: r[0])
    return [(dis, ref, mos, values[0]) for dis, ref, mos, values in rows], nonfinite


def summarise(args, plan, records, paths, finished, scored, run):
    """One summary row per results file (correlations, the settings of its record, the run's
    time and id), appended to summary.csv; with --kinds the sweep's table and plot."""
    summary = []
    for ((s, v), _d), path in paths.items():
        dataset, rec = plan.sets[s], records[path]
        rows, nonfinite = _scores(path, finished[path])
        c = correlations([r[3] for r in rows], [r[2] for r in rows], dataset.higher_better, rec["pred_higher_better"])
        summary.append({**rec, **c, "n_skipped": int(plan.skipped[s] + scored.n_skipped((s, v)) + nonfinite),
                        "pairs_per_s": _rate(scored.count, scored.seconds), "file": path, **run})
    results.append_summary(args.savedir, summary)
    if args.kinds:
        stem = os.path.join(args.savedir, f"{plan.name}_{args.saveas or args.model}_sweep")
        table = results.write_table(stem + ".csv", SWEEP_FIELDS, summary)
        png = plots.sweep(summary, stem + ".png")
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    return summary


def summarise_unlabelled(args, plan, records, paths, finished, scored, run):
    """One row per set, variant and distance of label-free results files: the statistics of its
    scores and, among ≥2 sets, the ranking and the paired test against the best set on the
    references every ranked set scored, Holm-corrected, with the median paired difference and a
    verdict (stats.compare_methods). Rows replace those of an earlier run with the same settings
    in summary_unlabelled.csv; one bar chart per variant and distance (means over those
    references), marked with each set's verdict (report.significance_mark).

    Returns:
        (rows, {(variant, distance): {set: {reference: score}}})."""
    rows, scores = [], {}
    for ((s, v), d), path in paths.items():
        got, nonfinite = _scores(path, finished[path])
        key = plan.image_key(s)
        scores.setdefault((v, d), {})[plan.sets[s].name] = {key(dis, ref): pred for dis, ref, _, pred in got}
        rows.append({"set": plan.sets[s].name, **records[path], "lower_better": not records[path]["pred_higher_better"],
                     "n_skipped": int(plan.skipped[s] + scored.n_skipped((s, v)) + nonfinite),
                     "pairs_per_s": _rate(scored.count, scored.seconds), "file": path, "limit": args.limit,
                     "methods": method_list(plan), **run})
    keys = [(v, d) for ((_, v), d) in paths]
    lower = {key: row["lower_better"] for key, row in zip(keys, rows)}
    tables = {key: compare_methods(per_set, lower[key]) for key, per_set in scores.items()}
    for key, row in zip(keys, rows):
        stat = tables[key][row["set"]]
        row.update(stat, ci95_low=stat["ci95"][0], ci95_high=stat["ci95"][1],
                   ci95_shared_low=stat["ci95_shared"][0], ci95_shared_high=stat["ci95_shared"][1],
                   median_diff_ci95_low=(stat["median_diff_ci95"] or [None])[0],
                   median_diff_ci95_high=(stat["median_diff_ci95"] or [None, None])[1])
    results.append_summary(args.savedir, rows, "summary_unlabelled", results.UNLABELLED_FIELDS,
                           key=results.UNLABELLED_KEY)
    for key in scores:
        group = ranked([row for k, row in zip(keys, rows) if k == key], lower[key])
        suffix = f"_{group[0]['robustness']}-{group[0]['pct']}" if group[0]["robustness"] != "none" else ""
        chart = chart_path(args, plan, (group[0]["robustness"], group[0]["pct"]), key[1])
        title = f"{args.saveas or args.model}, {key[1]}{suffix.replace('_', ', ')}: mean per set, 95% CI"
        plots.method_bars([shown(r) for r in group], chart, title, marks=[significance_mark(r) for r in group])
        for row in group:
            row["chart"] = chart
    return rows, scores


def chart_path(args, plan, variant, distance):
    """The bar chart of one variant ((kind or '' / 'none', pct)) and distance of a label-free run."""
    kind, pct = variant
    suffix = f"_{kind}-{pct}" if kind and kind != "none" else ""
    return os.path.join(args.savedir, f"{args.saveas or args.model}_{distance}{suffix}_{sets_tag(plan)}.png")


def method_list(plan):
    """A run's sets as one name: joined by '+', a '+' or '%' inside a name written %2B or %25, so
    that methods 'a+b','c' and 'a','b+c' are told apart."""
    return "+".join(d.name.replace("%", "%25").replace("+", "%2B") for d in plan.sets)


def sets_tag(plan):
    """What names a run's method chart: `method_list` (or, for many or long names, their count
    and a digest), so that a run over other sets never overwrites it."""
    tag = method_list(plan)
    if len(tag) > 60:
        tag = f"{len(plan.sets)}sets-" + hashlib.sha256(tag.encode("utf-8")).hexdigest()[:8]
    return f"methods_{tag}"


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
              f"{r['plcc_logistic']:8.4f} {_rate_text(r['pairs_per_s']):>8}  {r['file']}")
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
    rate = rows[0]["pairs_per_s"]
    print(("no pair scored in this run (all resumed)" if rate is None else f"{rate} pairs/s")
          + f"; per-pair files in {args.savedir}; summary appended to "
          f"{os.path.join(args.savedir, 'summary_unlabelled.csv')}; charts {rows[0]['chart']}"
          + (" …" if len({r['chart'] for r in rows}) > 1 else ""))


def main(args):
    """Check everything that can be checked before the model loads (arguments, results
    folder, labels, image headers, the lock), then score what the results files lack."""
    with distributed.session() as dist:
        variants = variants_of(args)
        check_per_layer(args)
        plan = dist.from_rank0(lambda: load_plan(args, variants))
        dist.from_rank0(lambda: check_outputs(args, plan, variants))
        paths, specs = results_files(args, plan, variants)
        layer_paths = layer_files(args, paths)
        locks = [results.lock_path(p) for p in paths.values()]
        with new_folders_undone(args.savedir, locks), (  # the lock's folder goes again if the Scorer refuses (--layers)
                new_folders_undone(args.report, [os.path.join(args.report, REPORT_LOCK)]) if args.report
                else contextlib.nullcontext()):
            lock = dist.from_rank0(lambda: results.Lock(paths.values()), share=False)
            report_lock = dist.from_rank0(lambda: lock_report(args), share=False)
            with lock or contextlib.nullcontext(), report_lock or contextlib.nullcontext():
                scorer = make_scorer(args, dist.device(args.device))
                run_scoring(args, dist, scorer, plan, variants, paths, specs, layer_paths)
    return 0


def lock_report(args):
    """With --report DIR: the lock of DIR (`.zsiqa-report.lock` in it), held for the run, so that
    a second run writing the same report stops at once in one line; else None."""
    if not args.report:
        return None
    return results.Lock([args.report], "choose another --report",
                        name=lambda folder: os.path.join(folder, REPORT_LOCK))


def run_scoring(args, dist, scorer, plan, variants, paths, specs, layer_paths):
    """Records, resume, scoring, then (rank 0) the finished, checked files and the summary."""
    records, done = dist.from_rank0(lambda: prepare(args, plan, scorer, specs, paths, layer_paths))
    files = run_files(paths, layer_paths)
    todo = todo_jobs(done, files, plan)
    if args.compile == "auto":
        scorer.compile_if_it_pays(len(todo))
    scored = score(args, dist, scorer, plan, variants, files, done, todo)
    if dist.rank != 0:
        return
    finished = finish_files(plan, files, scored, scorer.blocks)
    run = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "run_id": time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)}
    if plan.labelled:
        report(args, timed(args, scored, summarise(args, plan, records, paths, finished, scored, run)))
        return
    rows, scores = summarise_unlabelled(args, plan, records, paths, finished, scored, run)
    written, failed = [], None  # every file before the first printed line (a reader may stop early)
    if args.report or args.worst_maps:
        written, failed = worst_outputs(args, scorer, plan, variants, rows, scores, run)
    report_unlabelled(args, timed(args, scored, rows))
    if not args.json:
        for line in written:
            print(line)
    if failed:  # maps that could not be written: said last, the table and the report kept
        raise failed


def worst_pairs(plan, s, per_image, k, lower_better):
    """Set s's k worst pairs by its scores {image: score} (`Plan.image_key`), worst first:
    [(image, ref, dis, score)]."""
    key = plan.image_key(s)
    pair_of = {key(dis, ref): (ref, dis) for ref, dis, _ in plan.pairs[s]}
    picks = sorted(per_image.items(), key=lambda kv: kv[1], reverse=lower_better)[:k]
    return [(image, *pair_of[image], score) for image, score in picks]


def pair_images(dataset, ref, dis, resize, variant):
    """A pair as the run scored it: decoded, resized (-r), transformed (-rob) → (ref, dis) images."""
    r, d = open_image(dataset.ref_path(ref), resize), open_image(dataset.dis_path(dis), resize)
    return robustness.Transform(*variant)(r, d) if variant[0] else (r, d)


def _rgb8(im):
    """A decoded image ('RGB', or deep grey 'F' in [0, 1]) as H×W×3 uint8, for thumbnails."""
    a = np.asarray(im)
    return a if im.mode == "RGB" else np.repeat((np.clip(a, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, 2)


def map_folder(image):
    """The folder of an image's maps: its whole name, '%' and '/' written %25 and %2F, so that no
    two images share one (x/7.png, x__7.png and x/7.jpg all differ)."""
    return image.replace("%", "%25").replace("/", "%2F")


MAP_NAME_MAX = 200  # bytes of a maps folder's name before it is cut and given a digest (NAME_MAX is 255)


def _folded(name):
    """A name as a case-insensitive, normalising file system (macOS, Windows) compares it."""
    return unicodedata.normalize("NFKC", name).casefold()


def map_folders(plan, s):
    """{image: its maps folder's name} for every image of set s (`Plan.image_key`): `map_folder`,
    or where that is longer than MAP_NAME_MAX bytes (deeply nested names) or equal to another
    image's but for case or Unicode normalisation (one folder on macOS and Windows), its first
    MAP_NAME_MAX bytes, '~' and 12 hex digits of the image name's sha256: one folder per image
    on every file system. UserError, before any work, should two still coincide."""
    key = plan.image_key(s)
    plain = {image: map_folder(image) for image in dict.fromkeys(key(dis, ref) for ref, dis, _ in plan.pairs[s])}
    alike = collections.Counter(_folded(name) for name in plain.values())
    out = {}
    for image, name in plain.items():
        if alike[_folded(name)] > 1 or len(name.encode("utf-8")) > MAP_NAME_MAX:
            cut = name.encode("utf-8")[:MAP_NAME_MAX].decode("utf-8", "ignore")
            name = f"{cut}~{hashlib.sha256(image.encode('utf-8')).hexdigest()[:12]}"
        out[image] = name
    if len({_folded(name) for name in out.values()}) < len(out):
        raise UserError(f"--maps: two images of {plan.sets[s].name} would share one maps folder; rename one")
    return out


def maps_root(args, dataset, variant):
    """The folder of a set's --maps for one robustness variant: <sdir>/<set>_<name>[_<rob>-<pct>]_maps."""
    tag = f"_{variant[0]}-{variant[1]}" if variant[0] else ""
    return os.path.join(args.savedir, f"{dataset.name}_{args.saveas or args.model}{tag}_maps")


def worst_outputs(args, scorer, plan, variants, rows, scores, run):
    """--maps N and --report DIR: each method's worst pairs by the first distance, with their
    maps (Scorer.maps), written as map files and as one report per robustness variant.
    Returns (a line per report written, for the caller to print; the UserError of the first map
    that could not be written, or None: the maps stop there, the reports are still written)."""
    primary = scorer.distances[0]
    shown = next((d for d in scorer.distances if d in SPATIAL), primary)  # a map that varies within a window
    k = max(report_worst(args) if args.report else 0, args.worst_maps or 0)
    written, failed, folders = [], [], [map_folders(plan, s) if args.worst_maps else {} for s in range(len(plan.sets))]
    if args.report:
        remove_stale_reports(args, variants)
    for v, variant in enumerate(variants):
        worst = {}
        for s, ds in enumerate(plan.sets):
            worst[ds.name] = []
            if args.worst_maps and not failed:
                failed += _attempt(remove_stale_maps, maps_root(args, ds, variant))
            for image, ref, dis, score in worst_pairs(plan, s, scores[(v, primary)][ds.name], k,
                                                      DISTANCES[primary].lower_better):
                r, d = pair_images(ds, ref, dis, args.resize, variant)
                maps = scorer.maps(d, r)
                if len(worst[ds.name]) < (args.worst_maps or 0) and not failed:
                    failed += _attempt(plots.write_maps, maps, to_float(pil_to_tensor(d)),
                                       os.path.join(maps_root(args, ds, variant), folders[s][image]),
                                       scorer.backbone.name,
                                       {x: scores[(v, x)][ds.name][image] for x in scorer.distances})
                worst[ds.name].append(Worst(image, score, _rgb8(r), _rgb8(d), maps[shown]))
        if args.report:
            written.append(write_variant_report(args, scorer, plan, variant, rows, scores, v, (worst, shown), run))
    return written, (failed[0] if failed else None)


def _attempt(write, *args):
    """[] when write(*args) succeeds, [its UserError] when it cannot write (a full disk): the
    caller goes on without it and says so at the end."""
    try:
        write(*args)
    except UserError as e:
        return [e]
    return []


MAP_FILES = r"(?:" + "|".join(map(re.escape, DISTANCES)) + r")\.(?:npy|png)"  # what write_maps writes
REPORT_LOCK = ".zsiqa-report.lock"  # inside --report DIR: one run writes a report folder at a time
VARIANT_FOLDER = re.compile(r"clean|(?:" + "|".join(robustness.TRANSFORMS) + r")-\d+")


def _remove_ours(folder, names):
    """Remove the files of `folder` whose names fully match the pattern `names` (the names an
    earlier run wrote there), and their temporary files left by a killed write
    (results.write_atomic's); then the folder itself if that left it empty. Never another file.
    Returns how many files went."""
    ours, gone = re.compile(rf"(?:{names})|\.(?:{names})\.[0-9a-f]{{8}}\.tmp"), 0
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if ours.fullmatch(name) and not os.path.isdir(path):
                os.remove(path)
                gone += 1
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: a user's own file keeps it
    return gone


def remove_stale_maps(root):
    """Before --maps writes into `root` (<sdir>/<set>_<name>_maps): the maps of an earlier run
    (<distance>.npy and .png in its image folders) go, so that the folders left are this run's
    worst images. Nothing else there is touched."""
    with writing(root, "the maps were not written"), contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                _remove_ours(path, MAP_FILES)


def remove_stale_reports(args, variants):
    """Before the reports are written into --report DIR: the report files of an earlier run with
    other variants go — DIR's own when this run is a sweep, DIR/clean and DIR/<kind>-<pct> that
    this run does not write — said in one line. Only our file names (scores.csv, report.md,
    table.tex, report.html) are removed, a folder only when that empties it."""
    mine = {os.path.normpath(report_folder(args, v)) for v in variants}
    folders = [args.report]
    with contextlib.suppress(OSError):
        folders += [os.path.join(args.report, n) for n in sorted(os.listdir(args.report))
                    if VARIANT_FOLDER.fullmatch(n)]
    gone = 0
    for folder in folders:
        if os.path.normpath(folder) not in mine and not os.path.islink(folder):
            with writing(folder, "the reports were not written"):
                gone += _remove_ours(folder, "|".join(map(re.escape, REPORT_FILES)))
    if gone:
        sys.stderr.write(f"note: removed {gone} report file(s) of an earlier run with other settings from "
                         f"{args.report}\n")


def report_worst(args):
    """How many worst images per method the report shows: --report-worst K, 4 by default."""
    return 4 if args.report_worst is None else args.report_worst


def report_folder(args, variant):
    """Where a variant's report goes: --report DIR, or in a sweep DIR/clean, DIR/<kind>-<pct>."""
    if not args.kinds:
        return args.report
    return os.path.join(args.report, f"{variant[0]}-{variant[1]}" if variant[0] else "clean")


def report_paths(args, variants):
    """Every file the reports of a run write (checked before any work)."""
    return [os.path.join(report_folder(args, v), name) for v in variants for name in REPORT_FILES]


def _base_name(folder):
    """A folder's own name, without the path to it (a report carries no local path)."""
    return os.path.basename(os.path.normpath(os.path.abspath(folder))) or "/"


def write_variant_report(args, scorer, plan, variant, rows, scores, v, worst, run):
    """Write the report of one robustness variant (the clean run: --report DIR itself, or
    DIR/clean beside DIR/<kind>-<pct> in a sweep); returns a line naming its files."""
    kind = variant[0] or "none"
    mine = [r for r in rows if (r["robustness"], r["pct"]) == (kind, variant[1] if variant[0] else 0)]
    tables = {d: [r for r in mine if r["distance"] == d] for d in scorer.distances}
    images = {i for per in scores[(v, scorer.distances[0])].values() for i in per}
    about = (f"{scorer.backbone.name}, precision {scorer.precision} on {scorer.device.type}; {len(images)} images; "
             f"references in {_base_name(plan.sets[0].ref_root or plan.sets[0].root)}; "
             + (f"robustness {variant[0]} {variant[1]}; " if variant[0] else "")
             + f"run {run['run_id']}, {run['time']}")
    worst, shown = worst
    comparison = Comparison(tables, {d: scores[(v, d)] for d in scorer.distances},
                            {d: DISTANCES[d].lower_better for d in scorer.distances}, scorer.distances[0],
                            {m: items[:report_worst(args)] for m, items in worst.items() if report_worst(args)}, about,
                            shown)
    paths = write_report(report_folder(args, variant), comparison)
    return f"report: {paths[-1]} (with {', '.join(os.path.basename(p) for p in paths[:-1])})"
