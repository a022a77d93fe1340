"""run.py --layers / --per-layer / --compile and calc_scores.py --per-layer, with the tiny
2-block ViT on tiny datasets."""
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calc_scores
import minidata
from helpers import fails_one_line, run_tiny
from zsiqa import results
from zsiqa.scorer import Scorer


def _pipal(tmp_path):
    return minidata.make_pipal(str(tmp_path / "p"))


@pytest.mark.parametrize("spec", ["0", "3", "2-1", "a", ""])
def test_bad_layers_one_line_exit_2_nothing_written(tiny, tmp_path, capsys, spec):
    root = _pipal(tmp_path)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2",
                                            "-sdir", str(tmp_path / "r" / "sub"), "--layers", spec),
                   "layer selection", warnings=False)
    assert not (tmp_path / "r").exists()


def test_all_blocks_equal_default_and_subset_is_sum_of_columns(tiny, tmp_path):
    root = _pipal(tmp_path)
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,wsd", "-sdir", str(tmp_path / "a"), "--per-layer")
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,wsd", "-sdir", str(tmp_path / "b"), "--layers", "1-2")
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "c"), "--layers", "2")
    for d in ("l2", "wsd"):
        a = pd.read_csv(tmp_path / "a" / f"pipal_{tiny[0]}_{d}.csv")
        b = pd.read_csv(tmp_path / "b" / f"pipal_{tiny[0]}_{d}.csv")
        assert list(a.dis) == list(b.dis) and list(a.pred) == list(b.pred)  # exactly the default
    assert json.load(open(tmp_path / "b" / f"pipal_{tiny[0]}_l2.json"))["layers"] is None
    per = pd.read_csv(tmp_path / "a" / f"pipal_{tiny[0]}_l2_layers.csv")
    sub = pd.read_csv(tmp_path / "c" / f"pipal_{tiny[0]}_l2.csv")
    assert list(sub.dis) == list(per.dis)
    np.testing.assert_allclose(sub.pred, per.block_2, rtol=1e-6)
    assert json.load(open(tmp_path / "c" / f"pipal_{tiny[0]}_l2.json"))["layers"] == "2"
    for run_dir, want in [("b", ["", ""]), ("c", ["2"])]:  # summary rows say which blocks were compared
        assert list(pd.read_csv(tmp_path / run_dir / "summary.csv", dtype=str, keep_default_na=False).layers) == want


def test_resume_with_other_layers_refused(tiny, tmp_path, capsys):
    root, out = _pipal(tmp_path), str(tmp_path / "r")
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", out, "--layers", "1")
    capsys.readouterr()
    for other in (["--layers", "2"], []):
        fails_one_line(capsys, lambda other=other: run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2",
                                                            "-sdir", out, *other), "layers")
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", out, "--layers", "1") == 0


def test_old_record_without_layers_compares_as_all_blocks():
    old = {k: None for k in results.COMPARED if k != "layers"}
    assert results.first_difference(old, {**old, "layers": None}) is None
    assert results.first_difference(old, {**old, "layers": "1"}) == ("layers", None, "1")


@pytest.mark.parametrize("layout", ["pipal", "dirs"])
def test_per_layer_files_sum_to_results(tiny, tmp_path, layout):
    out = tmp_path / "r"
    if layout == "pipal":
        where, stems = ["-dat", "pipal", "--root", _pipal(tmp_path)], {d: f"pipal_{tiny[0]}_{d}" for d in ("l2", "cos")}
    else:
        gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=3, sub=False)
        where = ["-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0]]
        stems = {d: f"A_{tiny[0]}_{d}" for d in ("l2", "cos")}
    assert run_tiny(tiny, *where, "-d", "l2,cos,wsd", "-sdir", str(out), "--per-layer") == 0
    blocks = Scorer(tiny[0], "l2", device="cpu", weights=tiny[1]).blocks
    for stem in stems.values():
        res, per = pd.read_csv(out / f"{stem}.csv"), pd.read_csv(out / f"{stem}_layers.csv")
        cols = [f"block_{b}" for b in blocks]
        head = ["dis", "ref", "mos"] if layout == "pipal" else ["dis", "ref"]
        assert list(per.columns) == head + cols
        assert list(per.dis) == list(res.dis) and list(per.ref) == list(res.ref)
        np.testing.assert_allclose(per[cols].sum(axis=1), res.pred, rtol=1e-6)
    assert not list(out.glob("*wsd_layers.csv"))


def test_per_layer_resume_scores_pairs_missing_from_layers_file(tiny, tmp_path):
    root, out = _pipal(tmp_path), tmp_path / "r"
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out))
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out), "--per-layer")
    res, per = pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv"), pd.read_csv(out / f"pipal_{tiny[0]}_l2_layers.csv")
    assert len(res) == len(per) == 6 and list(res.dis) == list(per.dis)
    np.testing.assert_allclose(per.filter(like="block_").sum(axis=1), res.pred, rtol=1e-6)


def test_calc_scores_per_layer_equals_scipy(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    run_tiny(tiny, "-dat", "pipal", "--root", _pipal(tmp_path), "-d", "l2", "-sdir", str(out), "--per-layer")
    capsys.readouterr()
    path = str(out / f"pipal_{tiny[0]}_l2_layers.csv")
    png = tmp_path / "srcc.png"
    assert calc_scores.main(["--per-layer", path, "--json", "--plot", str(png)]) == 0
    got = json.loads(capsys.readouterr().out)
    per = pd.read_csv(path)
    assert [g["block"] for g in got] == [1, 2]
    for g in got:  # pipal: labels higher = better, l2 lower = better → signed −1
        x = -per[f"block_{g['block']}"]
        assert g["srcc"] == pytest.approx(stats.spearmanr(x, per.mos)[0])
        assert g["plcc"] == pytest.approx(stats.pearsonr(x, per.mos)[0])
    assert png.stat().st_size > 0
    assert calc_scores.main(["--per-layer", path]) == 0
    assert "block" in capsys.readouterr().out


def test_per_layer_needs_a_per_layer_distance(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Scorer, "__init__", lambda *a, **k: pytest.fail("the model loaded"))
    root = _pipal(tmp_path)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "wsd",
                                            "-sdir", str(tmp_path / "r"), "--per-layer"), "l2, cos", warnings=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_compile_flag_off_and_auto_on_cpu(tiny, tmp_path, monkeypatch, mode):
    seen, original = [], Scorer.__init__

    def spy(self, *a, **k):
        seen.append(k.get("compile"))
        original(self, *a, **k)
    monkeypatch.setattr(Scorer, "__init__", spy)
    assert run_tiny(tiny, "-dat", "pipal", "--root", _pipal(tmp_path), "-d", "l2", "-sdir", str(tmp_path / "r"),
                "--compile", mode) == 0
    assert seen == [False]


def test_compile_auto_on_cuda_counts_jobs(monkeypatch):
    """auto compiles on CUDA from COMPILE_MIN_JOBS jobs to score (the count the run already made)."""
    import types

    import torch

    from zsiqa import scorer as scorer_module
    calls = []
    scorer = types.SimpleNamespace(device=torch.device("cuda"), fixed_batch=False,
                                   compile_backbone=lambda: calls.append(1))
    for n_min, want in ((6, True), (7, False)):
        monkeypatch.setattr(scorer_module, "COMPILE_MIN_JOBS", n_min)
        calls.clear()
        Scorer.compile_if_it_pays(scorer, 6)
        assert bool(calls) is want
    scorer.device = torch.device("cpu")
    Scorer.compile_if_it_pays(scorer, 100)
    assert bool(calls) is False


def test_unlabelled_summary_names_the_blocks(tiny, tmp_path):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs[0], "-d", "l2", "-sdir", str(out),
                "--layers", "2") == 0
    summary = pd.read_csv(out / "summary_unlabelled.csv", dtype=str, keep_default_na=False)
    assert list(summary.layers) == ["2"] and list(summary.distance) == ["l2"]


def test_calc_scores_per_layer_leaves_out_a_nan_pair(tiny, tmp_path, capsys):
    """A pair the engine scored NaN (a run's record beside the file): one warning, the other pairs'
    correlations as scipy gives them (it failed with 'not a finite number')."""
    out = tmp_path / "r"
    run_tiny(tiny, "-dat", "pipal", "--root", _pipal(tmp_path), "-d", "l2", "-sdir", str(out), "--per-layer")
    path = out / f"pipal_{tiny[0]}_l2_layers.csv"
    lines = path.read_text().splitlines(keepends=True)
    cells = lines[2].rstrip("\n").split(",")
    lines[2] = ",".join([*cells[:-1], "nan"]) + "\n"
    path.write_text("".join(lines))
    capsys.readouterr()
    assert calc_scores.main(["--per-layer", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning:") == 1 and "NaN or inf" in captured.err
    per = pd.read_csv(path).drop(index=1)
    got = json.loads(captured.out)
    for g in got:
        assert g["srcc"] == pytest.approx(stats.spearmanr(-per[f"block_{g['block']}"], per.mos)[0])


def test_per_layer_name_of_another_runs_results_refused(tiny, tmp_path, capsys):
    """`-s foo_layers` and `-s foo` share a name: foo's per-layer file (or a fresh foo, which
    clears its per-layer file) would replace the other run's results file, in either order."""
    root, out = _pipal(tmp_path), str(tmp_path / "r")
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", out]
    assert run_tiny(tiny, *base, "-s", "foo_layers") == 0
    kept = (tmp_path / "r" / "pipal_foo_layers.csv").read_bytes()
    capsys.readouterr()
    for extra in (["--per-layer"], []):
        fails_one_line(capsys, lambda extra=extra: run_tiny(tiny, *base, "-s", "foo", *extra), "another run",
                       warnings=False)
    assert (tmp_path / "r" / "pipal_foo_layers.csv").read_bytes() == kept
    assert not (tmp_path / "r" / "pipal_foo.csv").exists()
    # the other order: foo first, then a run whose results file would be foo's per-layer file
    other = str(tmp_path / "o")
    assert run_tiny(tiny, *base[:-1], other, "-s", "foo", "--per-layer") == 0
    capsys.readouterr()
    fails_one_line(capsys, lambda: run_tiny(tiny, *base[:-1], other, "-s", "foo_layers", "--overwrite"),
                   "per-layer file of")
    assert list(pd.read_csv(tmp_path / "o" / "pipal_foo_layers.csv").columns)[:4] == ["dis", "ref", "mos", "block_1"]
