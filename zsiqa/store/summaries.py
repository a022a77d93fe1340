"""Summaries: one row per finished results file in `<sdir>/summary.csv` (`summary_unlabelled.csv`
for label-free sets), added under the summary's lock so that two runs never drop each other's
rows; a repeated run's rows replace its earlier ones (`key`), and a summary with an older header
is moved aside, never mixed.
"""
import contextlib
import csv
import io
import os
import sys

from zsiqa.errors import writing
from zsiqa.store.csvfiles import cells, complete_text, csv_line, csv_text, line_start, write_all, write_atomic
from zsiqa.store.locks import acquire, lock_path

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
SUMMARY_WAIT_S = 120  # how long a run waits for another run's summary update (milliseconds, normally)


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
    data = csv_text([[row.get(k, "") for k in fields] for row in rows])
    if key and header is not None:
        at = [fields.index(k) for k in key]
        new = {tuple(r[i] for i in at) for r in cells(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))}
        kept = [r for r in list(cells(csv.reader(io.StringIO(complete_text(path, whole=True), newline=""))))[1:]
                if r and tuple(r[i] if i < len(r) else None for i in at) not in new]
        write_atomic(path, csv_text([fields, *kept]) + data)
        return
    with writing(path, "the results files are complete"), open(path, "a+b", buffering=0) as f:
        write_all(f, line_start(f) + (csv_line(fields) if header is None else b"") + data)
