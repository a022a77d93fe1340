"""CSV files as bytes: every file of the store is made of `csv_line` rows, read back by
`complete_text` up to its last complete row (a torn last row, a crash mid-row, left out), its
cells spreadsheet-safe (`to_cell` on writing, `from_cell` on reading), and written whole by
`write_atomic` (a temporary file renamed over the old one) or appended by `write_all`. The
bottom of the store: it imports no other store module.
"""
import codecs
import csv
import io
import os
import re
import secrets
import sys

from zsiqa.errors import UserError, writing

FORMULA_START = "=+-@\t\r"  # a cell starting so is a formula to a spreadsheet (OWASP's CSV injection)
TMP_NAME_MAX = 200  # bytes of a file's name kept in its temporary file's name (NAME_MAX is 255)
_NEEDS_QUOTES = re.compile(r'["\r\n]')


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


def cell_float(cell):
    """A CSV cell's float (nan and inf included), or None when it is blank or not a number."""
    try:
        return float(cell)
    except ValueError:
        return None


def write_all(f, data):
    """Write bytes to an unbuffered file, all of them (the one place rows reach the disk)."""
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def csv_line(values):
    """One CSV row as UTF-8 bytes ending in a newline; every file of the store is made of these.
    A field holding \\r or \\n (a file name may), a quote or a comma is quoted, so the row reads
    back whole: the csv writer quotes only its own line terminator's characters (with
    lineterminator "\\n" it leaves a \\r bare, which ends the row for a reader), so it is given
    \\r\\n and the row's end put back to \\n. Text a spreadsheet would evaluate gets a quote first
    (`to_cell`); numbers are written as they are.

    A row that needs no quoting (all but hostile names) is joined here without the csv module,
    giving its bytes exactly (tested): RowWriter writes a row per file per pair, and the csv
    writer for every row made writing a pair's rows to five files 45-51 % slower (26 → 38 µs
    on a 2-core CPU, Python 3.11; benchmarks/rows.py), 19-22 % with one writer kept."""
    texts = [to_cell(v) if isinstance(v, str) else "" if v is None else str(v) for v in values]
    joined = ",".join(texts)
    if all(texts) and joined.count(",") == len(texts) - 1 and not _NEEDS_QUOTES.search(joined):
        return (joined + "\n").encode("utf-8")  # what the csv writer gives, without it (most rows: 10× faster)
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(texts)
    return (out.getvalue()[:-2] + "\n").encode("utf-8")


def to_cell(text):
    """Text as a CSV cell a spreadsheet shows as text: a name starting with = + - @, a tab or a
    carriage return (a formula to Excel, LibreOffice, Google Sheets) gets a single quote in front,
    as does one starting with a quote, so that `from_cell` gives every name back exactly."""
    return "'" + text if text and text[0] in FORMULA_START + "'" else text


def from_cell(text):
    """The text `to_cell` was given: one leading quote removed where `to_cell` put it (a quote
    followed by = + - @, a tab, a carriage return or another quote); any other cell as it is."""
    return text[1:] if len(text) > 1 and text[0] == "'" and text[1] in FORMULA_START + "'" else text


def cells(reader):
    """The rows of a csv.reader with each cell `from_cell`'d."""
    return ([from_cell(c) for c in row] for row in reader)


def csv_text(rows):
    """Rows as CSV bytes, each by `csv_line`."""
    return b"".join(csv_line(row) for row in rows)


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
                write_all(f, data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def write_table(path, fields, rows):
    """Write rows (dicts; other keys ignored) under the header `fields`, atomically. Returns path."""
    write_atomic(path, csv_text([fields, *([row.get(k, "") for k in fields] for row in rows)]))
    return path


def line_start(f):
    """A newline when file `f` (open for reading and appending) is not empty and lacks a final newline (a
    hand edit, or a write cut short): what an appended row needs to start a line of its own; else nothing."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return b""
    f.seek(end - 1)
    return b"" if f.read(1) == b"\n" else b"\n"
