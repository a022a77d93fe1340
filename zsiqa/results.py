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
    resume     check_resumable, ready_files (before a run), collect and finish (after it)
    rows       the row layout (Columns), the rows a file holds (read_done), RowWriter
    tables     reading results files for correlations (read_table, read_frame, number_frame)
    records    X.json records (make_records, read_record) and the images' stamps
    naming     the files' names and the checks on them before any work
    csvfiles   rows as bytes, torn-row reading, spreadsheet-safe cells, write_atomic
    locks      Lock, acquire, lock_path

and `Store`: one results folder bound to those functions, a method per step of a run.
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
from zsiqa.store.locks import REPORT_LOCK, Lock, acquire, lock_path, report_lock
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
from zsiqa.store.resume import check_resumable, collect, finish, ready_files, remove_layers
from zsiqa.store.rows import PRED, Columns, RowWriter, done_keys, read_done
from zsiqa.store.summaries import SUMMARY_FIELDS, SUMMARY_WAIT_S, UNLABELLED_FIELDS, UNLABELLED_KEY, append_summary
from zsiqa.store.tables import HEADER, UNLABELLED_HEADER, drop_nonfinite, number_frame, parsed, read_frame, read_table

__all__ = [
    # csvfiles
    "FORMULA_START", "TMP_NAME_MAX", "complete_text", "from_cell", "to_cell", "write_atomic", "write_table",
    # locks
    "Lock", "REPORT_LOCK", "acquire", "lock_path", "report_lock",
    # naming
    "SUMMARY_NAME", "check_file_names", "check_lengths", "check_names", "check_utf8", "check_writable", "exists",
    "layers_path", "part_path", "record_path", "results_path",
    # records
    "ADDED_LATER", "COMPARED", "RECORD_TYPES", "STAMPS", "changed_pairs", "first_difference", "image_stamps",
    "labels_digest", "labels_of", "make_records", "read_record", "save_stamps", "stamp",
    # resume
    "check_resumable", "collect", "finish", "ready_files", "remove_layers",
    # rows
    "PRED", "Columns", "RowWriter", "done_keys", "read_done",
    # summaries
    "SUMMARY_FIELDS", "SUMMARY_WAIT_S", "UNLABELLED_FIELDS", "UNLABELLED_KEY", "append_summary",
    # tables
    "HEADER", "UNLABELLED_HEADER", "drop_nonfinite", "number_frame", "parsed", "read_frame", "read_table",
    # this module
    "Store",
]


class Store:
    """One results folder (the eval command's -sdir) and the files a run keeps there, each method
    one step of a run, in the order a run takes them:

        store = Store(sdir)
        paths = {key: store.path(dataset.name, model, distance, variant, saveas, n)}
        store.check(paths.values(), per_layer)            # before any work: nothing is written
        with store.lock(paths.values()):                    # one run at a time on each file
            records = store.records(dataset, settings, files, stamps)
            held = store.ready_files([(records, labels, order, stamps)], overwrite, layers, warn)
            writer = store.writer(paths, columns, held)     # rows appended as they are scored
            ...; writer.close()
            rows = store.finish(path, labels, order)        # each file merged, ordered, relabelled
            store.summarise(summary_rows)

    Each method wraps the module function it names (documented there) with the folder filled in;
    the functions stay usable on their own.

    Args:
        folder: the results folder (made when the first file is written, not before).
    """

    def __init__(self, folder):
        self.folder = folder

    def path(self, dataset, model, distance, variant=("", 0), saveas=None, n_distances=1):
        """A results file's path in the folder (`results_path`: dataset, model or saveas,
        distance, `variant` (robustness kind or '', pct); n_distances=0: a label-free set's name).

        Returns:
            the path <folder>/<dataset>_<name>[_<rob>-<pct>].csv."""
        return results_path(self.folder, dataset, model, distance, variant, saveas, n_distances)

    def check(self, paths, per_layer=False):
        """Refuse, before any work and writing nothing, results files this run could not keep:
        a folder that cannot be written (`check_writable`), a name that is not UTF-8
        (`check_utf8`), one another file of the folder owns (`check_file_names`), one too long for
        the file system with its record and lock (and per-layer file, `per_layer`:
        `check_lengths`). UserError in one line naming the first.

        Args:
            paths: the results files' paths (`path`).
            per_layer: whether each gets a per-layer file X_layers.csv (--per-layer)."""
        paths = list(paths)
        check_writable(self.folder)
        check_utf8(paths, "results file", "choose another -sdir or -s")
        check_file_names(paths)
        derived = [name for p in paths for name in (p, record_path(p), lock_path(p))]
        derived += [name for p in paths if per_layer for name in (layers_path(p), lock_path(layers_path(p)))]
        check_lengths(derived, "results file", "choose a shorter -sdir, -s or method name")

    def lock(self, paths, hint="use another -sdir/-s"):
        """A `Lock` on each results file, held until released (a context manager): UserError at
        once, naming the holder's pid and `hint`, when another run writes one of them."""
        return Lock(paths, hint)

    def records(self, dataset, settings, files, stamps):
        """This run's record of each results file of one set (`make_records`), the images'
        `stamps` (`image_stamps`) kept in the folder's store (`save_stamps`) and named in them.

        Returns:
            {path: record}, for `ready_files`."""
        return make_records(dataset, settings, files, save_stamps(self.folder, stamps))

    def ready_files(self, sets, overwrite=False, layers=None, warn=None):
        """Every results file made ready for this run: checked resumable, its complete rows
        kept and relabelled, rows of changed images dropped, this run's record written
        (`ready_files`, which documents the arguments).

        Returns:
            {path: set of (dis, ref) it holds}: the `held` of `writer`."""
        return ready_files(sets, overwrite, layers, warn)

    def writer(self, paths, columns=PRED, held=None):
        """A `RowWriter` appending this run's rows to `paths` {key: path} (`columns`: their
        layouts; `held`: {key: pairs the file holds}, never written again). Close it when done."""
        return RowWriter(paths, columns, held)

    def finish(self, path, labels, order, blocks=(), drop=()):
        """A results (or, with `blocks`, per-layer) file merged with its part files and rewritten
        in dataset order with the current labels (`finish`).

        Returns:
            its rows of the current pairs [(dis, ref, mos, (values…))]."""
        return finish(path, labels, order, blocks, drop)

    def summarise(self, rows, labelled=True):
        """One summary row per finished file added to the folder's summary.csv (`append_summary`);
        label-free sets' rows (labelled=False) to summary_unlabelled.csv, replacing the rows of a
        repeated run with the same settings (`UNLABELLED_KEY`)."""
        if labelled:
            append_summary(self.folder, rows)
        else:
            append_summary(self.folder, rows, "summary_unlabelled", UNLABELLED_FIELDS, key=UNLABELLED_KEY)
