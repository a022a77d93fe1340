"""Comparisons of methods scored without labels (`zsiqa eval -dat dirs`): the ranked text table
printed at the end of a run, and the report a paper can use (--report DIR): every image's score
as a long-form CSV, Markdown and booktabs LaTeX tables, and one self-contained HTML page with the
tables, a bar chart, a sortable per-image table and each method's worst images (its HTML, style
and script: the jinja2 template zsiqa/templates/report.html.j2, every value escaped). p-values
are Holm-corrected paired Wilcoxon tests against the best method (stats.compare_methods).
"""
import base64
import functools
import io
import os
import re
from dataclasses import dataclass

import jinja2
import numpy as np
from PIL import Image

from zsiqa import plots
from zsiqa.errors import writing
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
    line saying what ranks; names printed whole; a set with no scored pair ranked last and marked."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = ranked([r for r in rows if r["distance"] == distance], lower_better)
        width = max(20, *(len(r["set"]) for r in group))
        left = any(r.get("n_left_out") for r in group)
        p_width = max(10, *(len(_p_text(r)) for r in group))
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':{width}} {'n':>6}" + (f" {'left out':>8}" if left else "")
                     + f" {'mean':>10} {'std':>10} {'median':>10} {'95% CI of mean':>23} {'p (Holm)':>{p_width}} "
                       f"{'better/worse than best':>22}")
        lines += [_text_row(rank, r, width, p_width, left) for rank, r in enumerate(group, 1)]
        lines.append(f"  {ranking_note(group)}")
    return "\n".join(lines)


def _text_row(rank, row, width, p_width, left):
    """One method's line of format_table."""
    s = shown(row)
    out = f" {row.get('n_left_out', 0):>8}" if left else ""
    if empty(row):
        return f"  {'—':>4} {row['set']:{width}} {row['n']:>6}{out}  no pair scored"
    wl = "" if is_best(row) or row.get("wins") is None else f"{row['wins']}/{row['losses']}"
    return (f"  {_rank_text(rank, row):>4} {row['set']:{width}} {s['n']:>6}{out} {s['mean']:10.5g} {s['std']:10.4g} "
            f"{s['median']:10.5g} [{s['ci95'][0]:10.5g}, {s['ci95'][1]:10.5g}] {_p_text(row):>{p_width}} {wl:>22}")


# ---------------------------------------------------------------- the report files (--report DIR)

@dataclass
class Worst:
    """One of a method's worst images, as the report shows it: its name (the reference's), its
    score, the reference and the method's output (H×W×3 uint8) and the difference map (H×W)."""
    image: str
    score: float
    ref: np.ndarray
    dis: np.ndarray
    map: np.ndarray


@dataclass
class Comparison:
    """What one report shows: per distance the methods' rows (stats.compare_methods, with `set`
    and `distance`) and every image's score, the distances' directions, the primary distance
    (the worst images are its worst) and its worst images per method, and a line about the run."""
    tables: dict     # {distance: [rows]}
    scores: dict     # {distance: {method: {image: score}}}
    lower_better: dict
    primary: str
    worst: dict      # {method: [Worst]}
    about: str
    map_distance: str = ""  # whose map the worst images show (a spatial one where the run has one)

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
    for path, text in zip(paths[1:], (markdown(comparison), latex(comparison), page(comparison))):
        write_atomic(path, text.encode("utf-8"))  # a symlink there replaced, not followed; never half a file
    return paths


def _g(x, digits=4):
    return "—" if x is None or x != x else f"{x:.{digits}g}"


SUFFIX = {"worse": " *", "better": " better*", "mixed": " mixed"}


def _p_text(row):
    """A method's Holm p-value against the best: 'best' for the best, '—' without a test, else
    three significant digits with its mark (stats.verdict): ' *' significantly worse, ' better*'
    significantly better, ' mixed', or '(n too small: min p = …)' where no outcome of these pairs
    could reach the level; bare where not significant."""
    if is_best(row):
        return "best"
    if row.get("p_holm") is None:
        return "—"
    if row.get("verdict") == "n too small":
        return f"{row['p_holm']:.3g} (n too small: min p = {row['p_holm_min']:.3g})"
    return f"{row['p_holm']:.3g}" + SUFFIX.get(row.get("verdict"), "")


def _cells(row, left=False):
    """A method's row as text cells: n, mean, interval (over the shared images: `shown`), Holm p
    (with its mark), median difference with interval, images better / worse than the best, and
    with `left` the images left out; '—' where a value does not exist."""
    s = shown(row)
    diff = "—" if row.get("median_diff") is None else \
        f"{row['median_diff']:+.4g} [{row['median_diff_ci95'][0]:+.4g}, {row['median_diff_ci95'][1]:+.4g}]"
    wl = "—" if row.get("wins") is None or is_best(row) else f"{row['wins']} / {row['losses']}"
    cells = [str(s["n"]), _g(s["mean"]), f"[{_g(s['ci95'][0])}, {_g(s['ci95'][1])}]", _p_text(row), diff, wl]
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
    out = [f"# {_title(c)}", "", _md_name(c.about), ""]
    for d in c.tables:
        group, left = c.ranked(d), any_left_out(c.tables[d])
        out += [f"## {d} ({direction(c.lower_better[d])})", "", ranking_note(group), "",
                "| rank | method | " + " | ".join(COLUMNS + [LEFT_OUT] * left) + " |",
                "|---:|---|" + "---:|" * 3 + "---:|---|---:|" + "---:|" * left]
        for rank, row in enumerate(group, 1):
            name = _md_name(row["set"])
            out.append(f"| {_rank_text(rank, row)} | {f'**{name}**' if is_best(row) else name} | "
                       + " | ".join(_md(x) for x in _cells(row, left)) + " |")
        out += [""]
    return "\n".join(out + [NOTE, ""])


def _md(text):
    return one_line(text).replace("|", "\\|")


def _md_name(text):
    """A method's name (or any text from the user or the file system) as Markdown shows it
    literally, on one line: every character that could start markup (emphasis, a link, an HTML
    tag or entity, a cell's end, a heading, maths) escaped with a backslash."""
    return "".join("\\" + ch if ch in "\\`*_[]<>|~&#$" else ch for ch in one_line(text))


def one_line(text):
    """Text with every line break (\\n, \\r and the other characters Python, TeX or a browser may
    break a line at) and other control character made a space: it cannot end a comment, a table
    row or a line of a file we write."""
    return "".join(" " if ch in "\x85\u2028\u2029" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in str(text))


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
       ">": r"\textgreater{}", "|": r"\textbar{}",  # < > | print as ¡ ¿ — in LaTeX's default font encoding
       "`": r"\textasciigrave{}", "'": r"\textquotesingle{}",  # ` ' " would print as curly quotes
       '"': r"\textquotedbl{}"}  # (and " is a command under babel's German)
LIGATURES = "-,"  # -- and ---, ,, join into dashes and a low quote: a {} after the first keeps them apart


def tex(text):
    """Text as LaTeX typesets it literally (method names may hold _, &, %, --)."""
    text = one_line(text)  # a line break would end a comment (\\input{…} on a live line) or a row
    return "".join(TEX.get(ch, ch) + ("{}" if ch in LIGATURES and text[i + 1:i + 2] == ch else "")
                   for i, ch in enumerate(text))


def latex(c):
    """The comparison as booktabs tables ready for \\input: one table per distance, best in bold,
    methods not significantly different from the best marked with a dagger, the caption saying
    what ranks them."""
    out = []
    for d in c.tables:
        arrow = r"$\downarrow$" if c.lower_better[d] else r"$\uparrow$"
        group, left = c.ranked(d), any_left_out(c.tables[d])
        out += [f"% ZS-IQA comparison, {d}: {direction(c.lower_better[d])}. {tex(c.about)}",
                r"\begin{table}[t]", r"  \centering",
                rf"  \caption{{{tex(d)} ({direction(c.lower_better[d])}). {tex(ranking_note(group))} Mean with its "
                r"95\,\% bootstrap interval, Holm-corrected $p$ of the paired Wilcoxon test (two-sided) against the "
                r"best method and the median paired difference to it. Best in bold; $^{*}$ significantly worse "
                r"than the best, better$^{*}$ significantly better than it on the paired test ($p < 0.05$); "
                r"$^\dagger$ not significantly different from the best ($p \geq 0.05$).}",
                rf"  \label{{tab:zsiqa-{re.sub(r'[^A-Za-z0-9]+', '-', d)}}}",
                r"  \begin{tabular}{rlrrlrl" + "r" * left + "}", r"    \toprule",
                rf"    Rank & Method & $n$ & Mean {arrow} & 95\,\% CI & $p_\mathrm{{Holm}}$ & "
                r"$\Delta$ median [95\,\% CI]" + " & Left out" * left + r" \\", r"    \midrule"]
        out += [_tex_row(rank, row, left) for rank, row in enumerate(group, 1)]
        out += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _tex_row(rank, row, left=False):
    n, mean, ci, p, diff, _, *rest = _cells(row, left)
    best = is_best(row)
    tied = row.get("verdict") in ("n.s.", "n too small")  # not significantly different from the best
    name = tex(row["set"]) + (r"$^\dagger$" if tied else "")
    p = "--" if p in ("best", "—") else tex(p).replace(" better*", r" better$^{*}$").replace(" *", "$^{*}$")
    cells = ["--" if unranked(row) else str(rank), rf"\textbf{{{name}}}" if best else name, n,
             rf"\textbf{{{mean}}}" if best else mean.replace("—", "--"), ci.replace("—", "--"), p,
             tex(diff).replace("—", "--"), *rest]
    return "    " + " & ".join(cells) + r" \\"


# ---------------------------------------------------------------- the HTML page

def data_uri(data, kind):
    """Bytes as a data: URI (the page loads nothing from anywhere)."""
    return f"data:{kind};base64," + base64.b64encode(data).decode("ascii")


def _encoded(image, fmt):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 88} if fmt == "JPEG" else {}))
    return data_uri(buffer.getvalue(), f"image/{fmt.lower()}")


def thumbnail(rgb, side=160):
    """An H×W×3 uint8 picture as a JPEG data URI at most `side` px wide or high."""
    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.BILINEAR)
    return _encoded(im, "JPEG")


def heat(values, top, side=160):
    """A difference map as a PNG data URI, coloured (inferno) on one scale 0…top shared by the
    report's maps, so that their colours compare."""
    import matplotlib
    rgba = matplotlib.colormaps["inferno"](np.clip(np.asarray(values, float) / (top or 1.0), 0, 1))
    im = Image.fromarray((rgba[..., :3] * 255).astype(np.uint8))
    im.thumbnail((side, side), Image.NEAREST)
    return _encoded(im, "PNG")


def _summary_view(c, d):
    """What the page shows of distance d: its methods ranked, their cells (`_cells`), and its chart."""
    group, left = c.ranked(d), any_left_out(c.tables[d])
    buffer = io.BytesIO()
    plots.method_bars([shown(r) for r in group], buffer, f"mean {d} per method, 95% CI",
                      marks=[significance_mark(r) for r in group])
    return {"distance": d, "direction": direction(c.lower_better[d]), "note": ranking_note(group),
            "columns": COLUMNS + [LEFT_OUT] * left, "chart": data_uri(buffer.getvalue(), "image/png"),
            "rows": [{"rank": _rank_text(rank, r), "name": r["set"], "best": is_best(r), "cells": _cells(r, left)}
                     for rank, r in enumerate(group, 1)]}


def _per_image_view(c):
    """The per-image table: a column per distance and method, a row per image of (exact value
    for sorting, shown text) cells, NaN where a method lacks the image."""
    columns = [(d, m) for d in c.tables for m in (r["set"] for r in c.ranked(d))]
    images = sorted({i for d in c.scores for per in c.scores[d].values() for i in per})
    return {"columns": [(m, d) for d, m in columns],
            "rows": [(i, [(repr(c.scores[d][m].get(i, float("nan"))), _g(c.scores[d][m].get(i))) for d, m in columns])
                     for i in images]}


def _worst_view(c):
    """Each method's worst images: per image its reference, output and map thumbnails (the maps
    on one colour scale, 0 to the largest value of all)."""
    top = max([float(np.max(w.map)) for ws in c.worst.values() for w in ws] or [1.0])
    return {"primary": c.primary, "map_distance": c.map_distance or c.primary, "top": f"{top:.3g}",
            "methods": [{"name": method, "triples": [
                {"image": w.image, "figures": [("reference", thumbnail(w.ref)), ("output", thumbnail(w.dis)),
                                               (f"{w.image}: {_g(w.score)}", heat(w.map, top))]} for w in items]}
                for method, items in c.worst.items()]}


@functools.cache
def _template():
    """The page's template (zsiqa/templates/report.html.j2, package data), every value escaped."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("zsiqa", "templates"), autoescape=True,
                             trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def page(c):
    """The comparison as one self-contained HTML page (style, script and images inside it),
    from the template zsiqa/templates/report.html.j2."""
    return _template().render(title=_title(c), about=c.about, note=NOTE,
                              summaries=[_summary_view(c, d) for d in c.tables], images=_per_image_view(c),
                              worst=_worst_view(c) if c.worst else None)
