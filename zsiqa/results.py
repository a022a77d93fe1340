"""Results files: `<sdir>/<dataset>_<name>[_<rob>-<pct>].csv` (header dis,ref,mos,pred, the
published layout; a label-free set's files, `<set>_<name>_<distance>[_<rob>-<pct>].csv`, have
dis,ref,pred) and everything that keeps them trustworthy.

Beside each `X.csv` a record `X.json` says what made its numbers (dataset, label direction,
model, distance, precision, normalisation, resize, robustness, SWD seed, weights identity and
a digest of the labels; `layers`: the blocks compared, None = all). A run resumes a file only
when the record matches its own settings (labels aside: predictions do not depend on them,
and rows always take the current labels).
A row counts only when its line is complete (newline-terminated, its numbers finite), so a crash
mid-row costs that row, never a wrong number. A lock on `.X.csv.lock` (filelock: flock on Unix,
LockFileEx on Windows; the file holds the pid while a run writes X.csv) keeps a second run off a
file being written; torchrun ranks write `X.csv.rank<r>` part files that
are merged into X.csv. `summary.csv` collects one row per finished file
(`summary_unlabelled.csv` for label-free sets). A label-free record also holds the absolute
reference and output folders (`ref_dir`, `dis_dir`), compared on resume. `--per-layer`
writes `X_layers.csv` beside an l2/cos file `X.csv`: its per-block distances (header
dis,ref,mos,block_<k>…; no mos for label-free sets), whose sum over blocks is X.csv's pred.
Results and per-layer files share one row layout (`Columns`) and one reader, writer and
finisher. Files are created with the user's umask (0644 under umask 022).
"""
import codecs
import contextlib
import csv
import glob
import hashlib
import io
import json
import math
import os
import re
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass

import filelock

from zsiqa.errors import UserError, file_problem, writing

HEADER = ["dis", "ref", "mos", "pred"]
UNLABELLED_HEADER = ["dis", "ref", "pred"]  # a label-free set's files
# the settings a results file's predictions depend on: a run resumes a file only when all agree
# ('published' is fp16 for CLIP on a GPU, fp32 on a CPU, so the device type is compared too)
COMPARED = ("dataset", "model", "distance", "precision", "device", "model_norm", "resize", "robustness", "pct",
            "swd_seed", "weights", "ref_dir", "dis_dir", "layers")
ADDED_LATER = ("device",)  # settings older records lack: not compared when absent
# a record's fields and their JSON types (None: null), checked whenever a record is read: a hand edit such
# as "pred_higher_better": "false" (a string, so true) would otherwise flip every sign in calc_scores
RECORD_TYPES = {"dataset": (str,), "label_higher_better": (bool, None), "pred_higher_better": (bool,), "model": (str,),
                "distance": (str,), "precision": (str,), "device": (str,), "model_norm": (bool,), "resize": (int, None),
                "robustness": (str,), "pct": (int,), "swd_seed": (int,), "weights": (str,), "layers": (str, None),
                "n_labels": (int,), "n_pairs": (int,), "labels_sha256": (str, None), "ref_dir": (str,),
                "dis_dir": (str,), "images": (str,)}
SUMMARY_FIELDS = ["dataset", "model", "distance", "robustness", "pct", "n", "n_skipped", "srcc", "plcc", "krcc",
                  "plcc_logistic", "pairs_per_s", "label_higher_better", "precision", "device", "model_norm", "resize",
                  "swd_seed", "layers", "weights", "labels_sha256", "file", "time", "run_id"]
UNLABELLED_FIELDS = ["set", "model", "distance", "robustness", "pct", "n", "n_skipped", "mean", "std", "median",
                     "ci95_low", "ci95_high", "lower_better", "vs", "n_common", "p_value", "p_holm", "median_diff",
                     "median_diff_ci95_low", "median_diff_ci95_high", "wins", "losses", "n_shared", "n_left_out",
                     "mean_shared", "std_shared", "median_shared", "ci95_shared_low", "ci95_shared_high",
                     "p_holm_min", "verdict", "pairs_per_s", "precision",
                     "device", "model_norm", "resize", "swd_seed", "layers", "limit", "weights", "ref_dir", "dis_dir",
                     "methods", "file", "time", "run_id"]
# what names a label-free summary row: a repeated run with these values replaces its earlier rows
UNLABELLED_KEY = ["set", "model", "distance", "robustness", "pct", "precision", "device", "model_norm", "resize",
                  "swd_seed", "layers", "limit", "weights", "ref_dir", "dis_dir", "methods", "file"]


# ---------------------------------------------------------------- names and records

def results_path(savedir, dataset, model, distance, variant=("", 0), saveas=None, n_distances=1):
    """The seed's naming: <dataset>_<saveas>.csv for one distance with -s, else
    <dataset>_<saveas or model>_<distance>.csv; _<rob>-<pct> for robustness runs
    (n_distances=0: always the latter, as label-free sets are named)."""
    stem = f"{dataset}_{saveas}" if saveas and n_distances == 1 else f"{dataset}_{saveas or model}_{distance}"
    kind, pct = variant
    return os.path.join(savedir, stem + (f"_{kind}-{pct}" if kind else "") + ".csv")


def record_path(path):
    return os.path.splitext(path)[0] + ".json"


def part_path(path, rank):
    return f"{path}.rank{rank}"


def labels_of(pairs):
    """{(dis, ref): label} of a dataset's pairs [(ref, dis, label)] (label None: label-free)."""
    return {(dis, ref): label for ref, dis, label in pairs}


def _labelled(labels):
    """Whether a {(dis, ref): label} map carries labels (a label-free set's are all None)."""
    return any(y is not None for y in labels.values())


def labels_digest(labels):
    """sha256 of the {(dis, ref): label} map in its order: changes with any edited label."""
    text = "".join(f"{dis}\t{ref}\t{float(y)!r}\n" for (dis, ref), y in labels.items())
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_utf8(paths, what, hint):
    """Refuse, before any work, a path that is not valid UTF-8 (on Linux a name's undecodable bytes
    reach Python as surrogates): rows, records and summaries are UTF-8, so it could not be written
    there. `what` names the path in the message, `hint` says what to do."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{what} {os.fsencode(path)!r} is not valid UTF-8 (results files are UTF-8 text); "
                            f"{hint}") from None


def check_names(dataset, pairs):
    """`check_utf8` of the images of `pairs` [(ref, dis, label)], as absolute paths: rows name the
    images, records and summaries their folders."""
    check_utf8((os.path.abspath(p) for ref, dis, _ in pairs for p in (dataset.ref_path(ref), dataset.dis_path(dis))),
               "image", "rename it (or the folder holding it)")


def make_records(dataset, settings, files, images):
    """What makes each results file's numbers, as written to its X.json.

    Args:
        dataset: a datasets.Dataset: its name, label direction and labels (all its pairs', digested).
        settings: `Scorer.settings` (model, precision, device, model_norm, resize, swd_seed, weights; layers when a
            subset of blocks is compared: recorded as None = all blocks otherwise).
        files: {path: (distance, (robustness kind or '', pct), pred_higher_better)}.
        images: the digest of the images' stamps (`save_stamps`): what each scored image was.

    Returns:
        {path: record dict}.
    """
    labelled = getattr(dataset, "labelled", True)
    labels = labels_of(dataset.pairs) if labelled else {}
    base = {"dataset": dataset.name, "label_higher_better": bool(dataset.higher_better), "model": settings["model"],
            "precision": settings["precision"], "device": settings.get("device"),
            "model_norm": bool(settings["model_norm"]),
            "resize": settings["resize"],
            "swd_seed": settings["swd_seed"], "weights": settings["weights"], "layers": settings.get("layers"),
            "n_labels": len(labels),
            "labels_sha256": labels_digest(labels),
            # where the images are: rows name them relative to these, so another copy is another dataset
            "ref_dir": os.path.abspath(dataset.ref_root or dataset.root), "dis_dir": os.path.abspath(dataset.root),
            "images": images}
    if not labelled:
        base.update(label_higher_better=None, labels_sha256=None, n_pairs=len(dataset.pairs))
    return {path: {**base, "distance": d, "pred_higher_better": bool(pred_hb), "robustness": kind or "none",
                   "pct": pct if kind else 0}
            for path, (d, (kind, pct), pred_hb) in files.items()}


def read_record(path, fix=None):
    """The record beside results file `path`, or None when there is none. UserError when it is
    not a readable record (a folder, a FIFO, broken JSON, a field of the wrong type), ending with
    `fix` (default: run.py's --overwrite, which starts the file afresh)."""
    rec = record_path(path)
    fix = fix or f"pass --overwrite to run.py to start {path} afresh"
    if (problem := _not_a_record(rec)) == "missing":
        return None
    if problem:
        raise UserError(problem)
    try:
        with open(rec, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the record {rec}: {e}; {fix}") from None
    if not isinstance(record, dict):
        raise UserError(f"{rec} is not a results record; {fix}")
    _check_types(rec, record, f"correct it, or {fix}")
    return record


def _not_a_record(rec):
    """'missing' when there is no record at `rec`, a UserError's text when its place holds
    something else than a file (no tool's record: to be moved away by hand, not overwritten), else None."""
    problem = file_problem(rec)
    if problem in (None, "missing"):
        return problem
    return f"the record {rec} is {problem}, not a file this tool wrote; move it away, then run again"


def _check_types(rec, record, hint):
    """UserError naming file `rec` and the first field whose JSON type is not RECORD_TYPES' (`hint`: what to do)."""
    for key, kinds in RECORD_TYPES.items():
        value = record.get(key)
        if key in record and not any(_of_type(value, kind) for kind in kinds):
            want = " or ".join(_JSON_NAMES[kind] for kind in kinds)
            got = next((name for kind, name in _JSON_NAMES.items() if _of_type(value, kind)), "a number")
            raise UserError(f"{rec}: {key} is {json.dumps(value)} ({got}), expected {want}; {hint}")


_JSON_NAMES = {bool: "true or false", int: "an integer", str: "a string", None: "null", list: "a list",
               dict: "an object"}


def _of_type(value, kind):
    """Whether a JSON value is of `kind` (None: null); true and false are not integers here."""
    if kind is None:
        return value is None
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def first_difference(old, new):
    """(setting, old value, new value) of the first compared setting that differs, or None."""
    return next(((k, old.get(k), new.get(k)) for k in COMPARED
                 if old.get(k) != new.get(k) and (k in old or k not in ADDED_LATER)), None)


# ---------------------------------------------------------------- what each image was when scored

STAMPS = ".zsiqa"  # the results folder's store of image stamps: images-<digest>.json, shared by its records


def stamp(path):
    """An image file's identity for resume: 'size:mtime_ns:inode:ctime_ns', or None when it
    cannot be read. Regenerating a file (a method's outputs written again), replacing it or
    rewriting it under an old modification time (os.utime, an archive's timestamps) changes it
    (the ctime cannot be set back), so rows scored from the earlier file are not trusted;
    reading every image's content would cost a pass over the dataset."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


def image_stamps(dataset, pairs):
    """{'ref': {name: stamp}, 'dis': {name: stamp}} of the images of a set's pairs [(ref, dis, label)]."""
    return {"ref": {ref: stamp(dataset.ref_path(ref)) for ref in dict.fromkeys(r for r, _, _ in pairs)},
            "dis": {dis: stamp(dataset.dis_path(dis)) for dis in dict.fromkeys(d for _, d, _ in pairs)}}


def save_stamps(savedir, stamps):
    """Keep `stamps` in the results folder's store (once per content) and return their digest,
    which the records of the files scored from these images hold."""
    data = json.dumps(stamps, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()[:24]
    path = _stamps_path(savedir, digest)
    if not os.path.isfile(path):
        with writing(path, "nothing was written"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, data)
    return digest


def _stamps_path(savedir, digest):
    return os.path.join(savedir, STAMPS, f"images-{digest.split(':')[-1]}.json")


def changed_pairs(savedir, old, digest, stamps, keys):
    """The (dis, ref) of `keys` (rows a file holds) whose images differ from when they were
    scored, by the old record's stamps (`digest`, `stamps`: the images' now); with the names of
    the changed images.

    Returns:
        (set of keys to score again, [changed image names]). An old record without stamps (an
        older version's) keeps its rows; one whose stamps are lost from the store has every
        row scored again (names None: unknown which)."""
    was = (old or {}).get("images")
    if was is None or was == digest or not keys:
        return set(), []
    try:
        with open(_stamps_path(savedir, was), encoding="utf-8") as f:
            was = json.load(f)
        was_ref, was_dis = dict(was["ref"]), dict(was["dis"])
    except (OSError, ValueError, KeyError, TypeError):
        return set(keys), None
    ref = {n for n, v in stamps["ref"].items() if n in was_ref and was_ref[n] != v}
    dis = {n for n, v in stamps["dis"].items() if n in was_dis and was_dis[n] != v}
    return {(d, r) for d, r in keys if d in dis or r in ref or d not in was_dis or r not in was_ref}, sorted(ref | dis)


# ---------------------------------------------------------------- reading

def complete_text(path, whole=False, told=False):
    """The file's text up to the end of its last complete row: a torn last row (a crash
    mid-row) is left out (whole=True: all of it, for files not written by run.py). A row ends
    at a newline outside quotes: a quoted name may hold newlines of its own.

    told=True, for a reader of a file a person may have edited (calc_scores): what is left out
    is said in a warning (a last line without its newline, a last row cut inside a quoted name),
    and a quote that never closes, which would leave out the rows after it, is refused with its
    line."""
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(codecs.BOM_UTF8):  # a file re-saved by Excel or Notepad: the mark is not part of the header
        data = data[len(codecs.BOM_UTF8):]
    if whole:
        return data.decode("utf-8", errors="replace")
    end = data.rfind(b"\n")
    while end >= 0 and data.count(b'"', 0, end) % 2:  # inside a quoted field: not a row's end
        end = data.rfind(b"\n", 0, end)
    left, line = data[end + 1:], data.count(b"\n", 0, end + 1) + 1
    if told and left.count(b"\n") > 1:  # more than one row's worth: not a row cut short but a quote left open
        raise UserError(f"{path} line {line}: a quote opens a field that never closes, so no row after it can be "
                        "read; correct that line")
    if told and left.strip():
        what = "the last line has no newline" if b"\n" not in left else "the last row is incomplete"
        sys.stderr.write(f"warning: {path} line {line}: {what} (a row cut short?); left out\n")
    return data[: end + 1].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Columns:
    """A results file's row layout: dis, ref, mos (labelled sets only), then its values: `pred`
    in a results file, block_<k>… in a per-layer file (`blocks`: the 1-based blocks)."""
    labelled: bool = True
    blocks: tuple = ()

    @property
    def values(self):
        return [f"block_{b}" for b in self.blocks] or ["pred"]

    @property
    def header(self):
        return ["dis", "ref", *(["mos"] if self.labelled else []), *self.values]

    def row(self, dis, ref, mos, values):
        """One row's fields (mos left out of a label-free file)."""
        return [dis, ref, float(mos), *map(float, values)] if self.labelled else [dis, ref, *map(float, values)]


PRED = Columns()  # a labelled results file: dis,ref,mos,pred


def read_done(path, columns=PRED):
    """Complete rows of a results, per-layer or part file: {(dis, ref): (mos, (values…))}, mos
    None in a label-free file; {} if absent. The header must be `columns`' with or without mos.
    A row counts when its line is newline-terminated and its numbers parse (`_float`; nan/inf
    kept: an engine's NaN is a result to report; `done_keys` leaves such rows out, so a resume
    scores them again)."""
    if not os.path.isfile(path):
        return {}
    rows = _cells(csv.reader(io.StringIO(complete_text(path), newline="")))
    header = next(rows, None)
    if header is None:
        return {}
    forms = [Columns(labelled, columns.blocks).header for labelled in (True, False)]
    if header not in forms:
        raise UserError(f"{path} has header {','.join(header)[:80]!r}, this run writes "
                        f"{','.join(forms[not columns.labelled])[:80]!r}; pass --overwrite to start it afresh")
    done, labelled = {}, header == forms[0]
    for row in rows:
        numbers = [_float(x) for x in row[2:]]  # mos (labelled files), then the values
        if len(row) == len(header) and None not in numbers:
            done[(row[0], row[1])] = (numbers[0], tuple(numbers[1:])) if labelled else (None, tuple(numbers))
    return done


def done_keys(rows):
    """The (dis, ref) of finished rows [(dis, ref, mos, values)] whose values are all finite
    (nan/inf, a hand edit or an engine's overflow, are scored again on resume)."""
    return {(dis, ref) for dis, ref, _, values in rows if all(map(math.isfinite, values))}


def read_frame(path, fix=None):
    """A results file's rows as a DataFrame (dis, ref, mos, pred) and its record (or None):
    complete rows only when it has a record (run.py wrote it), all of a published file.
    UserError when missing, unreadable, lacking a column or holding a bad row (`read_table`,
    `number_frame`), or when its record is broken (`read_record`, ending with `fix`)."""
    if not os.path.isfile(path):
        raise UserError(f"results file not found: {path}")
    record = read_record(path, fix)
    header, rows = read_table(path, whole=record is None)
    missing = [c for c in HEADER if c not in header]
    if header == UNLABELLED_HEADER:
        raise UserError(f"{path} is a label-free results file (dis,ref,pred): it has no labels to correlate with; "
                        "its statistics are in summary_unlabelled.csv")
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; expected header dis,ref,mos,pred")
    if record is not None:  # run.py wrote it: a pair the engine scored NaN/inf is left out, as in its summary
        k = header.index("pred")
        rows, _ = drop_nonfinite(path, rows, lambda r: _float(r[1][k]), lambda r: r[1][0])
    if not rows:
        raise UserError(f"{path} holds no complete rows")
    return number_frame(path, header, rows, ["mos", "pred"]), record


def drop_nonfinite(path, rows, score_of, name_of):
    """(the rows whose score is not NaN/inf, how many were): a pair the engine scored NaN or inf
    (e.g. a half-precision overflow) stays in the results file but is left out of statistics,
    said in one warning line naming the first. One rule for run.py's summary and calc_scores.
    score_of(row) → float, or None (unparsed: kept, for the strict reader to name)."""
    scores = [score_of(r) for r in rows]
    bad = [r for r, v in zip(rows, scores, strict=True) if v is not None and not math.isfinite(v)]
    if not bad:
        return rows, 0
    sys.stderr.write(f"warning: {path}: {len(bad)} pair(s) scored NaN or inf (first {name_of(bad[0])}); "
                     f"kept in the file, left out of the statistics\n")
    return [r for r, v in zip(rows, scores, strict=True) if v is None or math.isfinite(v)], len(bad)


def read_table(path, whole=False):
    """(header, [(line, row)]) of a CSV file read for correlations (calc_scores: a results or
    per-layer file), blank lines left out; complete rows only, a repeated (dis, ref) pair
    collapsed to its last row, unless `whole` (a published file, `complete_text`).
    UserError naming the file, and the line where one applies, when it cannot be read or is
    empty, a column name repeats, a row has another number of fields than the header, or the
    header comes again (two files joined): such a file has no one meaning to compute from."""
    try:
        reader = csv.reader(io.StringIO(complete_text(path, whole, told=True), newline=""))
        header, rows, line = next(reader, None), [], reader.line_num + 1
        if not header:
            raise UserError(f"{path} is empty: no header")
        if len(set(header)) < len(header):
            raise UserError(f"{path} has a column name twice in its header {','.join(header)[:80]!r}")
        for row in _cells(reader):
            if row == header:
                raise UserError(f"{path} line {line}: the header again (two files joined?); keep one header")
            if row and len(row) != len(header):
                raise UserError(f"{path} line {line}: {len(row)} field(s), the header has {len(header)}")
            rows += [(line, row)] if row else []
            line = reader.line_num + 1
    except (OSError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    return header, (rows if whole else _last_of_each_pair(path, header, rows))


def _last_of_each_pair(path, header, rows):
    """Rows [(line, row)] with a (dis, ref) pair that comes again later collapsed to its last
    row, said in one warning line: a pair counted twice would skew every coefficient. Only for
    files this tool wrote: published files may name two images alike (LIVE's img38.bmp is in
    jp2k/ and in wn/, and its files give the name without the folder)."""
    if "dis" not in header or "ref" not in header:
        return rows
    i, j = header.index("dis"), header.index("ref")
    last = {(row[i], row[j]): k for k, (_, row) in enumerate(rows)}
    if len(last) == len(rows):
        return rows
    keep = set(last.values())
    first = next(line for k, (line, _) in enumerate(rows) if k not in keep)
    sys.stderr.write(f"warning: {path}: {len(rows) - len(keep)} row(s) repeat a (dis, ref) pair that comes again "
                     f"later (first at line {first}); the last row of each pair is used\n")
    return [row for k, row in enumerate(rows) if k in keep]


def number_frame(path, header, rows, numeric):
    """The rows [(line, row)] of `read_table` as a DataFrame, the `numeric` columns as floats.
    UserError naming the file, line and column of the first value that is blank, not a number,
    or not finite (inf, nan): any of them would make the coefficients NaN or meaningless.
    The one rule for the numbers calc_scores computes from."""
    import pandas as pd
    columns = {name: [row[k] for _, row in rows] for k, name in enumerate(header)}
    for name in numeric:
        k = header.index(name)
        columns[name] = [_finite(path, line, name, row[k]) for line, row in rows]
    return pd.DataFrame(columns, columns=header)


def parsed(cell):
    """A CSV cell as a float for `drop_nonfinite`: its number (nan and inf included), 0.0 when it
    is blank or not a number (left for the strict reader to refuse)."""
    value = _float(cell)
    return 0.0 if value is None else value


def _float(cell):
    """A CSV cell's float (nan and inf included), or None when it is blank or not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def _number(cell):
    """A CSV cell's finite float, or None (blank, not a number, inf, nan): the numbers
    calc_scores computes from (strictly, in `number_frame`)."""
    value = _float(cell)
    return value if value is not None and math.isfinite(value) else None


def _finite(path, line, column, cell):
    """`_number(cell)`, or UserError naming the file, line and column when it is None."""
    value = _number(cell)
    if value is None:
        raise UserError(f"{path} line {line}: {column} is " + (f"{cell!r}, not a finite number" if cell.strip()
                                                                else "blank"))
    return value


# ---------------------------------------------------------------- writing

def _write_all(f, data):
    """Write bytes to an unbuffered file, all of them (the one place rows reach the disk)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _csv_line(values):
    """One CSV row as UTF-8 bytes ending in a newline; every file this module writes is made of
    these. A field holding \\r or \\n (a file name may), a quote or a comma is quoted, so the row
    reads back whole: the csv writer quotes only its own line terminator's characters, so it is
    given \\r\\n and the row's end put back to \\n. Text a spreadsheet would evaluate gets a
    quote first (`to_cell`); numbers are written as they are."""
    texts = [to_cell(v) if isinstance(v, str) else "" if v is None else str(v) for v in values]
    joined = ",".join(texts)
    if all(texts) and joined.count(",") == len(texts) - 1 and not _NEEDS_QUOTES.search(joined):
        return (joined + "\n").encode("utf-8")  # what the csv writer gives, without it (most rows: 10× faster)
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(texts)
    return (out.getvalue()[:-2] + "\n").encode("utf-8")


_NEEDS_QUOTES = re.compile(r'["\r\n]')
FORMULA_START = "=+-@\t\r"  # a cell starting so is a formula to a spreadsheet (OWASP's CSV injection)
TMP_NAME_MAX = 200  # bytes of a file's name kept in its temporary file's name (NAME_MAX is 255)


def to_cell(text):
    """Text as a CSV cell a spreadsheet shows as text: a name starting with = + - @, a tab or a
    carriage return (a formula to Excel, LibreOffice, Google Sheets) gets a single quote in front,
    as does one starting with a quote, so that `from_cell` gives every name back exactly."""
    return "'" + text if text and text[0] in FORMULA_START + "'" else text


def from_cell(text):
    """The text `to_cell` was given: one leading quote removed where `to_cell` put it (a quote
    followed by = + - @, a tab, a carriage return or another quote); any other cell as it is."""
    return text[1:] if len(text) > 1 and text[0] == "'" and text[1] in FORMULA_START + "'" else text


def _cells(reader):
    """The rows of a csv.reader with each cell `from_cell`'d."""
    return ([from_cell(c) for c in row] for row in reader)


def _csv_text(rows):
    """Rows as CSV bytes, each by `_csv_line`."""
    return b"".join(_csv_line(row) for row in rows)


def write_atomic(path, data):
    """Write bytes to `path` atomically: a temporary file beside it (created with mode 0666 less the
    umask, as any new file), then a rename over it. A symlink at `path` is replaced, never followed,
    and an interruption leaves the old file or the new one, never a part of it. Every file of a
    run is written so (reports, charts and maps too). UserError (`writing`) when it cannot be."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name if len(os.fsencode(name)) <= TMP_NAME_MAX else 'zsiqa'}."
                               f"{secrets.token_hex(4)}.tmp")
    with writing(path):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                _write_all(f, data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


class RowWriter:
    """Appends finished rows to results, per-layer or part files as they come, in whole lines,
    gathered for a fraction of a second (`FLUSH_S`) so that a fast GPU run is not slowed by a
    system call per row: Ctrl-C or a crash leaves valid files, and costs at most the rows not
    yet flushed, which a resume scores again. A failed write (a full disk) truncates the torn
    data away and stops with one line: rows already written stay valid.

    A pair a file already holds (`held`) is never appended to it again. At close, a file that
    was replaced or removed under the run (an editor saving by rename, `sed -i`, `rm`) gets this
    run's rows again at its path, so none is lost with the old file, and one truncated in place
    (`: > X.csv`) is written again, header first (`replaced` names both kinds).

    Args:
        paths: {key: path}. columns: {key: Columns} (or one Columns for every file).
        held: {key: set of (dis, ref) the file holds already}."""

    FLUSH_S, FLUSH_BYTES = 0.5, 1 << 16

    def __init__(self, paths, columns=PRED, held=None):
        self.paths, self.files, self.ends, self.replaced, self.truncated = dict(paths), {}, {}, [], set()
        self.columns = columns if isinstance(columns, dict) else dict.fromkeys(self.paths, columns)
        self.held = {key: set((held or {}).get(key, ())) for key in self.paths}
        self.written = {key: bytearray() for key in self.paths}  # this run's rows, for a replaced file
        self.pending, self.pending_bytes, self.flushed = {key: [] for key in self.paths}, 0, time.monotonic()
        try:
            for key, path in self.paths.items():
                with writing(path):
                    f = self.files[key] = open(path, "ab", buffering=0)
                    if f.tell() == 0:
                        _write_all(f, _csv_line(self.columns[key].header))
                    self.ends[key] = f.tell()
        except BaseException:
            self.close()
            raise

    def write(self, key, dis, ref, mos, values):
        """Add one row (unless the file holds the pair): values is the sequence of the file's
        value columns (pred, or blocks)."""
        if (dis, ref) in self.held[key]:
            return
        line = _csv_line(self.columns[key].row(dis, ref, mos, values))
        self.held[key].add((dis, ref))
        self.pending[key].append(line)
        self.pending_bytes += len(line)
        if self.pending_bytes > self.FLUSH_BYTES or time.monotonic() - self.flushed > self.FLUSH_S:
            self.flush()

    def flush(self):
        """Write the gathered rows, each file's in one system call."""
        for key, lines in self.pending.items():
            if lines:
                data = b"".join(lines)
                self._append(key, data)
                self.written[key] += data
        self.pending, self.pending_bytes, self.flushed = {key: [] for key in self.paths}, 0, time.monotonic()

    def _append(self, key, data):
        f = self.files[key]
        try:
            _write_all(f, data)
        except OSError as e:
            with contextlib.suppress(OSError):
                f.truncate(self.ends[key])
            raise UserError(f"cannot write {self.paths[key]}: {e.strerror or e}; the rows written before are kept "
                            "(run again to score the rest)") from None
        if f.tell() < self.ends[key] + len(data):  # appended at a shorter end: truncated under us
            self.truncated.add(key)
        self.ends[key] = f.tell()

    def close(self):
        try:
            self.flush()
        finally:
            for key, f in self.files.items():
                with contextlib.suppress(OSError):
                    moved = not _same_file(f, self.paths[key])
                    f.close()
                    if key in self.truncated and not moved:
                        self._write_over(key)
                    elif moved and self.written[key]:
                        self._write_again(key)

    def _write_again(self, key):
        """This run's rows at the file's path again: the file it wrote to is gone from there."""
        path = self.paths[key]
        with writing(path, "the rows of this run are lost with the replaced file"), open(path, "a+b", buffering=0) as f:
            start = _line_start(f)
            _write_all(f, (_csv_line(self.columns[key].header) if f.tell() == 0 else start)
                       + self.written[key])
        self.replaced.append(path)

    def _write_over(self, key):
        """A file truncated under the run holds some of this run's rows without a header: it gets
        the header and all of them (what the truncation removed of earlier runs is scored again)."""
        write_atomic(self.paths[key], _csv_line(self.columns[key].header) + bytes(self.written[key]))
        self.replaced.append(self.paths[key])


def _same_file(f, path):
    """Whether the open file `f` is still the file at `path`."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


SUMMARY_NAME = re.compile(r"summary(_unlabelled)?(\.old-\d+)?\.csv")


def check_file_names(paths):
    """UserError, before any work, for a results file whose name another file of the folder owns:
    a summary's, or one whose per-layer name `X_layers.csv` is another run's results file (a
    fresh X.csv would delete it), or that is itself the per-layer file of a results file; or
    whose record's place holds a folder or a special file."""
    for path in paths:
        name, lpath = os.path.basename(path), layers_path(path)
        if SUMMARY_NAME.fullmatch(name):
            raise UserError(f"results file {path} would take the name of a summary file; choose another -s")
        if os.path.lexists(record_path(lpath)):
            raise UserError(f"{lpath}, the per-layer file of {path}, is the results file of another run (its "
                            f"record {os.path.basename(record_path(lpath))} is beside it); choose another -s or -sdir")
        if (problem := _not_a_record(record_path(path))) not in (None, "missing"):
            raise UserError(problem)  # --overwrite would remove the results file, then fail on it
        owner = path[: -len("_layers.csv")] + ".csv" if path.endswith("_layers.csv") else None
        if owner and os.path.lexists(record_path(owner)):
            raise UserError(f"{path} is the name of the per-layer file of {owner}, another run's results; "
                            "choose another -s or -sdir")


def layers_path(path):
    """`X_layers.csv` beside results file `X.csv`."""
    return os.path.splitext(path)[0] + "_layers.csv"


def _parts(path):
    return sorted(glob.glob(glob.escape(path) + ".rank*"))


def collect(path, columns=PRED):
    """Complete rows of a file and of its torchrun part files, merged (`read_done`)."""
    done = read_done(path, columns)
    for part in _parts(path):
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
    columns = Columns(_labelled(labels), tuple(blocks))
    done = collect(path, columns)
    for key in drop:
        done.pop(key, None)
    in_order = dict.fromkeys(order)
    keys = [k for k in order if k in done] + [k for k in done if k in labels and k not in in_order]
    rows = [(dis, ref, labels[(dis, ref)], done[(dis, ref)][1]) for dis, ref in keys]
    write_atomic(path, _csv_text([columns.header, *(columns.row(*row) for row in rows)]))
    for part in _parts(path):
        os.remove(part)
    return rows[: sum(k in done for k in order)]


def remove_layers(path):
    """Delete results file `path`'s per-layer file and its part files (stale rows)."""
    lp = layers_path(path)
    for p in [lp, *_parts(lp)]:
        with writing(p), contextlib.suppress(FileNotFoundError):
            os.remove(p)


def exists(path):
    """Whether results file `path` (or a torchrun part of it) exists."""
    return os.path.isfile(path) or bool(_parts(path))


@dataclass
class _Notes:
    """What `prepare` found about the images behind the rows it kept, said once at the end."""
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


def prepare(sets, overwrite=False, layers=None, warn=None):
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
            done.update(_prepare_one(path, record, (labels, order, stamps), overwrite, layers.get(path), notes))
    notes.say(warn)
    return done


def _prepare_one(path, record, dataset, overwrite, layer, notes):
    """Keep a file's complete rows, relabelled, less those of changed images (also from its
    per-layer file), then write this run's record (overwrite: discard the file first).
    dataset: (labels, order, stamps); layer: (per-layer path, blocks) when this run writes one.
    Returns {path: held keys} for the file and, with `layer`, its per-layer file."""
    labels, order, stamps = dataset
    if overwrite:
        for p in [path, record_path(path), *_parts(path)]:
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


# ---------------------------------------------------------------- the folder

def check_lengths(paths, what, hint):
    """Refuse, before any work, an output path the file system cannot hold: a name (one path
    component, or the temporary name it is written under) over NAME_MAX bytes (255 on most
    file systems) or the whole absolute path over PATH_MAX (4096 on Linux). `what` names the
    path in the one line, `hint` says what to do."""
    limits = {}
    for path in paths:
        full = os.path.abspath(path)
        folder = os.path.dirname(full)
        if folder not in limits:
            limits[folder] = _limits(folder)
        name_max, path_max = limits[folder]
        parts = [os.fsencode(p) for p in full.split(os.sep)]
        longest = max(parts, key=len)
        if len(longest) > name_max:
            raise UserError(f"{what} {_short(path)}: the name {_short(os.fsdecode(longest))} is {len(longest)} bytes "
                            f"long, more than the file system's {name_max}; {hint}")
        if len(os.fsencode(full)) >= path_max:
            raise UserError(f"{what} {_short(path)}: the path is {len(os.fsencode(full))} bytes long, more than the "
                            f"file system's {path_max - 1}; {hint}")


def _limits(folder):
    """(NAME_MAX, PATH_MAX) where `folder` is (or would be made), from its nearest existing
    folder; 255 and 4096 where the system does not say."""
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    got = []
    for key, default in (("PC_NAME_MAX", 255), ("PC_PATH_MAX", 4096)):
        try:
            got.append(os.pathconf(folder, key) or default)
        except (AttributeError, OSError, ValueError):
            got.append(default)
    return tuple(got)


def _short(text, n=60):
    """A long name cut for a message: its first `n` characters and an ellipsis, as repr."""
    return repr(text if len(text) <= n else text[:n] + "…")


def check_writable(folder):
    """Refuse, before any work, a results folder that cannot be written: a file in its
    place, a read-only or forbidden folder. Creates nothing (the folder is made later)."""
    probe = os.path.abspath(folder)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)  # the nearest existing folder: it is made there
    if not os.path.isdir(probe):
        raise UserError(f"cannot write results to {folder}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise UserError(f"cannot write results to {folder}: {e.strerror or e} in {probe}") from None


def write_table(path, fields, rows):
    """Write rows (dicts; other keys ignored) under the header `fields`, atomically. Returns path."""
    write_atomic(path, _csv_text([fields, *([row.get(k, "") for k in fields] for row in rows)]))
    return path


def append_summary(savedir, rows, name="summary", fields=SUMMARY_FIELDS, key=()):
    """Add rows to <savedir>/<name>.csv (`fields`). A summary file with another header (an
    older version's) is renamed <name>.old-<k>.csv first and a fresh one started, so every
    summary file stays readable with its own header; one whose last line lacks its newline gets
    it first, so the new rows start on a line of their own.

    key: the fields that name a row: earlier rows with the same values there (a repeated run with
    the same settings) are replaced, the file rewritten atomically; without it, rows are appended."""
    path = os.path.join(savedir, f"{name}.csv")
    with _summary_lock(path):
        _append_summary(path, savedir, name, rows, fields, key)


SUMMARY_WAIT_S = 120  # how long a run waits for another run's summary update (milliseconds, normally)


@contextlib.contextmanager
def _summary_lock(path):
    """Hold `lock_path(path)`, waiting for a concurrent run's update of the same summary file
    (read, filter, rewrite: unlocked, two runs could each drop the other's rows)."""
    lock = acquire(lock_path(path), SUMMARY_WAIT_S, "the results files are complete",
                   lambda: f"{path} stayed locked by another run for {SUMMARY_WAIT_S} s; the results files are "
                           "complete, and this run's summary rows were not added")
    try:
        yield
    finally:
        lock.release()


def _append_summary(path, savedir, name, rows, fields, key):
    """append_summary's work, under the summary's lock."""
    header = None
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = next(csv.reader(f), None)
    if header is not None and header != fields:
        k = 1
        while os.path.exists(os.path.join(savedir, f"{name}.old-{k}.csv")):
            k += 1
        old = os.path.join(savedir, f"{name}.old-{k}.csv")
        with writing(path):
            os.replace(path, old)
        sys.stderr.write(f"warning: {path} had an older header; moved to {old}, a new {name}.csv is started\n")
        header = None
    data = _csv_text([[row.get(k, "") for k in fields] for row in rows])
    if key and header is not None:
        at = [fields.index(k) for k in key]
        new = {tuple(r[i] for i in at) for r in _cells(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))}
        kept = [r for r in list(_cells(csv.reader(io.StringIO(complete_text(path, whole=True), newline=""))))[1:]
                if r and tuple(r[i] if i < len(r) else None for i in at) not in new]
        write_atomic(path, _csv_text([fields, *kept]) + data)
        return
    with writing(path, "the results files are complete"), open(path, "a+b", buffering=0) as f:
        _write_all(f, _line_start(f) + (_csv_line(fields) if header is None else b"") + data)


def _line_start(f):
    """A newline when file `f` (open for reading and appending) is not empty and lacks a final newline (a
    hand edit, or a write cut short): what an appended row needs to start a line of its own; else nothing."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    f.seek(end - 1)
    return b"" if f.read(1) == b"\n" else b"\n"


# ---------------------------------------------------------------- the lock

def lock_path(path):
    """The hidden lock file `.X.csv.lock` beside results file `X.csv`."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.lock")


class Lock:
    """Exclusive, non-blocking locks (filelock) on each results file's `lock_path`, held for a
    run's duration: a second run on a file being written stops at once, naming the pid that
    holds it (written into the lock file while held, emptied before release)."""

    def __init__(self, paths, hint="use another -sdir/-s", name=None):
        self.held = []
        try:
            for path in dict.fromkeys(paths):
                self.held.append(_lock_one(path, hint, (name or lock_path)(path)))
        except BaseException:
            self.release()
            raise

    def release(self):
        for lock in self.held:
            with contextlib.suppress(OSError):
                with open(lock.lock_file, "r+b") as f:
                    f.truncate(0)  # emptied while still held: a later holder writes its own pid
            lock.release()
        self.held = []

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.release()


def _holder(name):
    """The pid written in a lock file by the run holding it ('unknown' when unreadable)."""
    try:
        with open(name, "rb") as f:
            return f.read(32).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _file_mode():
    """0666 less the umask: lock files as open to the user's group as the results beside them
    (filelock 3 made them 0644 whatever the umask, so a group sharing a folder could not lock)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def acquire(name, timeout, kept, busy):
    """The filelock on file `name`, waiting up to `timeout` s; UserError `busy()` when another
    process holds it that long, or why it cannot be taken, then `kept` (what is safe)."""
    lock = filelock.FileLock(name, timeout=timeout, mode=_file_mode())
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if not timeout:
                raise
            sys.stderr.write(f"waiting for another run to release {name} (up to {timeout} s)\n")
            lock.acquire()
    except filelock.Timeout:  # an OSError too: caught first
        raise UserError(busy()) from None
    except OSError as e:
        raise UserError(f"cannot lock {name}: {e.strerror or e}; {kept}") from None
    return lock


def _lock_one(path, hint, name):
    """Take lock file `name` of one results file (or report folder) `path`, or UserError naming
    the run that holds it and what to do (`hint`)."""
    with writing(name, "nothing was written"):
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    lock = acquire(name, 0, "nothing was written",
                   lambda: f"{path} is being written by another run (pid {_holder(name)}); wait for it to finish "
                           f"or {hint}")
    with contextlib.suppress(OSError), open(name, "r+b") as f:  # best effort: the pid only names the holder
        f.truncate(0)
        f.write(f"{os.getpid()}\n".encode())
    return lock
