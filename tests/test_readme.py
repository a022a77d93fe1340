"""The README's published-accuracy table holds the published figures (SUMMARY.md), digit for digit."""
import re

from conftest import ROOT, SHARED, needs_shared


def _summary_rows():
    text = (SHARED / "reference_results" / "SUMMARY.md").read_text()
    clean, robust = text.split("## Robustness")
    rows = {}
    for part, key in ((clean, "clean"), (robust, "robust")):
        for line in part.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| ") and cells[0] not in ("method",) and not cells[0].startswith("---"):
                rows.setdefault(cells[0], {})[key] = cells[1:]
    return rows


@needs_shared
def test_accuracy_table_matches_summary():
    rows = _summary_rows()
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Published accuracy"):readme.index("## Python API")]
    checked = 0
    for line in table.splitlines():
        m = re.match(r"\| `([a-z0-9_]+)` \| ([a-z0-9]+) \| (.*) \|$", line)
        if not m:
            continue
        method, cells = f"{m.group(1)}_{m.group(2)}", [c.strip() for c in m.group(3).split("|")]
        want = rows[method]
        for got, src in zip(cells[:3], want["clean"][:3]):
            assert got == ("—" if src == "—" else " / ".join(src.split(" / ")[:2])), (method, got, src)
        assert cells[3] == want["robust"][0], method
        checked += 1
    assert checked >= 29
