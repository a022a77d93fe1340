#!/usr/bin/env python3
"""How long writing a pair's rows takes: RowWriter appending one row to each of five results
files per pair (what a run with five distances does), rows built by the store's `csv_line`
against rows built by Python's csv module for every row (a writer per row, and one writer kept
and reused). Runs alternate the ways, in a temporary folder; prints the median (and least) µs
per pair of each and how much slower than `csv_line` it is.

  python benchmarks/rows.py [--pairs 3000] [--repeats 15]
"""
import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time

from zsiqa.store import csvfiles, rows
from zsiqa.store.csvfiles import to_cell


def csv_per_row(values):
    """A row by a fresh csv writer (\\r\\n terminator, put back to \\n, as `csv_line`'s quoting path)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([to_cell(v) if isinstance(v, str) else v for v in values])
    return (out.getvalue()[:-2] + "\n").encode("utf-8")


def csv_reused():
    """A row maker holding one csv writer and its buffer, emptied for each row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")

    def line(values):
        out.seek(0)
        out.truncate()
        writer.writerow([to_cell(v) if isinstance(v, str) else v for v in values])
        return (out.getvalue()[:-2] + "\n").encode("utf-8")
    return line


def once(line, n, folder):
    """µs per pair writing `n` pairs' rows to five files with rows made by `line`."""
    rows.csv_line = line
    paths = {k: os.path.join(folder, f"f{k}.csv") for k in range(5)}
    for p in paths.values():
        if os.path.exists(p):
            os.remove(p)
    writer = rows.RowWriter(paths)
    t = time.perf_counter()
    for i in range(n):
        dis, ref = f"Train_Dis/A{i:05d}_00_{i % 7:02d}.bmp", f"Train_Ref/A{i // 29:04d}.bmp"
        for k in range(5):
            writer.write(k, dis, ref, 1450.123 + i, (0.1234567891234 * (i + k),))
    writer.close()
    return (time.perf_counter() - t) / n * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--repeats", type=int, default=15)
    a = p.parse_args(argv)
    ways = {"csv_line": csvfiles.csv_line, "csv writer per row": csv_per_row, "csv writer reused": csv_reused()}
    got = {name: [] for name in ways}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(a.repeats):
            for name, line in ways.items():
                got[name].append(once(line, a.pairs, folder))
    rows.csv_line = csvfiles.csv_line
    base = statistics.median(got["csv_line"])
    print(f"Python {sys.version.split()[0]}: {a.pairs} pairs × 5 files, {a.repeats} alternating repeats; "
          "µs per pair, median (least)")
    for name, times in got.items():
        m = statistics.median(times)
        print(f"  {name:20s} {m:6.1f} ({min(times):5.1f})  {100 * (m / base - 1):+4.0f} %")


if __name__ == "__main__":
    main()
