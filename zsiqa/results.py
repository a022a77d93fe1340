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

This module is the store's entry point: it re-exports the public names of the modules of
zsiqa/store/, each with one job (imports run one way, top to bottom):

    summaries  summary.csv / summary_unlabelled.csv rows, under the summary's lock
    resume     check_resumable, prepare (before a run), collect and finish (after it)
    rows       the row layout (Columns), the rows a file holds (read_done), RowWriter
    tables     reading results files for correlations (read_table, read_frame, number_frame)
    records    X.json records (make_records, read_record) and the images' stamps
    naming     the files' names and the checks on them before any work
    csvfiles   rows as bytes, torn-row reading, spreadsheet-safe cells, write_atomic
    locks      Lock, acquire, lock_path

Setting a constant here (SUMMARY_WAIT_S, say) changes nothing: set it on its module.
"""
from zsiqa.store.csvfiles import (
    FORMULA_START,
    TMP_NAME_MAX,
    complete_text,
    from_cell,
    to_cell,
    write_atomic,
    write_table,
)
from zsiqa.store.locks import Lock, acquire, lock_path
from zsiqa.store.naming import (
    SUMMARY_NAME,
    check_file_names,
    check_lengths,
    check_names,
    check_utf8,
    check_writable,
    exists,
    layers_path,
    part_path,
    record_path,
    results_path,
)
from zsiqa.store.records import (
    ADDED_LATER,
    COMPARED,
    RECORD_TYPES,
    STAMPS,
    changed_pairs,
    first_difference,
    image_stamps,
    labels_digest,
    labels_of,
    make_records,
    read_record,
    save_stamps,
    stamp,
)
from zsiqa.store.resume import check_resumable, collect, finish, prepare, remove_layers
from zsiqa.store.rows import PRED, Columns, RowWriter, done_keys, read_done
from zsiqa.store.summaries import SUMMARY_FIELDS, SUMMARY_WAIT_S, UNLABELLED_FIELDS, UNLABELLED_KEY, append_summary
from zsiqa.store.tables import HEADER, UNLABELLED_HEADER, drop_nonfinite, number_frame, parsed, read_frame, read_table

__all__ = [
    # csvfiles
    "FORMULA_START", "TMP_NAME_MAX", "complete_text", "from_cell", "to_cell", "write_atomic", "write_table",
    # locks
    "Lock", "acquire", "lock_path",
    # naming
    "SUMMARY_NAME", "check_file_names", "check_lengths", "check_names", "check_utf8", "check_writable", "exists",
    "layers_path", "part_path", "record_path", "results_path",
    # records
    "ADDED_LATER", "COMPARED", "RECORD_TYPES", "STAMPS", "changed_pairs", "first_difference", "image_stamps",
    "labels_digest", "labels_of", "make_records", "read_record", "save_stamps", "stamp",
    # resume
    "check_resumable", "collect", "finish", "prepare", "remove_layers",
    # rows
    "PRED", "Columns", "RowWriter", "done_keys", "read_done",
    # summaries
    "SUMMARY_FIELDS", "SUMMARY_WAIT_S", "UNLABELLED_FIELDS", "UNLABELLED_KEY", "append_summary",
    # tables
    "HEADER", "UNLABELLED_HEADER", "drop_nonfinite", "number_frame", "parsed", "read_frame", "read_table",
]

