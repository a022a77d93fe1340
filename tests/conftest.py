"""Shared fixtures: the golden values (tests/golden/), the seeded stand-in checkpoints (written
once by tests/checkpoints.py and kept), a tiny random ViT backbone for fast pipeline tests, and
the markers that select parts of the suite (pytest.ini lists them)."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zsiqa.cli import quiet_library_warnings  # noqa: E402

quiet_library_warnings()

GOLDEN = ROOT / "tests" / "golden"          # the published code's expected outputs (tests/golden/README.md)
REFERENCE = ROOT / "tests" / "reference"    # the published summary of the authors' per-image files

RTOL, ATOL = 1e-4, 1e-6


def pytest_collection_modifyitems(items):
    """A test that reads a full-size stand-in checkpoint runs a real backbone on the CPU: `slow`."""
    for item in items:
        if "checkpoint" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def close(got, want):
    return abs(got - want) <= RTOL * abs(want) + ATOL


@pytest.fixture(scope="session")
def golden():
    return json.loads((GOLDEN / "expected.json").read_text())


@pytest.fixture(scope="session")
def checkpoint():
    """checkpoint(name) → path of the seed-0 stand-in, written by tests/checkpoints.py once and
    kept for later runs in .cache/test-checkpoints/<the writer's digest>/ (or $ZSIQA_TEST_CKPT_DIR):
    a changed writer writes into a new folder."""
    import checkpoints
    outdir = checkpoints.cache_dir()
    return lambda name: checkpoints.make(name, outdir, 0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A seeded 2-block, 32-wide ViT/16 in timm's layout."""
    from tinymodel import make_tiny_weights
    return make_tiny_weights(tmp_path_factory.mktemp("tiny") / "tiny_vit.pth")


@pytest.fixture
def tiny(monkeypatch, tiny_weights):
    """Register the tiny backbone for this test; returns (name, weights path)."""
    from tinymodel import TINY, register_tiny
    from zsiqa import models
    register_tiny(models.BACKBONES, monkeypatch.setitem)
    return TINY, tiny_weights


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


def fails_one_line(capsys, call, match):
    """call() exits 2 with one `error:` line on stderr holding `match`, no traceback; returns it."""
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err
    assert match in lines[0], err
    return lines[0]
