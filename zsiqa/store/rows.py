"""Rows of results, per-layer and part files: their layout (`Columns`: dis, ref, mos when
labelled, then pred or block_<k>…), the complete rows a file holds (`read_done`), and the
writer that appends a run's rows as they come (`RowWriter`), in whole lines, so that a crash
leaves valid files.
"""
import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass

from zsiqa.errors import UserError, writing
from zsiqa.store.csvfiles import cell_float, cells, complete_text, csv_line, line_start, write_all, write_atomic


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
    A row counts when its line is newline-terminated and its numbers parse (`cell_float`; nan/inf
    kept: an engine's NaN is a result to report; `done_keys` leaves such rows out, so a resume
    scores them again)."""
    if not os.path.isfile(path):
        return {}
    rows = cells(csv.reader(io.StringIO(complete_text(path), newline="")))
    header = next(rows, None)
    if header is None:
        return {}
    forms = [Columns(labelled, columns.blocks).header for labelled in (True, False)]
    if header not in forms:
        raise UserError(f"{path} has header {','.join(header)[:80]!r}, this run writes "
                        f"{','.join(forms[not columns.labelled])[:80]!r}; pass --overwrite to start it afresh")
    done, labelled = {}, header == forms[0]
    for row in rows:
        numbers = [cell_float(x) for x in row[2:]]  # mos (labelled files), then the values
        if len(row) == len(header) and None not in numbers:
            done[(row[0], row[1])] = (numbers[0], tuple(numbers[1:])) if labelled else (None, tuple(numbers))
    return done


def done_keys(rows):
    """The (dis, ref) of finished rows [(dis, ref, mos, values)] whose values are all finite
    (nan/inf, a hand edit or an engine's overflow, are scored again on resume)."""
    return {(dis, ref) for dis, ref, _, values in rows if all(map(math.isfinite, values))}


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
                        write_all(f, csv_line(self.columns[key].header))
                    self.ends[key] = f.tell()
        except BaseException:
            self.close()
            raise

    def write(self, key, dis, ref, mos, values):
        """Add one row (unless the file holds the pair): values is the sequence of the file's
        value columns (pred, or blocks)."""
        if (dis, ref) in self.held[key]:
            return
        line = csv_line(self.columns[key].row(dis, ref, mos, values))
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
            write_all(f, data)
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
            start = line_start(f)
            write_all(f, (csv_line(self.columns[key].header) if f.tell() == 0 else start)
                       + self.written[key])
        self.replaced.append(path)

    def _write_over(self, key):
        """A file truncated under the run holds some of this run's rows without a header: it gets
        the header and all of them (what the truncation removed of earlier runs is scored again)."""
        write_atomic(self.paths[key], csv_line(self.columns[key].header) + bytes(self.written[key]))
        self.replaced.append(self.paths[key])


def _same_file(f, path):
    """Whether the open file `f` is still the file at `path`."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False
