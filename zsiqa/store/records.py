"""Records: what made a results file's numbers, kept beside X.csv as X.json (`make_records`),
read back with every field's JSON type checked (`read_record`) and compared with a run's own
settings (`first_difference`); and the stamps of the images scored, kept once per content in the
results folder's `.zsiqa/images-<digest>.json`, which tell the rows of a changed image
(`changed_pairs`).
"""
import hashlib
import json
import os

from zsiqa.errors import UserError, writing
from zsiqa.store.csvfiles import write_atomic
from zsiqa.store.naming import record_path, record_problem

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
STAMPS = ".zsiqa"  # the results folder's store of image stamps: images-<digest>.json, shared by its records


def labels_of(pairs):
    """{(dis, ref): label} of a dataset's pairs [(ref, dis, label)] (label None: label-free)."""
    return {(dis, ref): label for ref, dis, label in pairs}


def has_labels(labels):
    """Whether a {(dis, ref): label} map carries labels (a label-free set's are all None)."""
    return any(y is not None for y in labels.values())


def labels_digest(labels):
    """sha256 of the {(dis, ref): label} map in its order: changes with any edited label."""
    text = "".join(f"{dis}\t{ref}\t{float(y)!r}\n" for (dis, ref), y in labels.items())
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    if (problem := record_problem(rec)) == "missing":
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
