"""run.py -dat dirs (output folders against a reference folder) and label-free lists, end to end
with the tiny backbone: per-pair files, the ranking table, resume, torchrun, bad input."""
import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

import minidata
from helpers import ROOT, count_scored, fails_one_line, interrupt_after, run_tiny
from zsiqa.scorer import Scorer


def _dirs(gt, outs):
    return ["-dat", "dirs", "--ref-dir", gt, *[a for o in outs for a in ("--dis-dir", o)]]


def _api(tiny, gt, out, frame, distances):
    return Scorer(tiny[0], distances, device="cpu", weights=tiny[1])(
        dis=[os.path.join(out, p) for p in frame.dis], ref=[os.path.join(gt, p) for p in frame.ref])


@pytest.mark.slow
def test_dirs_files_equal_api_and_summary_equals_scipy(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"))
    res = tmp_path / "res"
    assert run_tiny(tiny, *_dirs(gt, outs), "-d", "l2,wsd", "-sdir", str(res), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {r["set"] for r in rows} == {"A", "B"}
    frames = {}
    for method, out in zip(("A", "B"), outs):
        for d in ("l2", "wsd"):
            path = res / f"{method}_{tiny[0]}_{d}.csv"
            frames[(method, d)] = frame = pd.read_csv(path)
            assert list(frame.columns) == ["dis", "ref", "pred"] and len(frame) == 8
            assert "x/7.png" in set(frame.dis)  # paths relative to their folders, subfolders kept
            record = json.loads(path.with_suffix(".json").read_text())
            assert record["ref_dir"] == os.path.abspath(gt) and record["dis_dir"] == os.path.abspath(out)
            assert record["label_higher_better"] is None and record["distance"] == d
        api = _api(tiny, gt, out, frames[(method, "l2")], ["l2", "wsd"])
        for d in ("l2", "wsd"):
            np.testing.assert_allclose(frames[(method, d)].pred, api[d].numpy(), rtol=1e-6)
    for r in rows:
        x = frames[(r["set"], r["distance"])].pred.to_numpy()
        assert r["model"] == tiny[0] and r["n"] == 8
        assert r["mean"] == pytest.approx(x.mean()) and r["std"] == pytest.approx(x.std(ddof=1))
        assert r["median"] == pytest.approx(np.median(x)) and r["ci95"][0] <= x.mean() <= r["ci95"][1]
    for d in ("l2", "wsd"):  # noise level 1 beats level 4 on every image
        best, worse = (next(r for r in rows if r["distance"] == d and r["set"] == s) for s in ("A", "B"))
        assert best["p_value"] is None and best["vs"] == worse["vs"] == "A"
        a, b = frames[("A", d)].set_index("ref").pred, frames[("B", d)].set_index("ref").pred
        assert worse["p_value"] == pytest.approx(stats.wilcoxon(b[a.index], a).pvalue)
        assert worse["p_value"] < 0.05 and worse["losses"] == 8 and worse["wins"] == 0
    logged = list(csv.DictReader(open(res / "summary_unlabelled.csv")))
    assert len(logged) == 4 and {r["set"] for r in logged} == {"A", "B"}
    for d in ("l2", "wsd"):
        assert (res / f"{tiny[0]}_{d}_methods_A+B.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_table_ranks_the_better_method_first(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("worse", 4), ("better", 1)), n=6)
    assert run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "r"), "--limit", "5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "l2 (lower = more alike to the reference)"
    first, second = lines[2].split(), lines[3].split()
    assert first[:3] == ["1", "better", "5"] and first[-1] == "best"  # --limit: per folder
    assert second[:3] == ["2", "worse", "5"] and second[-1] == "0/5"


def test_reference_encoded_once_across_methods(tiny, tmp_path, monkeypatch):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("a", 1), ("b", 2), ("c", 3)), n=3)
    encoded, calls = [], []
    original_encode, original_files = Scorer.encode, Scorer.score_files
    monkeypatch.setattr(Scorer, "encode", lambda self, w: encoded.append(w.shape[0]) or original_encode(self, w))

    def score_files(self, *a, **k):
        calls.append(1)
        yield from original_files(self, *a, **k)
    monkeypatch.setattr(Scorer, "score_files", score_files)
    run_tiny(tiny, *_dirs(gt, outs), "-d", "l2,cos", "-sdir", str(tmp_path / "r"))
    assert len(calls) == 1
    n_windows = 2  # 224×232 → 1×2 windows
    assert sum(encoded) == n_windows * (3 + 3 * 3)  # 3 references once each, 9 outputs


def test_label_free_csv_equals_a_dirs_set(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 2),), n=4, sub=False)
    lst = tmp_path / "d" / "mine.csv"
    lst.write_text("ref,dis\n" + "".join(f"GT/{k}.png,A/{k}.png\n" for k in range(4)))
    assert run_tiny(tiny, "-dat", "csv", "--csv", str(lst), "-d", "l2", "-sdir", str(tmp_path / "r"), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["set"] == "mine" and rows[0]["n"] == 4 and "srcc" not in rows[0]
    frame = pd.read_csv(tmp_path / "r" / f"mine_{tiny[0]}_l2.csv")
    assert list(frame.columns) == ["dis", "ref", "pred"] and list(frame.ref) == [f"GT/{k}.png" for k in range(4)]
    run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "r2"), "--json")
    other = json.loads(capsys.readouterr().out)[0]
    np.testing.assert_allclose(frame.pred, pd.read_csv(tmp_path / "r2" / f"A_{tiny[0]}_l2.csv").pred, rtol=1e-6)
    assert rows[0]["mean"] == pytest.approx(other["mean"]) and rows[0]["ci95"] == pytest.approx(other["ci95"])


@pytest.mark.slow
def test_interrupted_dirs_run_resumes_without_recomputing(tiny, tmp_path, monkeypatch):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=4)
    args = [*_dirs(gt, outs), "-d", "l2,jsd", "--batch-size", "3"]
    run_tiny(tiny, *args, "-sdir", str(tmp_path / "full"))
    restore = interrupt_after(monkeypatch, 3)
    part = tmp_path / "part"
    with pytest.raises(SystemExit) as e:
        run_tiny(tiny, *args, "-sdir", str(part))
    assert e.value.code == 130
    assert sum(len(pd.read_csv(part / f"{m}_{tiny[0]}_l2.csv")) for m in "AB") == 3
    restore()
    seen = count_scored(monkeypatch)
    run_tiny(tiny, *args, "-sdir", str(part))
    assert len(seen) == 8 - 3  # only the missing pairs were scored
    for m in "AB":
        for d in ("l2", "jsd"):
            name = f"{m}_{tiny[0]}_{d}.csv"
            a, b = pd.read_csv(tmp_path / "full" / name), pd.read_csv(part / name)
            assert list(a.dis) == list(b.dis)
            np.testing.assert_allclose(a.pred, b.pred, rtol=1e-6)


def test_record_tells_reference_folders_apart(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=2)
    other = tmp_path / "GT2"
    os.rename(gt, other)
    run_tiny(tiny, *_dirs(str(other), outs), "-d", "l2", "-sdir", str(tmp_path / "r"))
    minidata.make_dirs(str(tmp_path / "d"), levels=(), n=2)  # a second reference folder, same file names
    fails_one_line(capsys, lambda: run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "r")),
                   "was made with ref_dir", warnings=False)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun_two_processes_equal_one_on_dirs(tiny_weights, tmp_path):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=5)
    common = [*_dirs(gt, outs), "-m", "tiny_vit_test", "-d", "l2,wsd", "--device", "cpu", "--no-progress", "--json"]
    script = str(ROOT / "tests" / "tiny_run.py")
    one = subprocess.run([sys.executable, script, tiny_weights, *common, "-sdir", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), script, tiny_weights, *common, "-sdir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    for m in "AB":
        for d in ("l2", "wsd"):
            a = pd.read_csv(tmp_path / "one" / f"{m}_tiny_vit_test_{d}.csv")
            b = pd.read_csv(tmp_path / "two" / f"{m}_tiny_vit_test_{d}.csv")
            assert list(a.dis) == list(b.dis) and list(a.ref) == list(b.ref)
            np.testing.assert_allclose(a.pred, b.pred, rtol=1e-5)
    assert not list((tmp_path / "two").glob("*.rank*"))
    for x, y in zip(json.loads(one.stdout), json.loads(two.stdout), strict=True):
        assert (x["set"], x["distance"], x["n"]) == (y["set"], y["distance"], y["n"])
        assert x["mean"] == pytest.approx(y["mean"], rel=1e-5) and x["wins"] == y["wins"]


@pytest.mark.parametrize("case,match", [
    ("empty", "holds no images"), ("nopartner", "no image has a partner"), ("noref", "folder not found"),
    ("twice", "given twice"), ("dup", "differ only by extension"), ("orphan", "pass --skip-missing"),
    ("flags_without_dirs", "go with -dat dirs"), ("dirs_without_flags", "-dat dirs needs --ref-dir"),
    ("no_dis", "-dat dirs needs --ref-dir"), ("sizes", "sizes differ")])
def test_bad_input_one_line_exit_2(tiny, tmp_path, capsys, case, match):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    args = _dirs(gt, outs)
    if case == "empty":
        os.makedirs(tmp_path / "E")
        args = _dirs(gt, [str(tmp_path / "E")])
    elif case == "nopartner":
        Image.new("RGB", (224, 232)).save(tmp_path / "d" / "A" / "zzz.png")
        [os.remove(os.path.join(outs[0], f"{k}.png")) for k in range(2)]
    elif case == "noref":
        args = _dirs(str(tmp_path / "none"), outs)
    elif case == "twice":
        args = _dirs(gt, [outs[0], outs[0] + "/"])
    elif case == "dup":
        Image.new("RGB", (224, 232)).save(os.path.join(outs[1], "0.jpg"))
    elif case == "orphan":
        os.remove(os.path.join(outs[1], "1.png"))
    elif case == "flags_without_dirs":
        args = ["-dat", "kadid10k", "--root", str(tmp_path), "--ref-dir", gt]
    elif case == "dirs_without_flags":
        args = ["-dat", "dirs", "--dis-dir", outs[0]]
    elif case == "no_dis":
        args = ["-dat", "dirs", "--ref-dir", gt]
    elif case == "sizes":
        Image.new("RGB", (230, 232)).save(os.path.join(outs[1], "1.png"))
    fails_one_line(capsys, lambda: run_tiny(tiny, *args, "-d", "l2", "-sdir", str(tmp_path / "r")), match,
                   warnings=False)
    assert not (tmp_path / "r").exists()


def test_skip_missing_scores_the_pairs_found(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=3, sub=False)
    os.remove(os.path.join(outs[1], "1.png"))
    assert run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "r"), "--skip-missing", "--json") == 0
    rows = {r["set"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["A"]["n"] == 3 and rows["B"]["n"] == 2 and rows["B"]["n_common"] == 2


def test_sweep_on_dirs_matches_a_single_robustness_run(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    assert run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "s"), "--kinds", "rot,sca",
                "--pcts", "2") == 0
    out = capsys.readouterr().out
    assert "[clean]" in out and "[rot-2]" in out and "[sca-2]" in out
    run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "-sdir", str(tmp_path / "one"), "-rob", "rot", "-pct", "2")
    for m in "AB":
        np.testing.assert_allclose(pd.read_csv(tmp_path / "s" / f"{m}_{tiny[0]}_l2_rot-2.csv").pred,
                                   pd.read_csv(tmp_path / "one" / f"{m}_{tiny[0]}_l2_rot-2.csv").pred, rtol=1e-6)
    assert (tmp_path / "s" / f"{tiny[0]}_l2_sca-2_methods_A+B.png").is_file()
    logged = list(csv.DictReader(open(tmp_path / "s" / "summary_unlabelled.csv")))
    assert {(r["robustness"], r["pct"]) for r in logged} == {("none", "0"), ("rot", "2"), ("sca", "2")}


def test_label_free_files_keep_complete_rows_only(tmp_path):
    from zsiqa import results
    path = str(tmp_path / "A_m_l2.csv")
    writer = results.RowWriter({"k": path}, results.Columns(labelled=False))
    writer.write("k", "0.png", "0.png", None, [0.5])
    writer.close()
    with open(path, "a") as f:
        f.write("1.png,1.png,0.7")  # torn: no newline
    assert open(path).read().startswith("dis,ref,pred\n0.png,0.png,0.5\n")
    assert results.read_done(path) == {("0.png", "0.png"): (None, (0.5,))}
    rows = results.finish(path, {("0.png", "0.png"): None, ("1.png", "1.png"): None}, [("0.png", "0.png")])
    assert rows == [("0.png", "0.png", None, (0.5,))] and open(path).read() == "dis,ref,pred\n0.png,0.png,0.5\n"


def _refused(tiny, capsys, args, sdir, match):
    """run.py exits 2 with one line holding `match`, writing nothing under `sdir`."""
    fails_one_line(capsys, lambda: run_tiny(tiny, *args, "-d", "l2", "-sdir", sdir), match, warnings=False)
    assert not os.path.exists(sdir)


def test_name_not_utf8_refused_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch):
    """Names whose bytes are not UTF-8 (Latin-1 'café') cannot go into the UTF-8 results files and
    summaries (a UnicodeEncodeError once scoring had begun): one line naming it, before the model loads."""
    from zsiqa import evaluate
    monkeypatch.setattr(evaluate, "Scorer", lambda *a, **k: pytest.fail("the model was loaded"))
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    latin = os.fsdecode(os.fsencode(str(tmp_path)) + b"/r\xe9")
    _refused(tiny, capsys, _dirs(gt, outs), latin, "choose another -sdir")
    for folder in (gt, *outs):
        os.rename(os.fsencode(os.path.join(folder, "1.png")), os.fsencode(folder) + b"/caf\xe9.png")
    _refused(tiny, capsys, _dirs(gt, outs), str(tmp_path / "r"), r"caf\xe9.png' is not valid UTF-8")


def test_label_free_list_with_repeated_references(tiny, tmp_path, capsys):
    """Several outputs of one reference in a label-free list: every pair counts in the summary and
    the report's scores (keyed by reference they collapsed to one row per reference)."""
    minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 2), ("B", 5)), n=2, sub=False)
    lst = tmp_path / "d" / "mine.csv"
    lst.write_text("ref,dis\n" + "".join(f"GT/{k}.png,{m}/{k}.png\n" for k in range(2) for m in "AB"))
    out, rep = tmp_path / "r", tmp_path / "rep"
    assert run_tiny(tiny, "-dat", "csv", "--csv", str(lst), "-d", "l2", "-sdir", str(out), "--json",
                "--report", str(rep), "--report-worst", "4") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["n"] == 4
    frame = pd.read_csv(out / f"mine_{tiny[0]}_l2.csv")
    assert len(frame) == 4 and rows[0]["mean"] == pytest.approx(frame.pred.mean())
    scores = pd.read_csv(rep / "scores.csv")
    assert len(scores) == 4 and sorted(scores.image) == sorted(frame.dis)
    np.testing.assert_allclose(sorted(scores.score), sorted(frame.pred), rtol=1e-6)
