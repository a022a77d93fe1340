"""Comparison tables of methods scored without labels (`zsiqa eval -dat dirs`): the ranked
text table printed at the end of a run."""


def format_table(rows, lower_better=True):
    """Rows (set, distance, n, mean, std, median, ci95, vs_best...) as a ranked text table."""
    lines = []
    for distance in dict.fromkeys(r["distance"] for r in rows):
        group = sorted((r for r in rows if r["distance"] == distance), key=lambda r: r["mean"],
                       reverse=not lower_better)
        lines.append(f"{distance} ({'lower' if lower_better else 'higher'} = more alike to the reference)")
        lines.append(f"  {'rank':>4} {'set':20} {'n':>6} {'mean':>10} {'std':>10} {'median':>10} "
                     f"{'95% CI of mean':>23} "
                     f"{'p vs best':>10} {'wins/losses':>12}")
        for rank, r in enumerate(group, 1):
            p = "best" if r.get("p_value") is None else f"{r['p_value']:.3g}"
            wl = "" if r.get("p_value") is None else f"{r['wins']}/{r['losses']}"
            lines.append(f"  {rank:>4} {r['set'][:20]:20} {r['n']:>6} {r['mean']:10.5g} {r['std']:10.4g} "
                         f"{r['median']:10.5g} "
                         f"[{r['ci95'][0]:10.5g}, {r['ci95'][1]:10.5g}] {p:>10} {wl:>12}")
    return "\n".join(lines)
