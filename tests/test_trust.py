"""Every number trusted, round three: a resume after the images changed, a finished file never
appended to again, rows lost under a running process, label direction without a record,
statistics of empty and disjoint sets, outputs that cannot collide, special files, empty flag
values and absurd numbers. Each case ends in the right number or one `error:` line (exit 2)."""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import calc_scores
import minidata
import run_single_img
from helpers import ROOT, count_scored, fails_one_line, interrupt_after, random_image, run_tiny
from zsiqa import results
from zsiqa.errors import UserError
from zsiqa.scorer import Scorer


def _dirs(gt, outs, *more):
    return ["-dat", "dirs", "--ref-dir", gt, *[a for o in outs for a in ("--dis-dir", o)], *more]


def _rows(path):
    return {(r.dis, r.ref): r for r in pd.read_csv(path, keep_default_na=False).itertuples()}


def _api(tiny, ref, dis, distance="l2"):
    return float(Scorer(tiny[0], distance, device="cpu", weights=tiny[1])(dis=dis, ref=ref))


def _redo(path, seed):
    """Write another image of the same size at `path` (a method's output regenerated)."""
    w, h = Image.open(path).size
    random_image(path, w, h, seed)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a clearly later mtime, whatever the clock


# ---------------------------------------------------------------- resume after the images changed

def test_regenerated_outputs_are_scored_again(tiny, tmp_path, capsys, monkeypatch):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=4, sub=False)
    args = _dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"))
    assert run_tiny(tiny, *args) == 0
    capsys.readouterr()
    _redo(os.path.join(outs[0], "1.png"), 99)
    scored = count_scored(monkeypatch)
    assert run_tiny(tiny, *args) == 0
    err = capsys.readouterr().err
    assert "1 image(s) changed since they were scored (e.g. 1.png)" in err, err
    assert len(scored) == 1  # that pair alone
    row = _rows(tmp_path / "r" / f"A_{tiny[0]}_l2.csv")[("1.png", "1.png")]
    assert row.pred == pytest.approx(_api(tiny, os.path.join(gt, "1.png"), os.path.join(outs[0], "1.png")), rel=1e-6)


def test_changed_image_of_a_csv_list_is_scored_again(tiny, tmp_path, capsys):
    listing = minidata.make_csv(str(tmp_path / "c"))
    args = ["-dat", "csv", "--csv", listing, "-d", "l2", "-sdir", str(tmp_path / "r")]
    assert run_tiny(tiny, *args) == 0
    root = os.path.dirname(listing)
    _redo(os.path.join(root, "gt", "2.png"), 98)  # a reference this time
    assert run_tiny(tiny, *args) == 0
    assert "changed since they were scored (e.g. gt/2.png)" in capsys.readouterr().err
    row = _rows(tmp_path / "r" / f"list_{tiny[0]}_l2.csv")[("out/2.png", "gt/2.png")]
    assert row.pred == pytest.approx(_api(tiny, os.path.join(root, "gt/2.png"), os.path.join(root, "out/2.png")),
                                     rel=1e-6)


def test_lost_stamps_score_everything_again(tiny, tmp_path, capsys, monkeypatch):
    """Images changed and the stamps they were scored from deleted: which rows are stale cannot
    be told, so all are scored again (with unchanged images the stamps are the same: kept)."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=3, sub=False)
    args = _dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"))
    assert run_tiny(tiny, *args) == 0
    scored = count_scored(monkeypatch)
    assert run_tiny(tiny, *args) == 0 and scored == []
    for f in (tmp_path / "r" / results.STAMPS).iterdir():
        f.unlink()
    _redo(os.path.join(outs[0], "0.png"), 97)
    assert run_tiny(tiny, *args) == 0
    assert "stamps of the images its rows were scored from are gone" in capsys.readouterr().err
    assert len(scored) == 3


# ---------------------------------------------------------------- finished files, duplicate rows

def test_adding_a_distance_never_appends_to_a_finished_file(tiny, tmp_path, capsys, monkeypatch):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)) == 0
    l2 = out / f"pipal_{tiny[0]}_l2.csv"
    before = l2.read_bytes()
    interrupt_after(monkeypatch, 3)
    with pytest.raises(SystemExit) as e:
        run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,cos", "-sdir", str(out))
    assert e.value.code == 130
    assert l2.read_bytes() == before  # the finished l2 file was not touched
    capsys.readouterr()
    calc_scores.main(["-f", str(l2), "--json"])
    assert json.loads(capsys.readouterr().out)["n"] == 6


def test_calc_scores_counts_a_repeated_pair_once(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)) == 0
    path = out / f"pipal_{tiny[0]}_l2.csv"
    frame = pd.read_csv(path)
    capsys.readouterr()
    calc_scores.main(["-f", str(path), "--json"])
    clean = json.loads(capsys.readouterr().out)
    with open(path, "a") as f:  # the first row again, as an interrupted append left it
        f.write(",".join(str(x) for x in frame.iloc[0]) + "\n")
    calc_scores.main(["-f", str(path), "--json"])
    got = capsys.readouterr()
    assert json.loads(got.out)["n"] == 6 and json.loads(got.out)["srcc"] == pytest.approx(clean["srcc"])
    assert "1 row(s) repeat a (dis, ref) pair" in got.err


# ---------------------------------------------------------------- files replaced under a running process

def _slow_run(tiny_weights, root, out, delay="1.5"):
    common = [tiny_weights, "-dat", "pipal", "--root", root, "-m", "tiny_vit_test", "-d", "l2", "--device", "cpu",
              "--no-progress", "-sdir", str(out)]
    env = {**os.environ, "ZSIQA_TEST_DELAY": delay, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_run.py"), *common], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rows(proc, path, n):
    deadline = time.time() + 120
    while not (path.is_file() and len(path.read_text().splitlines()) >= n + 1):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)


def _replace_with(path, text):
    """What an editor's save does: a new file renamed over the old one."""
    tmp = path.with_suffix(".edit")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.mark.slow
def test_file_replaced_during_a_run_keeps_every_row(tiny_weights, tmp_path):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    path = tmp_path / "r" / "pipal_tiny_vit_test_l2.csv"
    proc = _slow_run(tiny_weights, root, tmp_path / "r")
    _wait_rows(proc, path, 2)
    _replace_with(path, path.read_text())
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "was replaced, removed or truncated during the run" in err
    frame = pd.read_csv(path)
    assert len(frame) == 6 and frame.dis.is_unique


@pytest.mark.slow
def test_rows_removed_during_a_run_are_an_error_then_scored(tiny, tiny_weights, tmp_path, capsys, monkeypatch):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    out, path = tmp_path / "r", tmp_path / "r" / "pipal_tiny_vit_test_l2.csv"
    undo = interrupt_after(monkeypatch, 3)
    with pytest.raises(SystemExit):
        run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out))
    undo()
    proc = _slow_run(tiny_weights, root, out)
    _wait_rows(proc, path, 4)  # the 3 held rows and this run's first
    lines = path.read_text().splitlines(keepends=True)
    _replace_with(path, "".join(lines[:1] + lines[2:]))  # a held row deleted by hand
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "lacks 1 of 6 pairs" in err, err
    assert len(pd.read_csv(path)) == 5  # nothing else lost
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)) == 0
    assert len(pd.read_csv(path)) == 6


# ---------------------------------------------------------------- label direction, empty and disjoint sets

def test_csv_list_without_its_record_needs_the_label_direction(tiny, tmp_path, capsys):
    listing = minidata.make_csv(str(tmp_path / "c"))
    with open(listing) as f:
        text = f.read().replace("mos", "dmos", 1)
    with open(listing, "w") as f:
        f.write(text)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "csv", "--csv", listing, "-d", "l2", "-sdir", str(out), "--json") == 0
    srcc = json.loads(capsys.readouterr().out)[0]["srcc"]
    path = out / f"list_{tiny[0]}_l2.csv"
    (out / f"list_{tiny[0]}_l2.json").unlink()
    fails_one_line(capsys, lambda: calc_scores.main(["-dat", "csv", "-f", str(path)]), "--label-higher-better")
    calc_scores.main(["-dat", "csv", "-f", str(path), "--label-higher-better", "no", "--json"])
    assert json.loads(capsys.readouterr().out)["srcc"] == pytest.approx(srcc)


def test_disjoint_sets_get_no_statistic(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=6, sub=False)
    for k in range(3):
        os.remove(os.path.join(outs[0], f"{k + 3}.png"))
        os.remove(os.path.join(outs[1], f"{k}.png"))
    args = _dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--skip-missing")
    assert run_tiny(tiny, *args, "--json") == 0
    rows = {r["set"]: r for r in json.loads(capsys.readouterr().out)}
    worse = next(r for r in rows.values() if r["vs"] != r["set"])
    assert worse["n_common"] == 0 and worse["p_value"] is None and worse["wins"] is None
    logged = list(csv.DictReader(open(tmp_path / "r" / "summary_unlabelled.csv")))
    assert {r["p_value"] for r in logged} == {""}


def _corrupt(folder):
    for name in os.listdir(folder):
        data = open(os.path.join(folder, name), "rb").read()
        open(os.path.join(folder, name), "wb").write(data[: len(data) // 2])  # header intact


def test_set_with_no_scored_pair_is_ranked_last_and_marked(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=3, sub=False)
    _corrupt(outs[0])
    assert run_tiny(tiny, *_dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"), "--skip-missing")) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.strip()[:1] in ("1", "2", "—")]
    assert table[0].split()[:2] == ["1", "B"] and "best" in table[0]
    assert table[1].split()[:2] == ["—", "A"] and "no pair scored" in table[1]


def test_nothing_decodable_anywhere_is_one_line(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    for o in outs:
        _corrupt(o)
    fails_one_line(capsys, lambda: run_tiny(tiny, *_dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"),
                                                          "--skip-missing")), "no pair could be scored")


def test_charts_of_other_sets_are_kept(tiny, tmp_path):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1), ("B", 2), ("C", 3)), n=2, sub=False)
    out = tmp_path / "r"
    assert run_tiny(tiny, *_dirs(gt, outs[:2], "-d", "l2", "-sdir", str(out))) == 0
    assert run_tiny(tiny, *_dirs(gt, outs[::2], "-d", "l2", "-sdir", str(out))) == 0
    assert {p.name for p in out.glob("*.png")} == {f"{tiny[0]}_l2_methods_A+B.png", f"{tiny[0]}_l2_methods_A+C.png"}


# ---------------------------------------------------------------- special files, empty values, absurd numbers

@pytest.mark.slow
def test_fifo_among_the_outputs_is_refused_not_waited_on(tiny_weights, tmp_path):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=3, sub=False)
    os.remove(os.path.join(outs[0], "2.png"))
    os.mkfifo(os.path.join(outs[0], "2.png"))
    base = [sys.executable, str(ROOT / "tests" / "tiny_run.py"), tiny_weights, "-m", "tiny_vit_test", "-d", "l2",
            "--device", "cpu", "--no-progress", *_dirs(gt, outs)]
    proc = subprocess.run([*base, "-sdir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr
    proc = subprocess.run([*base, "-sdir", str(tmp_path / "s"), "--skip-missing"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_csv(tmp_path / "s" / "A_tiny_vit_test_l2.csv")) == 2


def test_empty_values_are_refused(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the default results folder would be made
    a, b = random_image(tmp_path / "a.png", 232, 230, 0), random_image(tmp_path / "b.png", 232, 230, 1)
    score = ["-ref", a, "-dis", b, "-m", tiny[0], "--device", "cpu", "-d", "l2"]
    fails_one_line(capsys, lambda: run_single_img.main([*score, "--weights", tiny[1], "--maps", ""]), "empty")
    fails_one_line(capsys, lambda: run_single_img.main([*score, "--weights", ""]), "empty")
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "-sdir", ""), "empty")
    with pytest.raises(UserError, match="empty"):
        Scorer(tiny[0], "l2", device="cpu", weights="")
    assert not (tmp_path / "results").exists()


def test_absurd_numbers_are_one_line(tiny, tmp_path, capsys):
    a, b = random_image(tmp_path / "a.png", 232, 230, 0), random_image(tmp_path / "b.png", 232, 230, 1)
    score = ["-ref", a, "-dis", b, "-m", tiny[0], "--weights", tiny[1], "--device", "cpu", "-d", "l2"]
    for extra, match in ((["-r", "3000000000"], "at most 16384"), (["-r", "9" * 5000], "out of range"),
                         (["--layers", "1-" + "9" * 5000], "bad layer selection")):
        fails_one_line(capsys, lambda extra=extra: run_single_img.main([*score, *extra]), match)
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "-r", "3000000000"), "at most")
    for options in ({"resize": 10**10}, {"layers": [10**5000]}, {"layers": "1-" + "9" * 5000}):
        with pytest.raises(UserError) as e:
            Scorer(tiny[0], "l2", device="cpu", weights=tiny[1], **options)
        assert len(str(e.value)) < 200


@pytest.mark.parametrize("args, match", [
    (["--kinds", "tra", "--pcts", "1,1"], "--pcts lists 1 more than once"),
    (["--kinds", "tra,tra"], "--kinds lists tra more than once"),
    (["--kinds", "tra", "-rob", "rot"], "give one of the two"),
    (["--kinds", "tra", "-rob", "rot", "-pct", "3"], "give one of the two"),
    (["--kinds", "tra", "--pcts", "1," + "9" * 30], "comma-separated integers"),
])
def test_sweep_values_given_one_way_and_once(tiny, tmp_path, capsys, args, match):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", *args,
                                            "-sdir", str(tmp_path / "r")), match)
    assert not (tmp_path / "r").exists()


def test_output_folder_scored_from_inside_it(tiny, tmp_path, monkeypatch, capsys):
    """--dis-dir . names the set after the folder; the results folder inside it and hidden folders
    (.ipynb_checkpoints) are not walked, so a second run does not trip on the first one's files."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=3, sub=False)
    os.makedirs(os.path.join(outs[0], ".ipynb_checkpoints"))
    random_image(os.path.join(outs[0], ".ipynb_checkpoints", "0.png"), 50, 50, 7)  # would be a clash and too small
    monkeypatch.chdir(outs[0])
    args = _dirs(os.path.join("..", "GT"), ["."], "-d", "l2", "-sdir", "results")
    for _ in range(2):
        assert run_tiny(tiny, *args) == 0
    assert len(pd.read_csv(os.path.join("results", f"A_{tiny[0]}_l2.csv"))) == 3
    assert {r["set"] for r in csv.DictReader(open(os.path.join("results", "summary_unlabelled.csv")))} == {"A"}


def test_heatmap_title_shows_the_printed_score(tiny, tmp_path, capsys, monkeypatch):
    from zsiqa import plots
    titles = []
    original = plots.heatmap
    monkeypatch.setattr(plots, "heatmap", lambda rgb, m, path, title, label: titles.append(title) or
                        original(rgb, m, path, title, label))
    a, b = random_image(tmp_path / "a.png", 300, 260, 0), random_image(tmp_path / "b.png", 300, 260, 1)
    run_single_img.main(["-ref", a, "-dis", b, "-m", tiny[0], "--weights", tiny[1], "--device", "cpu", "-d",
                         "l2,cos", "--maps", str(tmp_path / "m")])
    printed = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    maps = {d: np.load(tmp_path / "m" / f"{d}.npy") for d in printed}
    assert titles == [f"{tiny[0]} {d}: score {float(v):.4g}" for d, v in printed.items()]
    assert any(f"{m.mean():.4g}" != f"{float(printed[d]):.4g}" for d, m in maps.items())  # the case it fixes


# ---------------------------------------------------------------- a second hostile round's findings

def test_per_layer_rows_of_changed_images_go_too(tiny, tmp_path, capsys):
    """A run without --per-layer rescores a changed image: the per-layer file beside its results
    file loses that pair's stale per-block row, so a later --per-layer run scores it again."""
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=3, sub=False)
    args = _dirs(gt, outs, "-d", "l2", "-sdir", str(tmp_path / "r"))
    assert run_tiny(tiny, *args, "--per-layer") == 0
    _redo(os.path.join(outs[0], "1.png"), 96)
    assert run_tiny(tiny, *args) == 0
    assert run_tiny(tiny, *args, "--per-layer") == 0
    rows = _rows(tmp_path / "r" / f"A_{tiny[0]}_l2.csv")
    blocks = pd.read_csv(tmp_path / "r" / f"A_{tiny[0]}_l2_layers.csv").set_index("dis")
    for (dis, _), row in rows.items():
        assert blocks.loc[dis, ["block_1", "block_2"]].sum() == pytest.approx(row.pred, rel=1e-5), dis


def test_swapped_images_with_restored_times_are_scored_again(tiny, tmp_path, capsys, monkeypatch):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=3)
    args = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r")]
    assert run_tiny(tiny, *args) == 0
    a, b = (os.path.join(root, "Train_Dis", f"A0001_0{k}_00.bmp") for k in (0, 2))
    times = [os.stat(p).st_mtime_ns for p in (a, b)]
    data = [open(p, "rb").read() for p in (a, b)]
    for p, d, t in zip((a, b), data[::-1], times):  # same sizes, contents swapped, times put back
        open(p, "wb").write(d)
        os.utime(p, ns=(t, t))
    scored = count_scored(monkeypatch)
    assert run_tiny(tiny, *args) == 0
    assert len(scored) == 2 and "2 image(s) changed" in capsys.readouterr().err


def test_unreadable_image_leaves_no_stale_row(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=3)
    args = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r"), "--json"]
    assert run_tiny(tiny, *args) == 0
    with open(os.path.join(root, "Train_Dis", "A0001_00_00.bmp"), "w") as f:
        f.write("garbage")
    capsys.readouterr()
    assert run_tiny(tiny, *args, "--skip-missing") == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["n"] == 2 == len(pd.read_csv(tmp_path / "r" / f"pipal_{tiny[0]}_l2.csv"))


def test_record_from_before_stamps_is_said(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    args = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r")]
    assert run_tiny(tiny, *args) == 0
    record = tmp_path / "r" / f"pipal_{tiny[0]}_l2.json"
    old = json.loads(record.read_text())
    del old["images"]
    record.write_text(json.dumps(old))
    capsys.readouterr()
    assert run_tiny(tiny, *args) == 0
    assert "scored by an older version that kept no image stamps" in capsys.readouterr().err


def test_calc_scores_says_what_it_leaves_out_of_an_edited_file(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r")) == 0
    path = tmp_path / "r" / f"pipal_{tiny[0]}_l2.csv"
    text = path.read_text()
    path.write_text(text.rstrip("\n"))  # saved by an editor without the final newline
    capsys.readouterr()
    calc_scores.main(["-f", str(path), "--json"])
    got = capsys.readouterr()
    assert json.loads(got.out)["n"] == 5 and "line 7: the last line has no newline" in got.err
    lines = text.splitlines(keepends=True)
    path.write_text(lines[0] + '"' + "".join(lines[1:]))  # a stray quote opening row 1
    fails_one_line(capsys, lambda: calc_scores.main(["-f", str(path)]), "line 2: a quote opens a field")


def test_name_guessed_label_direction_is_said(tiny, tmp_path, capsys):
    listing = minidata.make_csv(str(tmp_path / "c"))
    named = os.path.join(os.path.dirname(listing), "live_subset.csv")
    os.rename(listing, named)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "csv", "--csv", named, "-d", "l2", "-sdir", str(out)) == 0
    (out / f"live_subset_{tiny[0]}_l2.json").unlink()  # shared without its record
    capsys.readouterr()
    calc_scores.main(["-f", str(out / f"live_subset_{tiny[0]}_l2.csv")])
    assert "its labels are taken as live's" in capsys.readouterr().err


@pytest.mark.slow
def test_file_truncated_during_a_run_is_written_again(tiny_weights, tmp_path):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=2, n_dis=3)
    path = tmp_path / "r" / "pipal_tiny_vit_test_l2.csv"
    proc = _slow_run(tiny_weights, root, tmp_path / "r")
    _wait_rows(proc, path, 2)
    with open(path, "w"):
        pass  # `: > X.csv`: the same file, emptied
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "truncated" in err, err
    frame = pd.read_csv(path)
    assert len(frame) == 6 and list(frame.columns) == ["dis", "ref", "mos", "pred"]


@pytest.mark.parametrize("where", ["output", "reference"])
def test_results_folder_among_the_images_is_refused(tiny, tmp_path, capsys, where):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=2, sub=False)
    sdir = outs[0] if where == "output" else gt
    fails_one_line(capsys, lambda: run_tiny(tiny, *_dirs(gt, outs, "-d", "l2", "-sdir", sdir)), "choose another -sdir")


def test_names_in_file_names_are_checked(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    for name in ("a/b", "../../escaped", ".hidden"):
        fails_one_line(capsys, lambda name=name: run_tiny(tiny, "-dat", "pipal", "--root", root, "-s", name,
                                                          "-sdir", str(tmp_path / "r")), "cannot name files")
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=((".hid", 1),), n=2, sub=False)
    fails_one_line(capsys, lambda: run_tiny(tiny, *_dirs(gt, outs, "-sdir", str(tmp_path / "s"))), "NAME=")
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


def test_workers_are_bounded(tiny, tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=1, n_dis=2)
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "pipal", "--root", root, "--workers", "100000"),
                   "at most 64")
    with pytest.raises(UserError, match="workers must be below 65"):
        Scorer(tiny[0], "l2", device="cpu", weights=tiny[1], workers=100000)
