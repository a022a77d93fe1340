"""A comparison of metrics on the same labelled pairs (metric_compare.compare_metrics) as people
read it: the table `zsiqa corr -f A.csv -f B.csv` prints, and its report (--report DIR):
report.md, a one-column booktabs table.tex and a self-contained report.html (the jinja2 template
zsiqa/templates/metrics.html.j2), names escaped for each format (escaping.py).
"""
import os

import numpy as np

from zsiqa.errors import writing
from zsiqa.escaping import markdown_name, stack_cell, tex, tex_name
from zsiqa.metric_compare import ALPHA, COEFFICIENTS, TESTED
from zsiqa.report import template
from zsiqa.results import write_atomic


def printable(text):
    """`text` on one line: characters that are not printable (a newline in a file name) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _value(v, ci=None):
    if v is None or not np.isfinite(v):
        return "—"
    return f"{v:.4f}" if ci is None else f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _p(p, worse=False):
    return "" if p is None else f"{p:.4f}" + (" *" if worse else "")


def _line(width, name, cells):
    return f"{name:<{width}}  {'  '.join(cells)}".rstrip()


def format_table(result, dataset=None):
    """The printed comparison: a header line saying what was resampled, the coefficients with
    their intervals, then each metric's SRCC and PLCC against the best's.

    Args:
        result: `compare_metrics`' output. dataset: its name for the header, or None.

    Returns:
        the lines, joined by newlines (names with their non-printable characters escaped).
    """
    rows, names = result["metrics"], [printable(r["metric"]) for r in result["metrics"]]
    width = max(8, *map(len, names))
    what = (f"the {result['refs']} references (cluster bootstrap: each drawn with all its pairs)"
            if result["resample"] == "refs" else "the pairs")
    lines = [f"{printable(dataset) + ': ' if dataset else ''}{result['n']} pairs in every file (matched by dis, ref); "
             f"95 % percentile intervals from {result['n_boot']} resamples of {what}, seed {result['seed']}",
             _line(width, "metric", [f"{h:<25}" for h in ("SRCC", "PLCC", "PLCC(logistic)", "KRCC")])]
    lines += [_line(width, name, [f"{_value(r[c], r[f'{c}_ci95']):<25}" for c in COEFFICIENTS])
              for name, r in zip(names, rows, strict=True)]
    tests = sum(r["srcc_p"] is not None for r in rows)
    lines += [f"against the best (bootstrap of the difference on the same resamples; p two-sided, Holm over "
              f"{tests} test(s); * p_Holm < {ALPHA}):",
              _line(width, "metric", [f"{h:<28}{'p':<8}{'p_Holm':<10}" for h in ("ΔSRCC", "ΔPLCC")])]
    for name, r in zip(names, rows, strict=True):
        cells = []
        for c in TESTED:
            tested = r[f"{c}_p"] is not None
            best = r[f"{c}_vs"] == r["metric"] and not tested and np.isfinite(r[c])
            diff = "best" if best else _value(r[f"{c}_diff"], r[f"{c}_diff_ci95"]) if tested else "—"
            cells.append(f"{diff:<28}{_p(r[f'{c}_p']):<8}{_p(r[f'{c}_p_holm'], r[f'{c}_worse']):<10}")
        lines.append(_line(width, name, cells))
    return "\n".join(lines)


# ---------------------------------------------------------------- the report (corr --report DIR)

METRIC_REPORT_FILES = ("report.md", "table.tex", "report.html")
LABELS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": "PLCC (logistic)", "krcc": "KRCC"}
TEX_LABELS = {"srcc": "SRCC", "plcc": "PLCC", "plcc_logistic": r"PLCC$_\mathrm{log}$", "krcc": "KRCC"}
PLACES = 4  # a coefficient's, its interval's, a difference's and a p-value's decimals (as the printed table)


def header_line(result, dataset=None):
    """The table's first line: the pairs, what was resampled, how often, the seed."""
    what = (f"the {result['refs']} references (cluster bootstrap: each drawn with all its pairs)"
            if result["resample"] == "refs" else "the pairs")
    return (f"{printable(dataset) + ': ' if dataset else ''}{result['n']} pairs in every file (matched by dis, ref); "
            f"95 % percentile intervals from {result['n_boot']} resamples of {what}, seed {result['seed']}")


def coefficient_cells(row):
    """A metric's coefficients as (value, interval) texts, fixed decimals; '—' where undefined."""
    return [(_value(row[c]), "—" if _value(row[c]) == "—" else
             f"[{row[f'{c}_ci95'][0]:.{PLACES}f}, {row[f'{c}_ci95'][1]:.{PLACES}f}]") for c in COEFFICIENTS]


def test_cells(row):
    """A metric's tests against the best, per tested coefficient: (difference, interval, p, Holm p
    with ' *' where significantly worse) texts; 'best' for the best, '—' where untested."""
    out = []
    for c in TESTED:
        if row[f"{c}_p"] is None:
            best = row[f"{c}_vs"] == row["metric"] and np.isfinite(row[c])
            out.append(("best" if best else "—", "", "", ""))
            continue
        low, high = row[f"{c}_diff_ci95"]
        out.append((f"{row[f'{c}_diff']:+.{PLACES}f}", f"[{low:+.{PLACES}f}, {high:+.{PLACES}f}]",
                    _p(row[f"{c}_p"]), _p(row[f"{c}_p_holm"], row[f"{c}_worse"])))
    return out


def best_of(result, c):
    """The name of the best metric by coefficient c: the one tested against (`paired_tests`' vs)
    for SRCC and PLCC, else the highest (None when none is defined)."""
    if c in TESTED:
        return next((r[f"{c}_vs"] for r in result["metrics"] if r.get(f"{c}_vs") is not None), None)
    rows = [r for r in result["metrics"] if r[c] is not None and np.isfinite(r[c])]
    return max(rows, key=lambda r: r[c])["metric"] if rows else None


def metric_markdown(result, dataset=None):
    """The comparison of metrics as Markdown (names escaped: report.markdown_name): the
    coefficients with intervals, then each metric's SRCC and PLCC against the best's."""
    rows, escape = result["metrics"], markdown_name
    out = [f"# ZS-IQA comparison of {len(rows)} metrics", "", escape(header_line(result, dataset)), "",
           "| metric | n | " + " | ".join(f"{LABELS[c]} [95% CI]" for c in COEFFICIENTS) + " |",
           "|---|---:|" + "---:|" * len(COEFFICIENTS)]
    for r in rows:
        cells = [("—" if ci == "—" else f"**{v}** {ci}" if best_of(result, c) == r["metric"] else f"{v} {ci}")
                 for c, (v, ci) in zip(COEFFICIENTS, coefficient_cells(r), strict=True)]
        out.append(f"| {escape(r['metric'])} | {r['n']} | " + " | ".join(x.strip() for x in cells) + " |")
    out += ["", f"Against the best (bootstrap of the difference on the same resamples; p two-sided, Holm over the "
                f"metrics tested; * p_Holm < {ALPHA}):", "",
            "| metric | " + " | ".join(f"Δ{LABELS[c]} [95% CI] | p | p (Holm)" for c in TESTED) + " |",
            "|---|" + "---:|---:|---:|" * len(TESTED)]
    for r in rows:
        cells = [f"{d} {ci}".strip() + f" | {p} | {ph}" for d, ci, p, ph in test_cells(r)]
        out.append(f"| {escape(r['metric'])} | " + " | ".join(x.replace("*", "\\*") for x in cells) + " |")
    return "\n".join(out + [""])


def metric_latex(result, dataset=None):
    """The comparison of metrics as one booktabs table, \\columnwidth wide (tabularx,
    \\footnotesize), in two blocks (SRCC and PLCC, then PLCC after the logistic fit and KRCC):
    each coefficient above its interval, the best of each in bold, $^{*}$ after an SRCC or PLCC
    significantly below the best's; names escaped (report.tex_name)."""
    rows = result["metrics"]
    lines = [r"% Needs \usepackage{booktabs,tabularx} in the preamble. The table is \columnwidth wide.",
             f"% ZS-IQA comparison of metrics. {tex(header_line(result, dataset))}",
             r"\begin{table}[t]", r"  \centering",
             rf"  \caption{{Correlation with the labels on the {result['n']} pairs every metric has, with 95\,\% "
             rf"bootstrap intervals ({result['n_boot']} resamples of the "
             + ("references, each with all its pairs" if result["resample"] == "refs" else "pairs")
             + r"). Best of each column in bold; $^{*}$ significantly below the best (paired bootstrap, "
               r"Holm-corrected $p < 0.05$).}", r"  \label{tab:zsiqa-metrics}", r"  \footnotesize",
             r"  \setlength{\tabcolsep}{3pt}",
             r"  \begin{tabularx}{\columnwidth}{@{}>{\raggedright\arraybackslash}Xrr@{}}", r"    \toprule"]
    for block in (COEFFICIENTS[:2], COEFFICIENTS[2:]):  # two coefficients a block: one column has no room for four
        lines += ["    Metric & " + " & ".join(TEX_LABELS[c] for c in block) + r" \\", r"    \midrule"]
        lines += [f"    {tex_name(r['metric'])} & " + " & ".join(_tex_coefficient(result, r, c) for c in block)
                  + r" \\" for r in rows]
        lines += [r"    \midrule"] if block[0] == COEFFICIENTS[0] else []
    return "\n".join(lines + [r"    \bottomrule", r"  \end{tabularx}", r"\end{table}", ""])


def _tex_coefficient(result, row, c):
    """One coefficient's cell: its value (bold for the best, $^{*}$ where significantly below it)
    above its interval; '--' where undefined."""
    value, interval = coefficient_cells(row)[COEFFICIENTS.index(c)]
    if interval == "—":
        return "--"
    value = (rf"\textbf{{{value}}}" if best_of(result, c) == row["metric"] else value) + (
        "$^{*}$" if row.get(f"{c}_worse") else "")
    return stack_cell(value, interval)


def metric_view(result, dataset):
    """What corr's page shows: the header line, the coefficients' and the tests' rows as text."""
    rows = result["metrics"]
    return {"title": f"ZS-IQA comparison of {len(rows)} metrics", "about": header_line(result, dataset),
            "coefficients": [LABELS[c] for c in COEFFICIENTS], "tested": [LABELS[c] for c in TESTED],
            "rows": [{"name": r["metric"], "n": r["n"],
                      "cells": [("—" if ci == "—" else f"{v} {ci}", best_of(result, c) == r["metric"])
                                for c, (v, ci) in zip(COEFFICIENTS, coefficient_cells(r), strict=True)],
                      "tests": [x for cell in test_cells(r) for x in (f"{cell[0]} {cell[1]}".strip(), *cell[2:])]}
                     for r in rows], "alpha": ALPHA}


def write_metric_report(folder, result, dataset=None):
    """Write corr's report into `folder` (created): report.md, table.tex and report.html (the
    template metrics.html.j2), each written whole or not at all (results.write_atomic).

    Args:
        folder: the report folder. result: `compare_metrics`' output with each row's file.
        dataset: the dataset's name for the header, or None.

    Returns:
        the paths written.
    """
    with writing(folder, "nothing was written"):
        os.makedirs(folder, exist_ok=True)
    texts = (metric_markdown(result, dataset), metric_latex(result, dataset),
             template("metrics.html.j2").render(**metric_view(result, dataset)))
    paths = [os.path.join(folder, name) for name in METRIC_REPORT_FILES]
    for path, text in zip(paths, texts, strict=True):
        write_atomic(path, text.encode("utf-8"))
    return paths
