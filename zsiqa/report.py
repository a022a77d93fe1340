"""Comparisons of methods scored without labels (`zsiqa eval -dat dirs`): the ranked text table
printed at the end of a run, and the report a paper can use (--report DIR): every image's score
as a long-form CSV, Markdown and booktabs LaTeX tables, and one self-contained HTML page with the
tables, a bar chart, a sortable per-image table and each method's worst images (its HTML, style
and script: the jinja2 template zsiqa/templates/report.html.j2, every value escaped). p-values
are Holm-corrected paired Wilcoxon tests against the best method (stats.compare_methods).
"""
import functools
import io
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field

import jinja2
import numpy as np

from zsiqa import plots
from zsiqa.errors import writing
from zsiqa.escaping import markdown_name, one_line, stack_cell, tex, tex_name
from zsiqa.results import write_atomic, write_table


def empty(row):
    """A method without a scored pair (n 0, mean NaN)."""
    return not row["n"] or row["mean"] != row["mean"]


def is_best(row):
    """The method the others were tested against (or the only one)."""
    return row.get("vs") in (None, row["set"]) and not empty(row)


def unranked(row):
    """A method not ranked with the others: no scored pair, or no image shared with them."""
    return empty(row) or row.get("verdict") == "no test"


def shown(row):
    """The statistics a table shows for a method (n, mean, std, median, ci95): over the images every
    ranked method has (what ranks them), or for a method outside the ranking over its own."""
    if unranked(row) or "mean_shared" not in row:
        return row
    return {**row, **{k: row[f"{k}_shared"] for k in ("n", "mean", "std", "median", "ci95")}}


def ranked(rows, lower_better=True):
    """Rows of one distance best first, by their mean over the images every ranked method has;
    then those sharing no image with them, then sets without a scored pair."""
    def key(r):
        mean = shown(r)["mean"]
        return empty(r), unranked(r), not is_best(r), 0.0 if empty(r) else (mean if lower_better else -mean)
    return sorted(rows, key=key)


def _count(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


def decimals(values, sig=3, cap=8):
    """The decimals one column shows for all its values: enough for `sig` significant digits of
    its smallest nonzero magnitude (sig 3: 0.2304 and 0.314: 3; 0.06569 and 0.1189: 4), at most 3 more
    than its largest value needs and at most `cap`; 0 for a column of zeros or no values."""
    mags = [abs(float(v)) for v in values if v is not None and v == v and v not in (math.inf, -math.inf) and v != 0]
    if not mags:
        return 0
    want = sig - 1 - math.floor(math.log10(min(mags)))
    most = max(0, sig - 1 - math.floor(math.log10(max(mags)))) + 3
    return int(min(max(want, 0), most, cap))


def fixed(x, places, sign=False):
    """A number with `places` decimals ('+' before a positive one with `sign`); '—' for none or NaN."""
    if x is None or x != x:
        return "—"
    return f"{x:{'+' if sign else ''}.{places}f}"


def _p_fixed(p, places):
    """A p-value with `places` decimals, or '< 0.0…1' where it would show as zero."""
    return f"< {10.0 ** -places:.{places}f}" if 0 < p < 0.5 * 10.0 ** -places else f"{p:.{places}f}"


def column_places(rows):
    """The decimals of each column of one distance's table (`decimals`), the same for every
    row: `mean` (means, medians and their intervals), `std`, `diff` (median differences and
    their intervals) and `p` (Holm p-values and the smallest they could be)."""
    shown_ = [shown(r) for r in rows if not empty(r)]
    tested = [r for r in rows if r.get("median_diff") is not None]
    return {"mean": decimals([v for s in shown_ for v in (s["mean"], s.get("median"), *s["ci95"])], sig=4),
            "std": decimals([s.get("std") for s in shown_], sig=4),
            "diff": decimals([v for r in tested for v in (r["median_diff"], *(r.get("median_diff_ci95") or ()))]),
            "p": decimals([r.get("p_holm") for r in rows if not is_best(r)]
                          + [r["p_holm_min"] for r in rows if r.get("verdict") == "n too small"])}


def ranking_note(rows):
    """One sentence for a table: which statistic ranks the methods, over which images, and which
    methods are left out of the ranking (counted, not named: names are escaped per format)."""
    members = [r for r in rows if not unranked(r)]
    if not members:
        return "No method has a scored pair."
    outside = sum(1 for r in rows if unranked(r) and not empty(r))
    ranked_ = " ranked" if outside else ""
    images = _count(shown(members[0])["n"], "image")
    text = ("Mean over its " + images if len(members) == 1 else
            f"Ranked by the mean over the {images} " + (f"both{ranked_} methods" if len(members) == 2 else
                                                         f"all {len(members)}{ranked_} methods") + " have")
    if any(r.get("n_left_out") for r in members):
        text += "; images only some methods have are left out of the ranking and the tests (counted under left out)"
    if outside:
        text += (f"; {_count(outside, 'method')} sharing no image with " + ("it" if len(members) == 1 else "them")
                 + " listed last, unranked and untested (" + ("its" if outside == 1 else "their") + " own mean shown)")
    return text + "."


MARKS = {"best": "best", "worse": "*", "better": "better*", "mixed": "mixed", "n too small": "n too small",
         "n.s.": "n.s.", "no test": "—", "no pairs": "no pairs"}


def significance_mark(row):
    """A set's mark beside its mean (stats.verdict): 'best', '*' where significantly worse than the
    best, 'better*' where significantly better than it on the shared images (Holm-corrected paired
    Wilcoxon, p < 0.05, on that side), 'mixed' where significant but the signed ranks and the median
    difference disagree on the side, 'n too small' where no outcome could reach p < 0.05, 'n.s.'
    where not significant, '—' for a set sharing no image with the ranked ones (no test), 'no
    pairs' for a set without scores."""
    if empty(row):
        return "no pairs"
    return MARKS[row.get("verdict") or ("best" if is_best(row) else "no test")]


def _rank_text(rank, row):
    return "—" if unranked(row) else str(rank)


def format_table(rows, lower_better=True):
    """Rows (set, distance, n, mean, std, median, ci95, vs_best...) as a ranked text table with a
    line saying what ranks; names printed whole; a set with no scored pair ranked last and marked;
    each column's numbers with the same decimals (`column_places`)."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = ranked([r for r in rows if r["distance"] == distance], lower_better)
        places = column_places(group)
        width = max(20, *(len(r["set"]) for r in group))
        left = any(r.get("n_left_out") for r in group)
        p_width = max(10, *(len(_p_text(r, places["p"])) for r in group))
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':{width}} {'n':>6}" + (f" {'left out':>8}" if left else "")
                     + f" {'mean':>10} {'std':>10} {'median':>10} {'95% CI of mean':>23} {'p (Holm)':>{p_width}} "
                       f"{'better/worse than best':>22}")
        lines += [_text_row(rank, r, (width, p_width, left), places) for rank, r in enumerate(group, 1)]
        lines.append(f"  {ranking_note(group)}")
    return "\n".join(lines)


def _text_row(rank, row, widths, places):
    """One method's line of format_table (`widths`: the name's, the p column's, and whether a
    left-out column is shown)."""
    width, p_width, left = widths
    s = shown(row)
    out = f" {row.get('n_left_out', 0):>8}" if left else ""
    if empty(row):
        return f"  {'—':>4} {row['set']:{width}} {row['n']:>6}{out}  no pair scored"
    wl = "" if is_best(row) or row.get("wins") is None else f"{row['wins']}/{row['losses']}"
    m, sd = places["mean"], places["std"]
    return (f"  {_rank_text(rank, row):>4} {row['set']:{width}} {s['n']:>6}{out} {fixed(s['mean'], m):>10} "
            f"{fixed(s['std'], sd):>10} {fixed(s['median'], m):>10} [{fixed(s['ci95'][0], m):>10}, "
            f"{fixed(s['ci95'][1], m):>10}] {_p_text(row, places['p']):>{p_width}} {wl:>22}")


# ---------------------------------------------------------------- the report files (--report DIR)

@dataclass
class Shot:
    """One method's output of an image, as the worst-images grid shows it: its score by the
    primary distance, the output (H×W×3 uint8), its difference map (H×W) and the --maps files
    written for it ({distance: path of its heatmap .png}, linked from the page)."""
    score: float
    dis: np.ndarray
    map: np.ndarray
    links: dict = field(default_factory=dict)


@dataclass
class GridRow:
    """One image of the worst-images grid: its name (the reference's), the reference (H×W×3
    uint8), each method's Shot of it ({method: Shot}; a method without the image absent) and the
    methods among whose worst images it is."""
    image: str
    ref: np.ndarray
    shots: dict
    worst_of: list


@dataclass
class Comparison:
    """What one report shows: per distance the methods' rows (stats.compare_methods, with `set`
    and `distance`) and every image's score, the distances' directions, the primary distance
    (the worst images are its worst), the worst-images grid (one GridRow per image) and a line
    about the run; `map_distance` the distance of the grid's maps (a spatial one), `methods` the
    grid's columns in order."""
    tables: dict     # {distance: [rows]}
    scores: dict     # {distance: {method: {image: score}}}
    lower_better: dict
    primary: str
    worst: list      # [GridRow]
    about: str
    map_distance: str = ""
    methods: tuple = ()

    def ranked(self, distance):
        return ranked(self.tables[distance], self.lower_better[distance])


REPORT_FILES = ("scores.csv", "report.md", "table.tex", "report.html")


def write_report(folder, comparison):
    """Write scores.csv, report.md, table.tex and report.html into `folder` (created); returns
    their paths. One call, one set of numbers: every file shows the same comparison."""
    with writing(folder, "nothing was written"):
        os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(folder, n) for n in REPORT_FILES]
    write_table(paths[0], ["image", "method", "distance", "score"],
                [{"image": image, "method": method, "distance": d, "score": score}
                 for d, per_method in comparison.scores.items() for method, per in per_method.items()
                 for image, score in sorted(per.items())])
    for path, text in zip(paths[1:], (markdown(comparison), latex(comparison), page(comparison, folder))):
        write_atomic(path, text.encode("utf-8"))  # a symlink there replaced, not followed; never half a file
    return paths


def _g(x, digits=4):
    return "—" if x is None or x != x else f"{x:.{digits}g}"


SUFFIX = {"worse": " *", "better": " better*", "mixed": " mixed"}


def _p_text(row, places=3):
    """A method's Holm p-value against the best: 'best' for the best, '—' without a test, else
    with `places` decimals (the column's) and its mark (stats.verdict): ' *' significantly worse,
    ' better*' significantly better, ' mixed', or '(n too small: min p = …)' where no outcome of
    these pairs could reach the level; bare where not significant."""
    if is_best(row):
        return "best"
    if row.get("p_holm") is None:
        return "—"
    if row.get("verdict") == "n too small":
        return f"{_p_fixed(row['p_holm'], places)} (n too small: min p = {_p_fixed(row['p_holm_min'], places)})"
    return _p_fixed(row["p_holm"], places) + SUFFIX.get(row.get("verdict"), "")


def _diff_text(row, places):
    """The median paired difference to the best with its interval, signed, or '—'."""
    if row.get("median_diff") is None:
        return "—"
    low, high = row["median_diff_ci95"]
    return f"{fixed(row['median_diff'], places, True)} [{fixed(low, places, True)}, {fixed(high, places, True)}]"


def _cells(row, left=False, places=None):
    """A method's row as text cells: n, mean, interval (over the shared images: `shown`), Holm p
    (with its mark), median difference with interval, images better / worse than the best, and
    with `left` the images left out; '—' where a value does not exist; numbers with the decimals
    of their column (`places`: `column_places` of the table, else this row's own)."""
    places = places or column_places([row])
    s, m = shown(row), places["mean"]
    wl = "—" if row.get("wins") is None or is_best(row) else f"{row['wins']} / {row['losses']}"
    cells = [str(s["n"]), fixed(s["mean"], m), f"[{fixed(s['ci95'][0], m)}, {fixed(s['ci95'][1], m)}]",
             _p_text(row, places["p"]), _diff_text(row, places["diff"]), wl]
    return cells + [str(row.get("n_left_out", 0))] if left else cells


def any_left_out(rows):
    """Whether a table needs the 'left out' column (some method has images the others lack)."""
    return any(r.get("n_left_out") for r in rows)


COLUMNS = ["n", "mean", "95% CI", "p (Holm) vs best", "median difference vs best [95% CI]",
           "images better / worse than best"]
LEFT_OUT = "left out"
NOTE = ("Ranking and tests use the images every ranked method has. p: the paired Wilcoxon signed-rank test "
        "(two-sided) of a method against the best one (the lowest mean, or highest where higher is more alike) on "
        "those images, Holm-corrected over the methods tested. * significantly worse than the best (p < 0.05, the "
        "signed ranks on the worse side); better*: significantly better than the best on the paired test, though "
        "the best's mean ranks it first (a few images weigh on its mean); mixed: p < 0.05 but the signed ranks and "
        "the median difference lean different ways; n too small: with so few images no outcome could reach "
        "p < 0.05 after Holm's correction (min p: the smallest it could be). Images better / worse than best: on "
        "how many of the shared images this method's score is better / worse than the best's. The interval of a "
        "mean and of the median difference (a method's score minus the best's, per image) are 95 % bootstrap "
        "intervals over images (2,000 resamples, seeded).")


def _title(c):
    return f"ZS-IQA comparison of {_count(len(c.scores[c.primary]), 'method')}"


def direction(lower_better):
    return "lower = more alike to the reference" if lower_better else "higher = more alike to the reference"


def markdown(c):
    """The comparison as Markdown: per distance a table of methods, best first."""
    out = [f"# {_title(c)}", "", markdown_name(c.about), ""]
    for d in c.tables:
        group, left = c.ranked(d), any_left_out(c.tables[d])
        places = column_places(group)
        out += [f"## {d} ({direction(c.lower_better[d])})", "", ranking_note(group), "",
                "| rank | method | " + " | ".join(COLUMNS + [LEFT_OUT] * left) + " |",
                "|---:|---|" + "---:|" * 3 + "---:|---|---:|" + "---:|" * left]
        for rank, row in enumerate(group, 1):
            name = markdown_name(row["set"])
            out.append(f"| {_rank_text(rank, row)} | {f'**{name}**' if is_best(row) else name} | "
                       + " | ".join(_md(x) for x in _cells(row, left, places)) + " |")
        out += [""]
    return "\n".join(out + [NOTE, ""])


def _md(text):
    return one_line(text).replace("|", "\\|")


TEX_NEEDS = (r"% Needs \usepackage{booktabs,tabularx} in the preamble. Each table is \columnwidth wide (one column "
             r"of a two-column paper); for the page's width write table* and \textwidth instead.")


def _tex_caption(d, c, group, places):
    """A table's caption: the distance and its direction, what ranks, what the cells and marks mean."""
    small = sorted({_p_fixed(r["p_holm_min"], places["p"]) for r in group if r.get("verdict") == "n too small"})
    return (rf"  \caption{{{tex(d)} ({direction(c.lower_better[d])}). {tex(ranking_note(group))} Mean with its "
            r"95\,\% bootstrap interval below it, Holm-corrected $p$ of the paired Wilcoxon test (two-sided) against "
            r"the best method and the median paired difference to it (its interval in report.md). Best in bold; $^{*}$ "
            r"significantly worse than the best, better$^{*}$ significantly better than it on the paired test "
            r"($p < 0.05$); $^\dagger$ not significantly different from the best ($p \geq 0.05$)"
            + (rf"; $^\ddagger$ n too small: min p = {' to '.join(small)}, no outcome of so few images could reach "
               r"$p < 0.05$" if small else "") + ".}")


def latex(c):
    """The comparison as booktabs tables ready for \\input, each \\columnwidth wide (tabularx,
    \\footnotesize: one column of a two-column paper): one table per distance, best in bold,
    methods not significantly different from the best marked with a dagger, the caption saying
    what ranks them; each column's numbers with the same decimals (`column_places`)."""
    out = [TEX_NEEDS]
    for d in c.tables:
        arrow = r"$\downarrow$" if c.lower_better[d] else r"$\uparrow$"
        group, left = c.ranked(d), any_left_out(c.tables[d])
        places, counts = column_places(group), len({shown(r)["n"] for r in group}) > 1
        out += [f"% ZS-IQA comparison, {d}: {direction(c.lower_better[d])}. {tex(c.about)}",
                r"\begin{table}[t]", r"  \centering", _tex_caption(d, c, group, places),
                rf"  \label{{tab:zsiqa-{re.sub(r'[^A-Za-z0-9]+', '-', d)}}}",
                r"  \footnotesize", r"  \setlength{\tabcolsep}{3pt}",
                r"  \begin{tabularx}{\columnwidth}{@{}>{\raggedright\arraybackslash}X" + "r" * (3 + counts + left)
                + "@{}}", r"    \toprule",
                r"    Method" + " & $n$" * counts + " & " + stack_cell(f"Mean {arrow}", r"[95\,\% CI]")
                + r" & $p_\mathrm{Holm}$ & " + stack_cell(r"$\Delta$", "median")
                + (" & " + stack_cell("Left", "out")) * left + r" \\", r"    \midrule"]
        out += [_tex_row(row, (counts, left), places) for row in group]
        out += [r"    \bottomrule", r"  \end{tabularx}", r"\end{table}", ""]
    return "\n".join(out)


TEX_MARK = {"worse": "$^{*}$", "n too small": r"$^\ddagger$"}
TEX_WORD = {"better": r"better$^{*}$", "mixed": "mixed"}


def _tex_row(row, layout, places):
    """One method's row: name (a dagger where not significantly different from the best), n (with
    layout[0]: where the methods' counts differ), mean above its interval, p with its mark, the
    median difference (its interval is report.md's: one column of a paper has no room for it),
    and with layout[1] the images left out."""
    n, mean, ci, _, diff, _, *rest = _cells(row, layout[1], places)
    best, verdict = is_best(row), row.get("verdict")
    tied = verdict in ("n.s.", "n too small")  # not significantly different from the best
    name = tex_name(row["set"]) + (r"$^\dagger$" if tied else "")
    p = "--"
    if not best and row.get("p_holm") is not None:
        p = tex(_p_fixed(row["p_holm"], places["p"])) + TEX_MARK.get(verdict, "")
        p = stack_cell(p, TEX_WORD[verdict]) if verdict in TEX_WORD else p
    if mean != "—":
        mean = stack_cell(rf"\textbf{{{mean}}}" if best else mean, ci)
    cells = [rf"\textbf{{{name}}}" if best else name, *[n] * layout[0], mean.replace("—", "--"), p,
             diff.split(" ", 1)[0].replace("—", "--"), *rest]
    return "    " + " & ".join(cells) + r" \\"


# ---------------------------------------------------------------- the HTML page

def _summary_view(c, d):
    """What the page shows of distance d: its methods ranked, their cells (`_cells`), and its chart."""
    group, left = c.ranked(d), any_left_out(c.tables[d])
    places = column_places(group)
    buffer = io.BytesIO()
    plots.method_bars([shown(r) for r in group], buffer, f"mean {d} per method, 95% CI",
                      marks=[significance_mark(r) for r in group])
    return {"distance": d, "direction": direction(c.lower_better[d]), "note": ranking_note(group),
            "columns": COLUMNS + [LEFT_OUT] * left, "chart": plots.data_uri(buffer.getvalue(), "image/png"),
            "rows": [{"rank": _rank_text(rank, r), "name": r["set"], "best": is_best(r),
                      "cells": _cells(r, left, places)} for rank, r in enumerate(group, 1)]}


def _per_image_view(c):
    """The per-image table: a column per distance and method, a row per image of (exact value
    for sorting, shown text) cells, NaN where a method lacks the image; the decimals one per
    distance (`decimals` of all its scores), so that every column's cells align."""
    columns = [(d, m) for d in c.tables for m in (r["set"] for r in c.ranked(d))]
    places = {d: decimals([v for per in c.scores[d].values() for v in per.values()], sig=4) for d in c.tables}
    images = sorted({i for d in c.scores for per in c.scores[d].values() for i in per})
    return {"columns": [(m, d) for d, m in columns],
            "rows": [(i, [(repr(c.scores[d][m].get(i, float("nan"))), fixed(c.scores[d][m].get(i), places[d]))
                          for d, m in columns]) for i in images]}


def link(path, folder):
    """A file's address relative to the report folder, for an <a href>: its path from there,
    each part percent-encoded (a map folder's own %2F stays a name, not a path)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return "/".join(urllib.parse.quote(part, safe="") for part in rel.split(os.sep))


def _grid_row(c, row, places, folder):
    """One image of the grid: reference, then per method (`c.methods` order) its output, map
    (the row's own scale, 0 to its largest value), score, whether it is the row's best, and links
    to its --maps files; None where the method lacks the image."""
    top = max(float(np.max(s.map)) for s in row.shots.values())
    scores = [s.score for s in row.shots.values()]
    best = min(scores) if c.lower_better[c.primary] else max(scores)
    cells = [None if m not in row.shots else {
        "method": m, "score": fixed(row.shots[m].score, places), "best": row.shots[m].score == best,
        "output": plots.thumbnail(row.shots[m].dis), "map": plots.heat(row.shots[m].map, top),
        "links": [(d, link(p, folder)) for d, p in row.shots[m].links.items()]} for m in c.methods]
    return {"image": row.image, "worst_of": ", ".join(row.worst_of), "reference": plots.thumbnail(row.ref),
            "cells": cells, "top": f"{top:.3g}"}


def _worst_view(c, folder):
    """The worst-images grid: one row per image (reference | each method's output over its map,
    with its score, the row's best marked), one colour scale per row with its bar."""
    places = decimals([s.score for row in c.worst for s in row.shots.values()], sig=4)
    return {"primary": c.primary, "map_distance": c.map_distance or c.primary, "methods": list(c.methods),
            "per_window": c.map_distance != c.primary, "bar": plots.colour_bar(),
            "rows": [_grid_row(c, row, places, folder) for row in c.worst]}


@functools.cache
def template(name="report.html.j2"):
    """A page's template (zsiqa/templates/, package data: report.html.j2 this report's,
    metrics.html.j2 corr's), every value escaped."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("zsiqa", "templates"), autoescape=True,
                             trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name)


def page(c, folder="."):
    """The comparison as one self-contained HTML page (style, script and images inside it),
    from the template zsiqa/templates/report.html.j2; `folder` where it is written (the links to
    the --maps files are relative to it)."""
    return template().render(title=_title(c), about=c.about, note=NOTE,
                              summaries=[_summary_view(c, d) for d in c.tables], images=_per_image_view(c),
                              worst=_worst_view(c, folder) if c.worst else None)
