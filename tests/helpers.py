"""What tests share besides fixtures (those are in conftest.py): the checkout's paths, the golden
tolerance, running the eval command with the tiny backbone, the one assertion that a command
failed in one line with exit code 2, and the golden model rows' runners.

    from helpers import ROOT, fails_one_line, run_tiny
"""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"          # the published code's expected outputs (tests/golden/README.md)
REFERENCE = ROOT / "tests" / "reference"    # the published summary of the authors' per-image files

RTOL, ATOL = 1e-4, 1e-6


def close(got, want):
    """Whether a value equals a golden one within the golden tolerance (1e-4 relative)."""
    return abs(got - want) <= RTOL * abs(want) + ATOL


# ---------------------------------------------------------------- golden model rows, shared by
# test_models_golden.py (`models`) and test_zoo.py (`models_more`)

def group_rows(rows, *keys):
    """{(row[k] for k in keys): [rows]}, in first-seen order."""
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups


def golden_api_scores(rows, checkpoint, device="cpu", entry=lambda model: model):
    """{id(row): score} for golden model rows: one Scorer and one call per (model, checkpoint),
    so each model's features are computed once. `entry` maps a row's model to a registry name."""
    from zsiqa.scorer import Scorer
    out = {}
    for (model, ckpt), group in group_rows(rows, "model", "checkpoint").items():
        distances = sorted({r["distance"] for r in group})
        pairs = sorted({(r["ref"], r["dis"]) for r in group})
        scorer = Scorer(entry(model), distances, device=device, precision="fp32",
                        weights=checkpoint(ckpt.split("_seed")[0]))
        got = scorer(dis=[str(GOLDEN / "models" / b) for _, b in pairs],
                     ref=[str(GOLDEN / "models" / a) for a, _ in pairs])
        for r in group:
            out[id(r)] = float(got[r["distance"]][pairs.index((r["ref"], r["dis"]))])
    return out


def golden_cli_mismatches(rows, checkpoint, tmp_path, capsys, entry=lambda model: model):
    """Score golden rows through the command line, one `run.py -dat csv` per (model, checkpoint)
    over a list of all its pairs (each model loaded once); returns (rows checked,
    [mismatching (model, distance, ref, got, want)])."""
    import pandas as pd

    import run
    checked, bad = 0, []
    for k, ((model, ckpt), group) in enumerate(group_rows(rows, "model", "checkpoint").items()):
        listing = tmp_path / f"golden{k}.csv"
        pairs = sorted({(r["ref"], r["dis"]) for r in group})
        listing.write_text("ref,dis\n" + "".join(f"{a},{b}\n" for a, b in pairs))
        distances = sorted({r["distance"] for r in group})
        out = tmp_path / f"out{k}"
        assert run.main(["-dat", "csv", "--csv", str(listing), "--root", str(GOLDEN / "models"), "-m", entry(model),
                         "-d", ",".join(distances), "--device", "cpu", "--weights", checkpoint(ckpt.split("_seed")[0]),
                         "-sdir", str(out), "--no-progress", "--json"]) == 0
        capsys.readouterr()
        got = {d: pd.read_csv(out / f"golden{k}_{entry(model)}_{d}.csv").set_index(["ref", "dis"]).pred
               for d in distances}
        for r in group:
            checked += 1
            value = float(got[r["distance"]][(r["ref"], r["dis"])])
            if not close(value, r["score"]):
                bad.append((model, r["distance"], r["ref"], value, r["score"]))
    return checked, bad


def interrupt_after(monkeypatch, n):
    """Make Scorer.score_files raise KeyboardInterrupt (a Ctrl-C) after yielding n pairs;
    returns a function that undoes it."""
    from zsiqa.scorer import Scorer
    original = Scorer.score_files

    def crashing(self, *a, **k):
        for done, item in enumerate(original(self, *a, **k)):
            if done == n:
                raise KeyboardInterrupt
            yield item
    monkeypatch.setattr(Scorer, "score_files", crashing)
    return lambda: monkeypatch.setattr(Scorer, "score_files", original)


def count_scored(monkeypatch):
    """A list that collects the (variant, pair) ids the engine scores from now on."""
    from zsiqa.scorer import Scorer
    seen, original = [], Scorer.score_chunks

    def counting(self, *args, **kwargs):
        for item in original(self, *args, **kwargs):
            seen.append(item[0])
            yield item
    monkeypatch.setattr(Scorer, "score_chunks", counting)
    return seen


def random_image(path, w, h, seed):
    """A w×h RGB image of seeded uniform noise saved at path; returns the path as a string."""
    import numpy as np
    from PIL import Image
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


def run_tiny(tiny, *args):
    """run.py (the eval command) with the tiny backbone on the CPU, no progress bar; its exit code."""
    import run
    name, weights = tiny
    return run.main([*args, "-m", name, "--weights", weights, "--device", "cpu", "--no-progress"])


def fails_one_line(capsys, call, *match, warnings=True):
    """The one assertion that a command refused in one line: call() exits 2 with one `error:`
    line on stderr holding every `match`, and no traceback. warnings: whether `warning:` lines may
    come before it (False: that line is all of stderr). Returns the error line."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not (warnings and line.startswith("warning:"))]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert all(m in lines[0] for m in match), err
    return lines[0]
