"""Comparisons of methods scored without labels (`zsiqa eval -dat dirs`): the ranked text table
printed at the end of a run, and the report a paper can use (--report DIR): every image's score
as a long-form CSV, Markdown and booktabs LaTeX tables, and one self-contained HTML page with the
tables, a bar chart, a sortable per-image table and each method's worst images. p-values are
Holm-corrected paired Wilcoxon tests against the best method (stats.compare_methods).
"""
import base64
import html
import io
import os
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from zsiqa import plots
from zsiqa.errors import writing
from zsiqa.results import write_table


def empty(row):
    """A method without a scored pair (n 0, mean NaN)."""
    return not row["n"] or row["mean"] != row["mean"]


def is_best(row):
    """The method the others were tested against (or the only one)."""
    return row.get("vs") in (None, row["set"]) and not empty(row)


def ranked(rows, lower_better=True):
    """Rows of one distance best first; sets without a scored pair (mean NaN) last."""
    return sorted(rows, key=lambda r: (empty(r), 0.0 if empty(r) else (r["mean"] if lower_better else -r["mean"])))


def significance_mark(row):
    """A set's mark beside its mean: 'best', '*' where significantly worse than the best (Holm-
    corrected paired Wilcoxon, p < 0.05), 'n.s.' where not, '—' for a set sharing no image with
    the best (no test), 'no pairs' for a set without scores."""
    if empty(row):
        return "no pairs"
    if is_best(row):
        return "best"
    return "*" if row.get("worse") else "n.s." if row.get("p_holm") is not None else "—"


def format_table(rows, lower_better=True):
    """Rows (set, distance, n, mean, std, median, ci95, vs_best...) as a ranked text table;
    names printed whole; a set with no scored pair ranked last and marked."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = ranked([r for r in rows if r["distance"] == distance], lower_better)
        width = max(20, *(len(r["set"]) for r in group))
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':{width}} {'n':>6} {'mean':>10} {'std':>10} {'median':>10} "
                     f"{'95% CI of mean':>23} {'p (Holm)':>10} {'wins/losses':>12}")
        for rank, r in enumerate(group, 1):
            if empty(r):
                lines.append(f"  {'—':>4} {r['set']:{width}} {r['n']:>6}  no pair scored")
                continue
            best = is_best(r)
            p = _p_text(r, marked=False)
            wl = "" if best or r.get("wins") is None else f"{r['wins']}/{r['losses']}"
            lines.append(f"  {rank:>4} {r['set']:{width}} {r['n']:>6} {r['mean']:10.5g} {r['std']:10.4g} "
                         f"{r['median']:10.5g} [{r['ci95'][0]:10.5g}, {r['ci95'][1]:10.5g}] {p:>10} {wl:>12}")
    return "\n".join(lines)


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
        with writing(path), open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return paths


def _g(x, digits=4):
    return "—" if x is None or x != x else f"{x:.{digits}g}"


def _p_text(row, marked):
    """A method's Holm p-value against the best: 'best' for the best, '—' without a test, else
    three significant digits (marked: ' *' after it where significantly worse)."""
    if is_best(row):
        return "best"
    if row.get("p_holm") is None:
        return "—"
    return f"{row['p_holm']:.3g}" + (" *" if marked and row.get("worse") else "")


def _cells(row):
    """A method's row as text cells: n, mean, interval, Holm p (with its mark), median
    difference with interval, wins/losses; '—' where a value does not exist."""
    best = is_best(row)
    p = _p_text(row, marked=True)
    diff = "—" if row.get("median_diff") is None else \
        f"{row['median_diff']:+.4g} [{row['median_diff_ci95'][0]:+.4g}, {row['median_diff_ci95'][1]:+.4g}]"
    wl = "—" if row.get("wins") is None or best else f"{row['wins']} / {row['losses']}"
    return [str(row["n"]), _g(row["mean"]), f"[{_g(row['ci95'][0])}, {_g(row['ci95'][1])}]", p, diff, wl]


COLUMNS = ["n", "mean", "95% CI", "p (Holm) vs best", "median difference vs best [95% CI]", "wins / losses"]
NOTE = ("p: the paired Wilcoxon signed-rank test of a method against the best one (by mean) on the images both "
        "have, Holm-corrected over the methods tested; * p < 0.05. The interval of a mean and of the median "
        "difference (a method's score minus the best's, per image) are 95 % bootstrap intervals over images "
        "(2,000 resamples, seeded).")


def direction(lower_better):
    return "lower = more alike to the reference" if lower_better else "higher = more alike to the reference"


def markdown(c):
    """The comparison as Markdown: per distance a table of methods, best first."""
    out = [f"# ZS-IQA comparison of {len(c.scores[c.primary])} methods", "", c.about, ""]
    for d in c.tables:
        out += [f"## {d} ({direction(c.lower_better[d])})", "", "| rank | method | " + " | ".join(COLUMNS) + " |",
                "|---:|---|" + "---:|" * 3 + "---:|---|---:|"]
        for rank, row in enumerate(c.ranked(d), 1):
            name = _md_name(row["set"])
            out.append(f"| {'—' if empty(row) else rank} | {f'**{name}**' if is_best(row) else name} | "
                       + " | ".join(_md(x) for x in _cells(row)) + " |")
        out += [""]
    return "\n".join(out + [NOTE, ""])


def _md(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_name(text):
    """A method's name as Markdown shows it literally: every character that could start markup
    (emphasis, a link, an HTML tag or entity, a cell's end) escaped with a backslash."""
    return "".join("\\" + ch if ch in "\\`*_[]<>|~&" else ch for ch in str(text).replace("\n", " "))


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
       ">": r"\textgreater{}", "|": r"\textbar{}",  # < > | print as ¡ ¿ — in LaTeX's default font encoding
       "`": r"\textasciigrave{}", "'": r"\textquotesingle{}",  # ` ' " would print as curly quotes
       '"': r"\textquotedbl{}"}  # (and " is a command under babel's German)
LIGATURES = "-,"  # -- and ---, ,, join into dashes and a low quote: a {} after the first keeps them apart


def tex(text):
    """Text as LaTeX typesets it literally (method names may hold _, &, %, --)."""
    text = str(text)
    return "".join(TEX.get(ch, ch) + ("{}" if ch in LIGATURES and text[i + 1:i + 2] == ch else "")
                   for i, ch in enumerate(text))


def latex(c):
    """The comparison as booktabs tables ready for \\input: one table per distance, best in bold,
    methods not significantly worse than the best marked with a dagger."""
    out = []
    for d in c.tables:
        arrow = r"$\downarrow$" if c.lower_better[d] else r"$\uparrow$"
        out += [f"% ZS-IQA comparison, {d}: {direction(c.lower_better[d])}. {c.about}",
                r"\begin{table}[t]", r"  \centering",
                rf"  \caption{{{tex(d)} ({direction(c.lower_better[d])}): mean over images with its 95\,\% "
                r"bootstrap interval, Holm-corrected $p$ of the paired Wilcoxon test against the best method and "
                r"the median paired difference to it. Best in bold; $^\dagger$ not significantly worse than the "
                r"best ($p \geq 0.05$).}",
                rf"  \label{{tab:zsiqa-{re.sub(r'[^A-Za-z0-9]+', '-', d)}}}",
                r"  \begin{tabular}{rlrrlrl}", r"    \toprule",
                rf"    Rank & Method & $n$ & Mean {arrow} & 95\,\% CI & $p_\mathrm{{Holm}}$ & "
                r"$\Delta$ median [95\,\% CI] \\", r"    \midrule"]
        out += [_tex_row(rank, row) for rank, row in enumerate(c.ranked(d), 1)]
        out += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def _tex_row(rank, row):
    n, mean, ci, p, diff, _ = _cells(row)
    best = is_best(row)
    name = tex(row["set"]) + (r"$^\dagger$" if row.get("p_holm") is not None and not row.get("worse") else "")
    cells = ["--" if empty(row) else str(rank), rf"\textbf{{{name}}}" if best else name, n,
             rf"\textbf{{{mean}}}" if best else mean.replace("—", "--"), ci.replace("—", "--"),
             "--" if p in ("best", "—") else tex(p).replace(" *", "$^{*}$"), tex(diff).replace("—", "--")]
    return "    " + " & ".join(cells) + r" \\"


# ---------------------------------------------------------------- the HTML page

STYLE = """body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1100px;
padding:0 1em;color:#222}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em}table{border-collapse:collapse;
margin:.6em 0}th,td{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}
td.name,th.name{text-align:left}table.sortable th{cursor:pointer}th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}.note,.about{color:#555;font-size:.92em}figure{display:inline-block;
margin:.3em;text-align:center;font-size:.85em}figure img{display:block;border:1px solid #ccc}
.worst{display:flex;flex-wrap:wrap;gap:.4em;margin-bottom:1em}.triple{border:1px solid #eee;padding:.3em}"""

SCRIPT = """(function () {
  function value(cell, numeric) {
    var t = cell.getAttribute('data-value'); t = t === null ? cell.textContent : t;
    return numeric ? parseFloat(t) : t.toLowerCase();
  }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
    var numeric = table.tHead.rows[0].cells[col].getAttribute('data-type') === 'num';
    rows.sort(function (a, b) {
      var x = value(a.cells[col], numeric), y = value(b.cells[col], numeric);
      if (numeric && isNaN(x) !== isNaN(y)) { return isNaN(x) ? 1 : -1; }
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.setAttribute('aria-sort', i === col ? (dir > 0 ? 'ascending' : 'descending') : 'none');
    });
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.addEventListener('click', function () {
        sortTable(table, i, th.getAttribute('aria-sort') === 'ascending' ? -1 : 1);
      });
    });
  });
  var m = /sort=(\\d+)-(asc|desc)/.exec(location.hash);
  var first = document.querySelector('table.sortable');
  if (m && first && m[1] > 0) { sortTable(first, parseInt(m[1], 10) - 1, m[2] === 'asc' ? 1 : -1); }  // 1 = images
})();"""


def _e(text):
    return html.escape(str(text))


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


def _summary_html(c, d):
    group = c.ranked(d)
    rows = "".join(
        f"<tr><td>{'—' if empty(r) else rank}</td><td class=name>"
        + (f"<b>{_e(r['set'])}</b>" if is_best(r) else _e(r["set"])) + "</td>"
        + "".join(f"<td>{_e(x)}</td>" for x in _cells(r)) + "</tr>"
        for rank, r in enumerate(group, 1))
    head = "<tr><th>rank</th><th class=name>method</th>" + "".join(f"<th>{_e(h)}</th>" for h in COLUMNS) + "</tr>"
    buffer = io.BytesIO()
    plots.method_bars(group, buffer, f"mean {d} per method, 95% CI", marks=[significance_mark(r) for r in group])
    chart = data_uri(buffer.getvalue(), "image/png")
    return (f'<section id="d-{_e(d)}"><h2>{_e(d)} ({_e(direction(c.lower_better[d]))})</h2>'
            f'<table class="summary"><thead>{head}</thead><tbody>{rows}</tbody></table>'
            f'<img alt="bar chart of the mean {_e(d)} per method" src="{chart}"></section>')


def _per_image_html(c):
    columns = [(d, m) for d in c.tables for m in (r["set"] for r in c.ranked(d))]
    images = sorted({i for d in c.scores for per in c.scores[d].values() for i in per})
    head = '<tr><th class=name data-type="text">image</th>' + "".join(
        f'<th data-type="num">{_e(m)} · {_e(d)}</th>' for d, m in columns) + "</tr>"
    body = "".join(
        f"<tr><td class=name>{_e(i)}</td>" + "".join(
            f'<td data-value="{c.scores[d][m].get(i, float("nan"))!r}">{_g(c.scores[d][m].get(i))}</td>'
            for d, m in columns) + "</tr>" for i in images)
    return ('<section id="images"><h2>Every image</h2><p class=note>Click a column to sort by it.</p>'
            f'<table class="sortable" id="per-image"><thead>{head}</thead><tbody>{body}</tbody></table></section>')


def _worst_html(c):
    top = max([float(np.max(w.map)) for ws in c.worst.values() for w in ws] or [1.0])
    out = [f'<section id="worst"><h2>Each method\'s worst images by {_e(c.primary)}</h2>'
           f'<p class=note>Reference, output and where they differ (the {_e(c.map_distance or c.primary)} map, '
           f'one colour scale for all: 0 to {top:.3g}).</p>']
    for method, items in c.worst.items():
        out.append(f"<h3>{_e(method)}</h3><div class=worst>")
        for w in items:
            out.append(f'<div class=triple title="{_e(w.image)}">'
                       + "".join(f'<figure><img alt="{label} of {_e(w.image)}" src="{src}"><figcaption>{label}'
                                 f'</figcaption></figure>'
                                 for label, src in (("reference", thumbnail(w.ref)), ("output", thumbnail(w.dis)),
                                                    (f"{_e(w.image)}: {_g(w.score)}", heat(w.map, top))))
                       + "</div>")
        out.append("</div>")
    return "".join(out + ["</section>"])


def page(c):
    """The comparison as one self-contained HTML page (style, script and images inside it)."""
    body = "".join(_summary_html(c, d) for d in c.tables) + _per_image_html(c) + (_worst_html(c) if c.worst else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ZS-IQA comparison</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>ZS-IQA comparison of {len(c.scores[c.primary])} methods</h1><p class=about>{_e(c.about)}</p>'
            f'{body}<p class=note>{_e(NOTE)}</p><script>{SCRIPT}</script></body></html>\n')
