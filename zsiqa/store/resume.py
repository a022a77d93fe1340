"""Resuming results files: before a run, every file is checked to be made with the run's
settings (`check_resumable`) and made ready (`ready_files`: complete rows kept and relabelled, rows
of images changed since dropped, this run's record written); after it, a file's rows and its
torchrun part files are merged and rewritten in dataset order (`finish`, `collect`).
"""
import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass

from zsiqa.errors import UserError, writing
from zsiqa.store.csvfiles import complete_text, csv_text, write_atomic
from zsiqa.store.naming import exists, layers_path, part_paths, record_path
from zsiqa.store.records import STAMPS, changed_pairs, first_difference, has_labels, read_record
from zsiqa.store.rows import PRED, Columns, done_keys, read_done


def collect(path, columns=PRED):
    """Complete rows of a file and of its torchrun part files, merged (`read_done`)."""
    done = read_done(path, columns)
    for part in part_paths(path):
        done.update(read_done(part, columns))
    return done


def finish(path, labels, order, blocks=(), drop=()):
    """Rewrite a results (or, with `blocks`, per-layer) file, merging part files, in dataset
    order with the current labels: rows of the current pairs `order` [(dis, ref)] first, then
    other pairs of the dataset; rows of pairs no longer in the dataset are dropped (their label
    is stale), and so are those of `drop` (scored from images since changed). Torn bytes and
    repeated rows go with the rewrite. Labels all None (a label-free set): no mos column.

    Returns:
        the rows of the current pairs [(dis, ref, mos, (values…))] (mos None when label-free).
    """
    columns = Columns(has_labels(labels), tuple(blocks))
    done = collect(path, columns)
    for key in drop:
        done.pop(key, None)
    in_order = dict.fromkeys(order)
    keys = [k for k in order if k in done] + [k for k in done if k in labels and k not in in_order]
    rows = [(dis, ref, labels[(dis, ref)], done[(dis, ref)][1]) for dis, ref in keys]
    write_atomic(path, csv_text([columns.header, *(columns.row(*row) for row in rows)]))
    for part in part_paths(path):
        os.remove(part)
    return rows[: sum(k in done for k in order)]


def remove_layers(path):
    """Delete results file `path`'s per-layer file and its part files (stale rows)."""
    lp = layers_path(path)
    for p in [lp, *part_paths(lp)]:
        with writing(p), contextlib.suppress(FileNotFoundError):
            os.remove(p)


def ready_files(sets, overwrite=False, layers=None, warn=None):
    """Make a run's results files ready: every file of every set is checked before any is touched.

    Args:
        sets: [(records, labels, order, stamps)], one per set: {path: this run's record
            (make_records)}, {(dis, ref): label} of the whole dataset, the current pairs
            [(dis, ref)], and the stamps of all the dataset's images (`image_stamps`).
        overwrite: discard earlier files instead of refusing those made otherwise.
        layers: {results path: (per-layer path, blocks)} with --per-layer: each prepared with its
            results file (a results file started afresh loses its per-layer file).
        warn: a function taking one line, told which images changed since they were scored.

    Returns:
        {path: set of the (dis, ref) of `order` it holds}, for every results and per-layer file.
        Rows scored from images that changed since are dropped, to be scored again: from the
        results file and its per-layer file, whether this run writes that one or not.
    """
    layers = layers or {}
    if not overwrite:
        for records, _, _, _ in sets:
            for path, record in records.items():
                if exists(path):
                    check_resumable(path, record)
    done, notes = {}, _Notes(set(), [], [])
    for records, labels, order, stamps in sets:
        for path, record in records.items():
            done.update(_ready_one(path, record, (labels, order, stamps), overwrite, layers.get(path), notes))
    notes.say(warn)
    return done


@dataclass
class _Notes:
    """What `ready_files` found about the images behind the rows it kept, said once at the end."""
    changed: set
    lost: list
    unstamped: list

    def say(self, warn):
        if not warn:
            return
        if self.changed:
            warn(f"warning: {len(self.changed)} image(s) changed since they were scored (e.g. "
                 f"{sorted(self.changed)[0]}); their pairs are scored again")
        for path in self.lost:
            warn(f"warning: {path}: the stamps of the images its rows were scored from are gone "
                 f"({os.path.join(os.path.dirname(path), STAMPS)} removed?); all its pairs are scored again")
        if self.unstamped:
            warn(f"warning: {self.unstamped[0]}" + (f" and {len(self.unstamped) - 1} more" if len(self.unstamped) > 1
                                                    else "") +
                 " were scored by an older version that kept no image stamps: their rows are kept as they are "
                 "(pass --overwrite if the images changed since)")


def _ready_one(path, record, dataset, overwrite, layer, notes):
    """Keep a file's complete rows, relabelled, less those of changed images (also from its
    per-layer file), then write this run's record (overwrite: discard the file first).
    dataset: (labels, order, stamps); layer: (per-layer path, blocks) when this run writes one.
    Returns {path: held keys} for the file and, with `layer`, its per-layer file."""
    labels, order, stamps = dataset
    if overwrite:
        for p in [path, record_path(path), *part_paths(path)]:
            with writing(p), contextlib.suppress(FileNotFoundError):
                os.remove(p)
    if overwrite or not exists(path):
        remove_layers(path)  # a fresh results file: no per-layer rows of another run beside it
    existed = exists(path)
    data = (json.dumps(record, indent=1) + "\n").encode("utf-8")
    if not existed:  # the record first: a results file never exists without one
        write_atomic(record_path(path), data)
    old = read_record(path) if existed else None
    drop, names = changed_pairs(os.path.dirname(path), old, record["images"], stamps, set(labels)) if existed \
        else (set(), [])
    if existed and "images" not in old:
        notes.unstamped.append(path)
    notes.changed.update(names or ())
    if names is None:
        notes.lost.append(path)
    held = {path: done_keys(finish(path, labels, order, drop=drop))}
    lpath, blocks = layer or (layers_path(path), _blocks_in(layers_path(path)))
    if layer or (drop and blocks):
        held[lpath] = done_keys(finish(lpath, labels, order, blocks, drop))
    if existed:  # rows relabelled and cleared first, then the record says what they are
        write_atomic(record_path(path), data)
    return held if layer else {path: held[path]}


def _blocks_in(path):
    """The block numbers of an existing per-layer file's header (None when there is no such file)."""
    if not os.path.isfile(path):
        return None
    header = next(csv.reader(io.StringIO(complete_text(path), newline="")), [])
    return tuple(int(c[6:]) for c in header if c.startswith("block_") and c[6:].isdigit()) or None


def check_resumable(path, record):
    """UserError unless the results file at `path` was made with this run's settings."""
    old = read_record(path)
    if old is None:
        raise UserError(f"{path} has no record of its settings ({os.path.basename(record_path(path))}: a published or "
                        "older results file), so it is not resumed; pass --overwrite to start it afresh")
    diff = first_difference(old, record)
    if diff:
        key, was, now = diff
        raise UserError(f"{path} was made with {key} {was!r}, this run has {now!r}; not resumed: pass --overwrite "
                        "to start it afresh (its rows are discarded) or use another -sdir/-s")
