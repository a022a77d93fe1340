"""The table of benchmarks/gpu.sh: its steps' JSON files (bench.py --json) and the parity log of a
folder → one markdown table on stdout. A step that failed or ran out of time is a row saying so.

Usage: python benchmarks/gpu_table.py FOLDER [--dry-run]"""
import json
import os
import sys

STEPS = [  # (file, what, the target in pairs/s or seconds, which figure meets it)
    ("dinov1_bf16_eager", "dinov1 bf16, five published, eager", ">= 2,000 pairs/s", "engine"),
    ("dinov1_bf16_compiled", "dinov1 bf16, five published, --compile on", ">= 2,000 pairs/s", "engine"),
    ("clip_vitb32_published", "clip_vitb32 fp16 (published), five published", ">= 4,000 pairs/s", "engine"),
    ("dinov1_bf16_pipal_via_run", "eval command, PIPAL-size set, dinov1 bf16", "< 15 s end to end", "via_run"),
]


def read(folder, name):
    """(bench JSON or None, why not)."""
    try:
        with open(os.path.join(folder, name + ".rc")) as f:
            rc = int(f.read().strip() or 1)
    except (OSError, ValueError):
        return None, "not run"
    if rc:
        why = "ran out of time" if rc == 124 else f"failed (exit {rc})"
        try:
            with open(os.path.join(folder, name + ".err")) as f:
                last = (f.read().strip().splitlines() or [""])[-1][:120]
        except OSError:
            last = ""
        return None, f"{why}: {last}".rstrip(": ")
    with open(os.path.join(folder, name + ".json")) as f:
        return json.load(f), ""


def row(r, what, target, kind):
    """One table row of a bench result."""
    engine = f"{r['engine_pairs_per_s']:,.0f}"
    bound = f"{r['forward_bound_pairs_per_s']:,.0f} ({100 * r['engine_share_of_forward']:.0f} %)"
    if kind == "via_run":
        met = r["via_run_wall_s"] < 15
        figure = f"{r['via_run_wall_s']} s ({r['via_run_pairs_per_s']:,.0f} pairs/s)"
    else:
        met = r["engine_pairs_per_s"] >= (4000 if "clip" in what else 2000)
        figure = "—"
    peak = "—" if r["peak_gpu_mem_gib"] is None else f"{r['peak_gpu_mem_gib']} GiB"
    return (f"| {what} | {r['pairs']:,} | {engine} | {bound} | {figure} | {r['first_call_s']} s | {peak} | "
            f"{target}: {'met' if met else 'NOT met'} |")


def main(folder, dry):
    lines = []
    device = None
    for name, what, target, kind in STEPS:
        r, why = read(folder, name)
        if r is None:
            lines.append(f"| {what} | — | — | — | — | — | — | {why} |")
            continue
        device = device or r["device"]
        lines.append(row(r, what, target, kind))
    parity = "not run"
    try:
        with open(os.path.join(folder, "parity.rc")) as f:
            rc = int(f.read().strip())
        with open(os.path.join(folder, "parity.log")) as f:
            tail = (f.read().strip().splitlines() or [""])[-1]
        parity = ("passed" if rc == 0 else "ran out of time" if rc == 124 else "FAILED") + f": {tail}"
    except (OSError, ValueError):
        pass
    head = "DRY RUN on the CPU at tiny sizes: no figure here means anything\n\n" if dry else ""
    print(f"{head}Device: {device or 'unknown'}\n")
    print("| measurement | pairs | engine pairs/s | forward-only bound pairs/s (engine's share) | eval command "
          "| first call | peak GPU memory | target |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nGolden parity on the device: {parity}")


if __name__ == "__main__":
    main(sys.argv[1], "--dry-run" in sys.argv[2:])
