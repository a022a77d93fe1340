"""Comparison tables of methods scored without labels (`zsiqa eval -dat dirs`): the ranked text
table printed at the end of a run. p-values are Holm-corrected paired Wilcoxon tests against the
best method (stats.compare_methods)."""


def ranked(rows, lower_better=True):
    """Rows of one distance best first; sets without a scored pair (mean NaN) last."""
    def key(r):
        empty = not r["n"] or r["mean"] != r["mean"]
        return (empty, 0.0 if empty else (r["mean"] if lower_better else -r["mean"]))
    return sorted(rows, key=key)


def significance_mark(row):
    """A set's mark beside its mean: 'best', '*' where significantly worse than the best (Holm-
    corrected paired Wilcoxon, p < 0.05), 'n.s.' where not, 'no pairs' for a set without scores."""
    if not row["n"] or row["mean"] != row["mean"]:
        return "no pairs"
    if row.get("vs") in (None, row["set"]):
        return "best"
    return "*" if row.get("worse") else "n.s." if row.get("p_holm") is not None else ""


def format_table(rows, lower_better=True):
    """Rows (set, distance, n, mean, std, median, ci95, vs_best...) as a ranked text table;
    names printed whole; a set with no scored pair ranked last and marked."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = ranked([r for r in rows if r["distance"] == distance], lower_better)
        width = max(20, *(len(r["set"]) for r in group))
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':{width}} {'n':>6} {'mean':>10} {'std':>10} {'median':>10} "
                     f"{'95% CI of mean':>23} {'p vs best':>10} {'wins/losses':>12}")
        for rank, r in enumerate(group, 1):
            if not r["n"] or r["mean"] != r["mean"]:
                lines.append(f"  {'—':>4} {r['set']:{width}} {r['n']:>6}  no pair scored")
                continue
            best = r.get("vs") in (None, r["set"])
            p = "best" if best else "—" if r.get("p_holm") is None else f"{r['p_holm']:.3g}"
            wl = "" if best or r.get("wins") is None else f"{r['wins']}/{r['losses']}"
            lines.append(f"  {rank:>4} {r['set']:{width}} {r['n']:>6} {r['mean']:10.5g} {r['std']:10.4g} "
                         f"{r['median']:10.5g} [{r['ci95'][0]:10.5g}, {r['ci95'][1]:10.5g}] {p:>10} {wl:>12}")
    return "\n".join(lines)
