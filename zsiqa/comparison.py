"""The comparison of methods scored without labels (`zsiqa eval -dat dirs`, or a -dat csv list of
ref,dis): after the eval command has scored and finished the results files, the summary of each
set per variant and distance (ranked, tested against the best: stats.compare_methods) with its
bar chart and printed table, and with --maps N / --report DIR each method's worst pairs: their
spatial maps as files and the report (report.write_report) per robustness variant.

Every name these write is known before any work (`output_paths`, `report_paths`): the eval
command checks them before the model loads. `plan` below is the eval command's planning.Plan.
"""
import collections
import contextlib
import hashlib
import os
import re
import sys
import unicodedata
from dataclasses import dataclass

import numpy as np

from zsiqa import plots, results, robustness
from zsiqa.config import EvalConfig, Finished
from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError, writing
from zsiqa.images import open_image, pil_to_tensor, to_float
from zsiqa.jsontext import to_json
from zsiqa.maps import SPATIAL, image_maps
from zsiqa.report import (
    REPORT_FILES,
    Comparison,
    GridRow,
    Shot,
    format_table,
    ranked,
    shown,
    significance_mark,
    write_report,
)
from zsiqa.stats import compare_methods


@dataclass(frozen=True)
class Outcome:
    """A label-free run's results, for the maps and reports of its worst pairs: the settings,
    the Scorer, the Plan, the summary rows, every image's score {(variant index, distance):
    {set: {image: score}}}, the run's `time` and `run_id`, and the --baselines (psnr, …: more
    columns of the tables, each ranked in its own direction)."""
    config: EvalConfig
    scorer: object
    plan: object
    rows: list
    scores: dict
    stamp: dict
    baselines: tuple = ()

    @property
    def distances(self):
        """The columns of the comparison: the Scorer's distances, then the baselines."""
        return tuple(self.scorer.distances) + tuple(b for b in self.baselines if b not in self.scorer.distances)

    def lower_better(self, name):
        """Whether a lower score of `name` (a distance or a baseline) means more alike, from its rows' records."""
        return next(r["lower_better"] for r in self.rows if r["distance"] == name)


def summarise_unlabelled(config: EvalConfig, plan, finished: Finished):
    """One row per set, variant and distance of label-free results files: the statistics of its
    scores and, among ≥2 sets, the ranking and the paired test against the best set on the
    references every ranked set scored, Holm-corrected, with the median paired difference and a
    verdict (stats.compare_methods). Rows replace those of an earlier run with the same settings
    in summary_unlabelled.csv; one bar chart per variant and distance (means over those
    references), marked with each set's verdict (report.significance_mark).

    Returns:
        (rows, {(variant, distance): {set: {reference: score}}})."""
    rows, scores = [], {}
    for file, path in finished.paths.items():
        got, nonfinite = finished.scores(path)
        key, record = plan.image_key(file.set), finished.records[path]
        scores.setdefault((file.variant, file.distance), {})[plan.sets[file.set].name] = {
            key(dis, ref): pred for dis, ref, _, pred in got}
        rows.append({"set": plan.sets[file.set].name, **record, "lower_better": not record["pred_higher_better"],
                     "n_skipped": int(plan.skipped[file.set] + finished.scored.n_skipped(file.group) + nonfinite),
                     "pairs_per_s": finished.scored.rate(), "file": path, "limit": config.limit,
                     "methods": method_list(plan), **finished.stamp})
    keys = [(file.variant, file.distance) for file in finished.paths]
    lower = {key: row["lower_better"] for key, row in zip(keys, rows)}
    tables = {key: compare_methods(per_set, lower[key]) for key, per_set in scores.items()}
    for key, row in zip(keys, rows):
        stat = tables[key][row["set"]]
        row.update(stat, ci95_low=stat["ci95"][0], ci95_high=stat["ci95"][1],
                   ci95_shared_low=stat["ci95_shared"][0], ci95_shared_high=stat["ci95_shared"][1],
                   median_diff_ci95_low=(stat["median_diff_ci95"] or [None])[0],
                   median_diff_ci95_high=(stat["median_diff_ci95"] or [None, None])[1])
    results.append_summary(config.savedir, rows, "summary_unlabelled", results.UNLABELLED_FIELDS,
                           key=results.UNLABELLED_KEY)
    for key in scores:
        group = ranked([row for k, row in zip(keys, rows) if k == key], lower[key])
        suffix = f"_{group[0]['robustness']}-{group[0]['pct']}" if group[0]["robustness"] != "none" else ""
        chart = chart_path(config.savedir, config.name, plan, (group[0]["robustness"], group[0]["pct"]), key[1])
        title = f"{config.name}, {key[1]}{suffix.replace('_', ', ')}: mean per set, 95% CI"
        plots.method_bars([shown(r) for r in group], chart, title, marks=[significance_mark(r) for r in group])
        for row in group:
            row["chart"] = chart
    return rows, scores


def chart_path(savedir, name, plan, variant, distance):
    """The bar chart of one variant ((kind or '' / 'none', pct)) and distance of a label-free run,
    in the results folder `savedir`, `name` that of the results files (-s, else the model)."""
    kind, pct = variant
    suffix = f"_{kind}-{pct}" if kind and kind != "none" else ""
    return os.path.join(savedir, f"{name}_{distance}{suffix}_{sets_tag(plan)}.png")


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


def report_unlabelled(rows, as_json, savedir):
    """Print the label-free rows: per variant, one table per distance ranking the sets
    (report.format_table), or JSON with --json; `savedir` the results folder."""
    if as_json:
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
          + f"; per-pair files in {savedir}; summary appended to "
          f"{os.path.join(savedir, 'summary_unlabelled.csv')}; charts {rows[0]['chart']}"
          + (" …" if len({r['chart'] for r in rows}) > 1 else ""))


# ---------------------------------------------------------------- the report folder and the maps

MAP_NAME_MAX = 200  # bytes of a maps folder's name before it is cut and given a digest (NAME_MAX is 255)
MAP_FILES = r"(?:" + "|".join(map(re.escape, DISTANCES)) + r")\.(?:npy|png)"  # what write_maps writes
VARIANT_FOLDER = re.compile(r"clean|(?:" + "|".join(robustness.TRANSFORMS) + r")-\d+")


def output_paths(config: EvalConfig, plan, names):
    """Every file and folder name the comparison of a label-free run would write (`names` its
    distances): the charts, the report's files and its lock, and per set the --maps files of
    its image with the longest folder name (`map_folders`, which also refuses images whose
    folders one file system could not tell apart)."""
    outputs = [chart_path(config.savedir, config.name, plan, v, d) for v in config.variants for d in names]
    if config.report:
        outputs += report_paths(config.report, config.sweep, config.variants) + [
            os.path.join(config.report, results.REPORT_LOCK)]
    for s, dataset in enumerate(plan.sets):
        folders = map_folders(plan, s) if config.worst_maps else {}
        longest = max(folders.values(), key=lambda n: len(n.encode("utf-8")), default=None)
        outputs += [os.path.join(maps_root(config.savedir, config.name, dataset.name, v), longest, f"{d}.{ext}")
                    for v in config.variants for d in names for ext in ("npy", "png")] if longest else []
    return outputs


def lock_report(folder):
    """With --report DIR (`folder`): the lock of DIR (`.zsiqa-report.lock` in it), held for the
    run, so that a second run writing the same report stops at once in one line; else None."""
    if not folder:
        return None
    return results.report_lock(folder)


def _base_name(folder):
    """A folder's own name, without the path to it (a report carries no local path)."""
    return os.path.basename(os.path.normpath(os.path.abspath(folder))) or "/"


def _precision_words(scorer):
    """The run's precision in words: 'the published precision (float32)', or 'float16 (asked)'."""
    dtype = str(getattr(scorer.extractor, "compute_dtype", "")).removeprefix("torch.") or scorer.precision
    return f"the published precision ({dtype})" if scorer.precision == "published" else f"{dtype} (asked)"


def about_line(scorer, images, references, variant, stamp):
    """The report's line about the run, in words: the backbone, precision and device, the images,
    the reference folder's own name, the robustness variant, the run's id and time."""
    device = {"cpu": "the CPU", "cuda": "the GPU", "mps": "the Apple GPU"}.get(scorer.device.type, scorer.device.type)
    arch = getattr(scorer.backbone, "arch", "") or scorer.backbone.name
    return (f"{arch} ({scorer.backbone.name}), {_precision_words(scorer)} on {device}; {images} images; "
            f"references: {references}; " + (f"robustness: {variant[0]} {variant[1]}; " if variant[0] else "")
            + f"run {stamp['run_id']} at {stamp['time']}")


def write_variant_report(outcome: Outcome, v, grid, shown):
    """Write the report of robustness variant v (the clean run: --report DIR itself, or
    DIR/clean beside DIR/<kind>-<pct> in a sweep), with the worst-images grid [GridRow] and
    `shown` the distance of their maps; returns a line naming its files."""
    config, scorer, plan, scores = outcome.config, outcome.scorer, outcome.plan, outcome.scores
    variant = config.variants[v]
    kind = variant[0] or "none"
    mine = [r for r in outcome.rows if (r["robustness"], r["pct"]) == (kind, variant[1] if variant[0] else 0)]
    names = outcome.distances
    tables = {d: [r for r in mine if r["distance"] == d] for d in names}
    images = {i for per in scores[(v, scorer.distances[0])].values() for i in per}
    about = about_line(scorer, len(images), _base_name(plan.sets[0].ref_root or plan.sets[0].root), variant,
                       outcome.stamp)
    comparison = Comparison(tables, {d: scores[(v, d)] for d in names},
                            {d: outcome.lower_better(d) for d in names}, names[0],
                            grid, about, shown, tuple(ds.name for ds in plan.sets))
    paths = write_report(report_folder(config.report, config.sweep, variant), comparison)
    return f"report: {paths[-1]} (with {', '.join(os.path.basename(p) for p in paths[:-1])})"


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


def remove_stale_reports(report, sweep, variants):
    """Before the reports are written into --report DIR (`report`): the report files of an
    earlier run with other variants go — DIR's own when this run is a sweep, DIR/clean and
    DIR/<kind>-<pct> that this run does not write — said in one line. Only our file names
    (scores.csv, report.md, table.tex, report.html) are removed, a folder only when that empties it."""
    mine = {os.path.normpath(report_folder(report, sweep, v)) for v in variants}
    folders = [report]
    with contextlib.suppress(OSError):
        folders += [os.path.join(report, n) for n in sorted(os.listdir(report)) if VARIANT_FOLDER.fullmatch(n)]
    gone = 0
    for folder in folders:
        if os.path.normpath(folder) not in mine and not os.path.islink(folder):
            with writing(folder, "the reports were not written"):
                gone += _remove_ours(folder, "|".join(map(re.escape, REPORT_FILES)))
    if gone:
        sys.stderr.write(f"note: removed {gone} report file(s) of an earlier run with other settings from "
                         f"{report}\n")


def report_folder(report, sweep, variant):
    """Where a variant's report goes: --report DIR (`report`), or in a sweep DIR/clean, DIR/<kind>-<pct>."""
    if not sweep:
        return report
    return os.path.join(report, f"{variant[0]}-{variant[1]}" if variant[0] else "clean")


def report_paths(report, sweep, variants):
    """Every file the reports of a run write (checked before any work)."""
    return [os.path.join(report_folder(report, sweep, v), name) for v in variants for name in REPORT_FILES]


# ---------------------------------------------------------------- the worst pairs

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


def maps_root(savedir, name, set_name, variant):
    """The folder of a set's --maps for one robustness variant: <sdir>/<set>_<name>[_<rob>-<pct>]_maps."""
    tag = f"_{variant[0]}-{variant[1]}" if variant[0] else ""
    return os.path.join(savedir, f"{set_name}_{name}{tag}_maps")


def map_distance(distances, backbone):
    """The distance of the report's maps: the run's first spatial one (l2, cos: a value per
    position), else l2 or cos where the backbone takes it (skld/jsd/wsd/swd are one value per
    224-px window: their map is flat squares), else the first distance."""
    return next((d for d in distances if d in SPATIAL),
                next((d for d in ("l2", "cos") if d in backbone.distances), distances[0]))


def pair_index(plan, s):
    """{image: (ref, dis)} of set s (`Plan.image_key`)."""
    key = plan.image_key(s)
    return {key(dis, ref): (ref, dis) for ref, dis, _ in plan.pairs[s]}


def grid_images(picks, k):
    """The worst-images grid's images: each set's first k worst (`picks` {s: [(image, …)]}) taken
    in turn (every set's worst, then every set's second worst…), each image once; {image: [sets]}
    the sets among whose worst it is, in order."""
    out = {}
    for j in range(k):
        for s, items in picks.items():
            if j < len(items):
                out.setdefault(items[j][0], []).append(s)
    return out


def worst_outputs(outcome: Outcome):
    """--maps N and --report DIR: each method's worst pairs by the first distance, with their
    maps (maps.image_maps, with a spatial map for the report: `map_distance`), written as map
    files and as one report per robustness variant, whose grid shows every method on each of
    the methods' worst images. Returns (a line per report written, for the caller to print; the
    UserError of the first map that could not be written, or None: the maps stop there, the
    reports are still written)."""
    config, scorer, plan, scores = outcome.config, outcome.scorer, outcome.plan, outcome.scores
    primary = scorer.distances[0]
    shown = map_distance(scorer.distances, scorer.backbone)
    k = max(config.worst_shown if config.report else 0, config.worst_maps or 0)
    written, failed = [], []
    folders = [map_folders(plan, s) if config.worst_maps else {} for s in range(len(plan.sets))]
    if config.report:
        remove_stale_reports(config.report, config.sweep, config.variants)
    for v, variant in enumerate(config.variants):
        shots, refs = {}, {}
        picks = {s: worst_pairs(plan, s, scores[(v, primary)][ds.name], k, outcome.lower_better(primary))
                 for s, ds in enumerate(plan.sets)}
        for s, ds in enumerate(plan.sets):
            root = maps_root(config.savedir, config.name, ds.name, variant)
            if config.worst_maps and not failed:
                failed += _attempt(remove_stale_maps, root)
            for image, ref, dis, score in picks[s][:config.worst_maps or 0]:
                if failed:
                    break
                r, d = pair_images(ds, ref, dis, config.resize, variant)
                maps = image_maps(scorer.core, scorer.batch_size, scorer.image_tensor, d, r, (shown,))
                target = os.path.join(root, folders[s][image])
                failed += _attempt(plots.write_maps, {x: maps[x] for x in scorer.distances},
                                   to_float(pil_to_tensor(d)), target, scorer.backbone.name,
                                   {x: scores[(v, x)][ds.name][image] for x in scorer.distances})
                links = {} if failed else {x: os.path.join(target, f"{x}.png") for x in scorer.distances}
                shots[(s, image)] = Shot(score, _rgb8(d), maps[shown], links)
                refs[image] = _rgb8(r)
        if config.report:
            grid = _grid(outcome, v, shown, grid_images({s: p[:config.worst_shown] for s, p in picks.items()},
                                                        config.worst_shown), (shots, refs))
            written.append(write_variant_report(outcome, v, grid, shown))
    return written, (failed[0] if failed else None)


def _grid(outcome: Outcome, v, shown, images, made):
    """The worst-images grid of variant v: a GridRow per image of `images` ({image: [sets]},
    `grid_images`), with every set's Shot of it (those `made` = (shots, refs) by the maps reused,
    the others' maps computed here)."""
    config, scorer, plan, scores = outcome.config, outcome.scorer, outcome.plan, outcome.scores
    shots, refs = made
    variant, primary = config.variants[v], scorer.distances[0]
    index = [pair_index(plan, s) for s in range(len(plan.sets))]
    rows = []
    for image, worst_of in images.items():
        for s, ds in enumerate(plan.sets):
            score = scores[(v, primary)][ds.name].get(image)
            if (s, image) in shots or image not in index[s] or score is None:
                continue
            r, d = pair_images(ds, *index[s][image], config.resize, variant)
            maps = image_maps(scorer.core, scorer.batch_size, scorer.image_tensor, d, r, (shown,))
            shots[(s, image)] = Shot(score, _rgb8(d), maps[shown])
            refs.setdefault(image, _rgb8(r))
        rows.append(GridRow(image, refs[image], {ds.name: shots[(s, image)] for s, ds in enumerate(plan.sets)
                                                  if (s, image) in shots}, [plan.sets[s].name for s in worst_of]))
    return rows


def _attempt(write, *args):
    """[] when write(*args) succeeds, [its UserError] when it cannot write (a full disk): the
    caller goes on without it and says so at the end."""
    try:
        write(*args)
    except UserError as e:
        return [e]
    return []
