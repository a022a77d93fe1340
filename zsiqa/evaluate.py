"""The eval command (`zsiqa eval`, run.py): plan a dataset run, check everything that can be
checked before the model loads, score what the results files lack, then finish the files and
summarise them (a labelled run's correlations here; a label-free run's comparison of methods,
its maps and reports: comparison.py).

A run's sets are one dataset (labelled, or a label-free list) or one label-free set per output
folder (-dat dirs); all sets' pairs go through one engine pass, so a reference shared by
several sets is encoded once. Results files, records, resume and locks: results.py.
"""
import contextlib
import datetime
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from zsiqa import comparison, distributed, plots, results, robustness
from zsiqa.baselines import BASELINES, BaselineScorer, is_baseline, parse_baselines, require_torchmetrics
from zsiqa.config import EvalConfig, FileKey, Finished, Group, Scored
from zsiqa.distances import DISTANCES, parse_distances
from zsiqa.errors import UserError
from zsiqa.jsontext import to_json
from zsiqa.models import get_backbone
from zsiqa.planning import Plan, load_plan
from zsiqa.scorer import Scorer
from zsiqa.stats import correlations

SWEEP_FIELDS = ["distance", "robustness", "pct", "n", "srcc", "plcc", "krcc", "plcc_logistic"]


def check_outputs(config: EvalConfig, plan):
    """--report and --maps N compare methods without labels; the report folder must be writable
    (both checked before the model loads)."""
    if (config.report or config.worst_maps) and plan.labelled:
        raise UserError("--report and --maps N compare methods scored without labels (-dat dirs, or a -dat csv list of "
                        "ref,dis): for a labelled dataset use calc_scores.py")
    if config.report_worst is not None and not config.report:
        raise UserError("--report-worst K is the number of worst images in --report DIR: give --report too")
    if config.report:
        results.check_writable(config.report)
        taken = [p for p in comparison.report_paths(config.report, config.sweep, config.variants)
                 if os.path.isdir(p)]
        if taken:
            raise UserError(f"cannot write the report: {taken[0]} is a folder")


@dataclass(frozen=True)
class RunFiles:
    """The files a run writes, by FileKey: its results files (`paths`) and, with --per-layer,
    the per-layer files of its l2/cos ones (`layers`); `specs` per set {results path: (distance,
    variant, pred higher better)} (results.make_records)."""
    paths: dict
    layers: dict
    specs: list

    def all(self):
        """Every file: results files, then per-layer files."""
        return {**self.paths, **self.layers}


def results_files(config: EvalConfig, plan):
    """The run's files (RunFiles), their names checked; distances checked against the backbone
    (without loading it)."""
    names, store = metric_names(config), results.Store(config.savedir)
    paths, specs = {}, []
    for s, dataset in enumerate(plan.sets):
        specs.append({})
        for v, variant in enumerate(config.variants):
            for d in names:  # label-free sets: the distance always in the name (n_distances 0)
                if d in BASELINES:  # <set>_<baseline>.csv (-m NAME -s X: <set>_X.csv)
                    path = store.path(dataset.name, d, d, variant, (config.saveas if d == config.model else None) or d,
                                      1)
                else:
                    path = store.path(dataset.name, config.model, d, variant, config.saveas,
                                      len(names) if dataset.labelled else 0)
                paths[FileKey(s, v, d)] = path
                specs[s][path] = (d, variant, higher_better(d))
    store.check(paths.values(), config.per_layer)  # results files, records, locks, per-layer files
    check_output_names(config, plan, names)
    layers = {key.layer_file(): results.layers_path(path) for key, path in paths.items()
              if config.per_layer and key.distance in DISTANCES and DISTANCES[key.distance].per_layer}
    return RunFiles(paths, layers, specs)


def metric_names(config: EvalConfig):
    """What a run scores, in order: the backbone's distances (-d, checked against it without
    loading it) or the baseline of -m, then the --baselines."""
    own = (config.model,) if is_baseline(config.model) else parse_distances(config.distance,
                                                                            get_backbone(config.model))
    return own + tuple(b for b in parse_baselines(config.baselines) if b not in own)


def higher_better(name):
    """Whether a higher score means more alike, for a distance (never) or a baseline (psnr, ssim, ms_ssim)."""
    return BASELINES[name].higher_better if name in BASELINES else not DISTANCES[name].lower_better


def check_baselines(config: EvalConfig, plan):
    """The baselines' flags, before any work: --baselines on a label-free run, -m NAME of a
    baseline without the backbones' own flags (-d, --layers, --model-norm, --per-layer) and
    without --report/--maps N (whose worst images need a backbone's maps)."""
    extra = parse_baselines(config.baselines)
    if extra and plan.labelled:
        raise UserError("--baselines adds columns to a comparison without labels (-dat dirs, or a -dat csv list of "
                        "ref,dis); on a labelled dataset score a baseline as its own method: -m psnr")
    if not is_baseline(config.model):
        return
    used = [flag for flag, on in (("-d", config.distance != "wsd"), ("--layers", config.layers),
                                  ("--model-norm", config.model_norm), ("--per-layer", config.per_layer),
                                  ("--report", config.report), ("--maps N", config.worst_maps)) if on]
    if used:
        raise UserError(f"-m {config.model} is a classical baseline, not a backbone: {used[0]} does not apply "
                        f"(a comparison report: -m BACKBONE --baselines {config.model})")


def check_output_names(config: EvalConfig, plan, names):
    """Every name the run writes besides its results files (results.Store.check has those),
    checked before any work (results.check_lengths: no name over NAME_MAX, no path over
    PATH_MAX): the sweep's table and plot, and the label-free comparison's charts, report and
    --maps files (comparison.output_paths)."""
    outputs = [] if plan.labelled else comparison.output_paths(config, plan, names)
    if config.sweep:
        stem = os.path.join(config.savedir, f"{plan.name}_{config.name}_sweep")
        outputs += [stem + ".csv", stem + ".png"]
    results.check_lengths(outputs, "output", "choose a shorter -sdir, -s, --report or method name")


def check_per_layer(model, distance):
    """--per-layer needs a per-layer distance (l2, cos) among -d: checked before the model loads."""
    backbone = get_backbone(model)
    names = parse_distances(distance, backbone)
    if not any(DISTANCES[d].per_layer for d in names):
        able = [d for d in backbone.distances if DISTANCES[d].per_layer]
        raise UserError(f"--per-layer writes per-block distances, which only {', '.join(able) or 'no distance'} "
                        f"of {backbone.name} have; -d has {', '.join(names)}")


@dataclass(frozen=True)
class Run:
    """One run's parts, from planning to its summary: the settings, the ranks (distributed),
    the Scorer (a BaselineScorer for -m psnr, …), the Plan and its files, and the --baselines'
    BaselineScorer (else None)."""
    config: EvalConfig
    dist: object
    scorer: Scorer
    plan: Plan
    files: RunFiles
    extra: BaselineScorer | None = None

    @property
    def scorers(self):
        """Every scorer of the run, each its own pass over the pairs: the Scorer, then the --baselines'."""
        return (self.scorer,) + ((self.extra,) if self.extra is not None else ())


def open_results(run: Run):
    """The records of every set's results files (with the images' stamps, kept in the results
    folder's store) and the files made ready for them (results.Store: records, ready_files).

    Returns:
        ({path: record}, {path: (dis, ref) it holds}) for every results and per-layer file.
    """
    plan, scorer, files, store = run.plan, run.scorer, run.files, results.Store(run.config.savedir)
    def settings(d):
        return next((b.settings_of(d) for b in run.scorers if isinstance(b, BaselineScorer) and d in b.distances),
                    None) or scorer.settings
    per_set = []
    for s, (dataset, stamps) in enumerate(zip(plan.sets, plan.stamps, strict=True)):
        per_set.append({})
        by_metric = {}  # the backbone's files share its settings; a baseline's files have their own
        for path, spec in files.specs[s].items():
            by_metric.setdefault(spec[0] if spec[0] in BASELINES else "", {})[path] = spec
        for metric, specs in by_metric.items():
            per_set[-1].update(store.records(dataset, settings(metric) if metric else scorer.settings, specs, stamps))
    layers = {files.paths[key.results_file()]: (lpath, scorer.blocks) for key, lpath in files.layers.items()}
    sets = [(per_set[s], results.labels_of(dataset.pairs), plan.order(s), plan.stamps[s])
            for s, dataset in enumerate(plan.sets)]
    done = store.ready_files(sets, run.config.overwrite, layers, warn=lambda line: sys.stderr.write(line + "\n"))
    return {path: rec for recs in per_set for path, rec in recs.items()}, done


def make_scorer(config: EvalConfig, device):
    """The Scorer (compiled at once with --compile on; with auto once the jobs are known), or for
    -m NAME of a baseline its BaselineScorer (LPIPS' weights from --weights, else looked for)."""
    if is_baseline(config.model):
        return BaselineScorer(metric_names(config), device, config.resize, workers=config.workers,
                              weights=config.weights)
    return Scorer(config.model, config.distance, device=device, precision=config.precision, weights=config.weights,
                  batch_size=config.batch_size, workers=config.workers, resize=config.resize,
                  model_norm=config.model_norm, layers=config.layers, compile=config.compile == "on")


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


class ScoredPair(NamedTuple):
    """One pair as Scorer.score_files yields it: its job (variant index, pair index), its scores
    in the scorer's distance order and, when asked for, its per-block scores [per-layer
    distances × blocks] (else None)."""
    job: tuple
    row: np.ndarray
    per_layer: np.ndarray | None = None


class Writers:
    """The run's row writer: its results files (torchrun: part files) and, with --per-layer,
    their per-layer files, keyed by FileKey. A file gets only the pairs it lacks."""

    def __init__(self, dist, scorer, plan, files, done):
        def target(p):
            return p if dist.world == 1 else results.part_path(p, dist.rank)
        self.scorer = scorer
        per_layer = results.Columns(plan.labelled, scorer.blocks)
        columns = {k: per_layer if k.layers else results.Columns(plan.labelled) for k in files}
        self.rows = results.RowWriter({k: target(p) for k, p in files.items()}, columns,
                                      held={k: done[p] for k, p in files.items()})

    def write(self, group, dis, ref, mos, scored, names=None):
        """Write one ScoredPair of Group `group` into each of its files (`names`: its scores' names,
        default the Scorer's distances)."""
        for j, d in enumerate(names or self.scorer.distances):
            key = FileKey(*group, d)
            self.rows.write(key, dis, ref, mos, [scored.row[j]])
            if key.layer_file() in self.rows.paths:
                self.rows.write(key.layer_file(), dis, ref, mos,
                                scored.per_layer[self.scorer.layer_distances.index(d)])

    def close(self):
        self.rows.close()
        for path in self.rows.replaced:
            sys.stderr.write(f"warning: {path} was replaced, removed or truncated during the run; this run's rows "
                             "were written to the file now there\n")


def todo_jobs(done, files, plan):
    """The (variant, pair index) jobs some file of their set and variant still lacks, variant-major."""
    groups = sorted({key.group for key in files})
    complete = {g: set.intersection(*(done[p] for k, p in files.items() if k.group == g)) for g in groups}
    keys = [(plan.pairs[s][k][1], plan.pairs[s][k][0]) for s, k in plan.index]
    return [(v, i) for v in sorted({g.variant for g in groups}) for i, (s, _) in enumerate(plan.index)
            if keys[i] not in complete[Group(s, v)]]


def score_pairs(run: Run, done, todo):
    """Score this rank's share of the jobs, appending rows to the results (torchrun: part)
    files as they finish. Returns what was done (Scored), summed over the ranks."""
    config, dist, plan = run.config, run.dist, run.plan
    transforms = [robustness.Transform(k, p) if k else None for k, p in config.variants]
    skipped, disk = {}, plan.files()

    def skip(job, message):  # --skip-missing: a pair that cannot be decoded mid-run
        s, k = plan.index[job[1]]
        skipped.setdefault(Group(s, job[0]), set()).add((plan.pairs[s][k][1], plan.pairs[s][k][0]))
        sys.stderr.write(f"warning: skipped {disk[job[1]][0]}: {message}\n")
    progress = None
    if not config.no_progress and dist.rank == 0:
        progress = tqdm(total=len(todo) * len(run.scorers), unit="pair", dynamic_ncols=True,
                        desc=f"{plan.name} {config.model}", disable=None, file=sys.stderr)
    count, started = 0, time.perf_counter()
    writer = Writers(dist, run.scorer, plan, run.files.all(), done)
    extra = {**({"on_error": skip} if config.skip_missing else {}), **({"per_layer": True} if run.files.layers else {})}
    try:
        for n, scorer in enumerate(run.scorers):  # the --baselines: a pass of their own, after the backbone's
            options = extra if n == 0 else {k: f for k, f in extra.items() if k == "on_error"}
            for item in scorer.score_files(disk, transforms, jobs=dist.shard(disk, todo), **options):
                scored = ScoredPair(*item)
                v, i = scored.job
                s, k = plan.index[i]
                ref, dis, mos = plan.pairs[s][k]
                writer.write(Group(s, v), dis, ref, mos, scored, scorer.distances)
                count += n == 0  # pairs/s: the pairs scored, once
                if progress is not None:
                    progress.update(dist.world)
    finally:
        writer.close()
        if progress is not None:
            progress.close()
    return Scored(dist.sum(count), dist.union(skipped), time.perf_counter() - started, time.perf_counter())


def timed(started, scored, rows):
    """The rows with the run's fixed costs, for --json (bench --via-run reads them): seconds from
    the command's start (`started`: arguments parsed) to the first pair scored, and from the last to now."""
    before = round(scored.ended - scored.seconds - started, 2)
    after = round(time.perf_counter() - scored.ended, 2)
    return [{**row, "seconds_before_scoring": before, "seconds_after_scoring": after} for row in rows]


def _rate_text(rate):
    return "—" if rate is None else f"{rate:.2f}"


def finish_files(store, plan, files, scored, blocks):
    """Finish every file of the run through the results `store` (dataset order, current labels,
    parts merged) and check that each holds what it should: the planned pairs, less those skipped
    mid-run, read from the file on disk.

    Returns:
        {path: rows [(dis, ref, mos, (values…))]}. UserError, with every row kept, when a file
        lacks pairs (a file edited or replaced after this run's last write, say): never a summary
        of fewer pairs than were planned without a word.
    """
    finished, short = {}, []
    for key, path in files.items():
        order = plan.order(key.set)
        rows = store.finish(path, results.labels_of(plan.sets[key.set].pairs), order, blocks if key.layers else ())
        finished[path] = rows
        held = {(dis, ref) for dis, ref, *_ in rows} | scored.skipped.get(key.group, set())
        missing = [k for k in order if k not in held]
        if missing:
            short.append(f"{path} lacks {len(missing)} of {len(order)} pairs (e.g. {missing[0][0]})")
    if not any(finished[p] for k, p in files.items() if not k.layers):
        raise UserError("no pair could be scored: every one was skipped (see the warnings above)")
    if short:
        raise UserError(f"{short[0]}" + (f" (and {len(short) - 1} more file(s))" if len(short) > 1 else "")
                        + ": was it edited, replaced or removed during the run? its other rows are kept; run the "
                          "same command again to score the missing pairs")
    return finished


def summarise(config: EvalConfig, plan, finished: Finished):
    """One summary row per results file (correlations, the settings of its record, the run's
    time and id), appended to summary.csv; with --kinds the sweep's table and plot."""
    summary = []
    for key, path in finished.paths.items():
        dataset, rec = plan.sets[key.set], finished.records[path]
        rows, nonfinite = finished.scores(path)
        c = correlations([r[3] for r in rows], [r[2] for r in rows], dataset.higher_better, rec["pred_higher_better"])
        summary.append({**rec, **c, "n_skipped": int(plan.skipped[key.set] + finished.scored.n_skipped(key.group)
                                                     + nonfinite),
                        "pairs_per_s": finished.scored.rate(), "file": path, **finished.stamp})
    results.Store(config.savedir).summarise(summary)
    if config.sweep:
        stem = os.path.join(config.savedir, f"{plan.name}_{config.name}_sweep")
        table = results.write_table(stem + ".csv", SWEEP_FIELDS, summary)
        png = plots.sweep(summary, stem + ".png")
        for row in summary:
            row["sweep_table"], row["sweep_plot"] = table, png
    return summary


def report(summary, as_json=False):
    """Print the summary rows (a table, or JSON with --json)."""
    if as_json:
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


def main(config: EvalConfig):
    """Check everything that can be checked before the model loads (arguments, results
    folder, labels, image headers, the lock), then score what the results files lack."""
    with distributed.session() as dist:
        if config.per_layer and not is_baseline(config.model):
            check_per_layer(config.model, config.distance)
        if parse_baselines(config.baselines) or is_baseline(config.model):
            require_torchmetrics()  # the optional extra, asked for before any work
        plan = dist.from_rank0(lambda: load_plan(config))
        dist.from_rank0(lambda: check_outputs(config, plan))
        dist.from_rank0(lambda: check_baselines(config, plan))
        files = results_files(config, plan)
        locks = [results.lock_path(p) for p in files.paths.values()]
        report_lock_file = os.path.join(config.report, results.REPORT_LOCK) if config.report else None
        with new_folders_undone(config.savedir, locks), (  # the lock's folder goes again if the Scorer refuses
                new_folders_undone(config.report, [report_lock_file]) if config.report else contextlib.nullcontext()):
            lock = dist.from_rank0(lambda: results.Store(config.savedir).lock(files.paths.values()), share=False)
            report_lock = dist.from_rank0(lambda: comparison.lock_report(config.report), share=False)
            with lock or contextlib.nullcontext(), report_lock or contextlib.nullcontext():
                scorer = make_scorer(config, dist.device(config.device))
                extra = [b for b in parse_baselines(config.baselines) if b not in scorer.distances]
                baselines = BaselineScorer(extra, dist.device(config.device), config.resize,
                                           workers=config.workers) if extra else None
                run_scoring(Run(config, dist, scorer, plan, files, baselines))
    return 0


def run_scoring(run: Run):
    """Records, resume, scoring, then (rank 0) the finished, checked files and the summary."""
    config, plan = run.config, run.plan
    records, done = run.dist.from_rank0(lambda: open_results(run))
    files = run.files.all()
    todo = todo_jobs(done, files, plan)
    if config.compile == "auto":
        run.scorer.compile_if_it_pays(len(todo))
    scored = score_pairs(run, done, todo)
    if run.dist.rank != 0:
        return
    stamp = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             "run_id": time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)}
    rows = finish_files(results.Store(run.config.savedir), plan, files, scored, run.scorer.blocks)
    finished = Finished(run.files.paths, records, rows, scored, stamp)
    if plan.labelled:
        report(timed(config.started, scored, summarise(config, plan, finished)), config.json)
        return
    rows, scores = comparison.summarise_unlabelled(config, plan, finished)
    written, failed = [], None  # every file before the first printed line (a reader may stop early)
    if config.report or config.worst_maps:
        outcome = comparison.Outcome(config, run.scorer, plan, rows, scores, stamp,
                                     run.extra.distances if run.extra is not None else ())
        written, failed = comparison.worst_outputs(outcome)
    comparison.report_unlabelled(timed(config.started, scored, rows), config.json, config.savedir)
    if not config.json:
        for line in written:
            print(line)
    if failed:  # maps that could not be written: said last, the table and the report kept
        raise failed


