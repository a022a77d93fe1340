"""Names of the store's files and the checks on them before any work: a results file
`<sdir>/<dataset>_<name>[_<rob>-<pct>].csv`, its record `X.json`, its per-layer file
`X_layers.csv`, torchrun part files `X.csv.rank<r>`; names that are not UTF-8, too long for the
file system, owned by another file of the folder (a summary, another run's per-layer file), or a
folder that cannot be written are refused in one line.
"""
import glob
import os
import re
import tempfile

from zsiqa.errors import UserError, file_problem

SUMMARY_NAME = re.compile(r"summary(_unlabelled)?(\.old-\d+)?\.csv")


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


def layers_path(path):
    """`X_layers.csv` beside results file `X.csv`."""
    return os.path.splitext(path)[0] + "_layers.csv"


def part_paths(path):
    return sorted(glob.glob(glob.escape(path) + ".rank*"))


def exists(path):
    """Whether results file `path` (or a torchrun part of it) exists."""
    return os.path.isfile(path) or bool(part_paths(path))


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


def record_problem(rec):
    """'missing' when there is no record at `rec`, a UserError's text when its place holds
    something else than a file (no tool's record: to be moved away by hand, not overwritten), else None."""
    problem = file_problem(rec)
    if problem in (None, "missing"):
        return problem
    return f"the record {rec} is {problem}, not a file this tool wrote; move it away, then run again"


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
        if (problem := record_problem(record_path(path))) not in (None, "missing"):
            raise UserError(problem)  # --overwrite would remove the results file, then fail on it
        owner = path[: -len("_layers.csv")] + ".csv" if path.endswith("_layers.csv") else None
        if owner and os.path.lexists(record_path(owner)):
            raise UserError(f"{path} is the name of the per-layer file of {owner}, another run's results; "
                            "choose another -s or -sdir")


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
