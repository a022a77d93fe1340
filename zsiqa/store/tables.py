"""Reading results files for correlations (calc_scores, the eval command's summary): a file's
rows strictly (`read_table`: one header, one field count, a repeated pair collapsed to its last
row), its numbers strictly (`number_frame`: blank, non-numeric or non-finite values refused with
their line), pairs scored NaN or inf left out with one warning (`drop_nonfinite`), all of it as a
DataFrame with the file's record (`read_frame`).
"""
import csv
import io
import math
import os
import sys

from zsiqa.errors import UserError
from zsiqa.store.csvfiles import cell_float, cells, complete_text
from zsiqa.store.records import read_record

HEADER = ["dis", "ref", "mos", "pred"]
UNLABELLED_HEADER = ["dis", "ref", "pred"]  # a label-free set's files


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
        rows, _ = drop_nonfinite(path, rows, lambda r: cell_float(r[1][k]), lambda r: r[1][0])
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
        for row in cells(reader):
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
    value = cell_float(cell)
    return 0.0 if value is None else value


def _number(cell):
    """A CSV cell's finite float, or None (blank, not a number, inf, nan): the numbers
    calc_scores computes from (strictly, in `number_frame`)."""
    value = cell_float(cell)
    return value if value is not None and math.isfinite(value) else None


def _finite(path, line, column, cell):
    """`_number(cell)`, or UserError naming the file, line and column when it is None."""
    value = _number(cell)
    if value is None:
        raise UserError(f"{path} line {line}: {column} is " + (f"{cell!r}, not a finite number" if cell.strip()
                                                                else "blank"))
    return value
