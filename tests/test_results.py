"""Results files (results.py through run.py): the record beside each file, resume only with
the same settings, current labels always, torn rows, the lock, a full disk, mid-run decode
failures, the summary's columns."""
import csv
import datetime
import errno
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import calc_scores
import minidata
from helpers import ROOT, count_scored, fails_one_line, run_tiny
from zsiqa import results
from zsiqa.errors import UserError
from zsiqa.store import csvfiles, summaries
from zsiqa.store import rows as store_rows


def _fails(capsys, tiny, args, match):
    """run.py exits 2 with one line on stderr holding `match`; returns that line."""
    return fails_one_line(capsys, lambda: run_tiny(tiny, *args), match, warnings=False)


def _pipal(tmp_path, **kw):
    return minidata.make_pipal(str(tmp_path / "p"), **kw)


def test_record_beside_every_results_file(tiny, tmp_path):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,wsd", "-sdir", str(out), "-rob", "sca", "-pct",
                "2") == 0
    frame = pd.read_csv(out / f"pipal_{tiny[0]}_l2_sca-2.csv")
    assert list(frame.columns) == ["dis", "ref", "mos", "pred"]  # the published layout, unchanged
    rec = json.loads((out / f"pipal_{tiny[0]}_l2_sca-2.json").read_text())
    import hashlib
    want_weights = "sha256:" + hashlib.sha256(open(tiny[1], "rb").read()).hexdigest()
    assert rec["dataset"] == "pipal" and rec["label_higher_better"] is True and rec["model"] == tiny[0]
    assert rec["distance"] == "l2" and rec["robustness"] == "sca" and rec["pct"] == 2
    assert rec["pred_higher_better"] is False and rec["precision"] == "published" and rec["model_norm"] is False
    assert rec["resize"] is None and rec["swd_seed"] == 0
    assert rec["weights"] == want_weights and rec["n_labels"] == 6 and rec["labels_sha256"].startswith("sha256:")
    assert json.loads((out / f"pipal_{tiny[0]}_wsd_sca-2.json").read_text())["distance"] == "wsd"
    with open(out / "summary.csv") as f:
        logged = list(csv.DictReader(f))
    assert [r["distance"] for r in logged] == ["l2", "wsd"]
    for key in ("precision", "model_norm", "resize", "weights", "swd_seed", "label_higher_better", "labels_sha256",
                "n_skipped"):
        assert key in logged[0], key
    assert logged[0]["weights"] == want_weights and logged[0]["n_skipped"] == "0"


def test_resume_only_with_the_same_settings(tiny, tmp_path, capsys, monkeypatch):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    run_tiny(tiny, *base, "--limit", "3")
    path = out / f"pipal_{tiny[0]}_l2.csv"
    before = path.read_bytes()
    err = _fails(capsys, tiny, [*base, "--model-norm"], "model_norm")
    assert "False" in err and "True" in err and "--overwrite" in err
    _fails(capsys, tiny, [*base, "-r", "240"], "resize")
    assert path.read_bytes() == before  # refused: nothing touched
    seen = count_scored(monkeypatch)
    assert run_tiny(tiny, *base, "--model-norm", "--overwrite") == 0
    assert len(seen) == 6  # afresh: the three earlier rows discarded
    fresh = tmp_path / "fresh"
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(fresh), "--model-norm")
    np.testing.assert_allclose(pd.read_csv(path).pred, pd.read_csv(fresh / path.name).pred, rtol=1e-6)
    assert json.loads((out / f"pipal_{tiny[0]}_l2.json").read_text())["model_norm"] is True


def test_resume_on_another_device_refused(tiny, tmp_path, capsys):
    """'published' means fp16 for CLIP on a GPU and fp32 on a CPU: a file begun on one device
    type is not continued on the other (an older record without the field still resumes)."""
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    run_tiny(tiny, *base, "--limit", "3")
    rec_path = out / f"pipal_{tiny[0]}_l2.json"
    rec = json.loads(rec_path.read_text())
    assert rec["device"] == "cpu"
    rec_path.write_text(json.dumps({**rec, "device": "cuda"}))  # as if begun on a GPU
    err = _fails(capsys, tiny, base, "device")
    assert "cuda" in err and "cpu" in err
    rec_path.write_text(json.dumps({k: v for k, v in rec.items() if k != "device"}))  # an older record
    assert run_tiny(tiny, *base) == 0 and len(pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv")) == 6
    assert json.loads(rec_path.read_text())["device"] == "cpu"


def test_file_without_record_is_not_resumed(tiny, tmp_path, capsys):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    run_tiny(tiny, *base, "--limit", "2")
    os.remove(out / f"pipal_{tiny[0]}_l2.json")  # as a published or older file
    _fails(capsys, tiny, base, "no record")
    assert run_tiny(tiny, *base, "--overwrite") == 0
    assert len(pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv")) == 6


def test_edited_label_resumes_with_the_current_labels(tiny, tmp_path, capsys, monkeypatch):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out), "--json"]
    run_tiny(tiny, *base, "--limit", "3")
    digest = json.loads((out / f"pipal_{tiny[0]}_l2.json").read_text())["labels_sha256"]
    label = os.path.join(root, "Train_Label", "A0001.txt")
    lines = open(label).read().splitlines()
    lines[0] = lines[0].split(",")[0] + ",1234.5"  # a pair already scored gets a corrected label
    open(label, "w").write("\n".join(lines) + "\n")
    capsys.readouterr()
    seen = count_scored(monkeypatch)
    assert run_tiny(tiny, *base) == 0
    assert len(seen) == 3  # predictions do not depend on labels: only the missing pairs scored
    frame = pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv")
    assert frame.mos[0] == 1234.5
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["srcc"] == pytest.approx(stats.spearmanr(-frame.pred, frame.mos)[0])
    assert json.loads((out / f"pipal_{tiny[0]}_l2.json").read_text())["labels_sha256"] != digest


def test_torn_row_is_scored_again(tiny, tmp_path, monkeypatch):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    run_tiny(tiny, *base)
    path = out / f"pipal_{tiny[0]}_l2.csv"
    full = pd.read_csv(path)
    data = path.read_bytes()
    cut = data.rindex(b",") + 4  # the last row cut mid-number: '...,0.5' with no newline
    path.write_bytes(data[:cut])
    assert results.read_done(str(path)).keys() == {(d, r) for d, r in zip(full.dis[:5], full.ref[:5], strict=True)}
    seen = count_scored(monkeypatch)
    run_tiny(tiny, *base)
    assert len(seen) == 1
    again = pd.read_csv(path)
    assert list(again.dis) == list(full.dis)
    np.testing.assert_allclose(again.pred, full.pred, rtol=1e-6)
    # a torn header alone: the file starts afresh
    path.write_bytes(b"dis,re")
    run_tiny(tiny, *base)
    np.testing.assert_allclose(pd.read_csv(path).pred, full.pred, rtol=1e-6)


def test_torn_part_file_rows_are_not_merged(tmp_path):
    path = str(tmp_path / "x.csv")
    open(path, "w").write("dis,ref,mos,pred\na,r,1.0,0.25\n")
    open(path + ".rank1", "w").write("dis,ref,mos,pred\nb,r,2.0,0.5\nc,r,3.0,0.7")
    labels = {("a", "r"): 1.5, ("b", "r"): 2.5, ("c", "r"): 3.5, ("d", "r"): 4.0}
    rows = results.finish(path, labels, [("a", "r"), ("b", "r"), ("c", "r")])
    assert rows == [("a", "r", 1.5, (0.25,)), ("b", "r", 2.5, (0.5,))]
    assert not os.path.exists(path + ".rank1")
    assert open(path).read() == "dis,ref,mos,pred\na,r,1.5,0.25\nb,r,2.5,0.5\n"


def test_full_disk_keeps_written_rows(tiny, tmp_path, capsys, monkeypatch):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    original, written = store_rows.write_all, []
    monkeypatch.setattr(results.RowWriter, "FLUSH_S", 0)  # every row in a write of its own: the disk fills mid-run

    def filling(f, data):
        if data.startswith(b"Train_Dis/"):  # a row appended while scoring
            written.append(data)
            if len(written) >= 4:  # full from the fourth row on (the writer tries once more at close)
                original(f, data[: len(data) // 2])  # half of it reaches the disk
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(f, data)
    monkeypatch.setattr(store_rows, "write_all", filling)  # the RowWriter's appends
    _fails(capsys, tiny, base, "No space left on device")
    path = out / f"pipal_{tiny[0]}_l2.csv"
    assert path.read_bytes().endswith(b"\n") and len(pd.read_csv(path)) == 3  # valid, torn bytes gone
    monkeypatch.setattr(store_rows, "write_all", original)
    assert run_tiny(tiny, *base) == 0
    assert len(pd.read_csv(path)) == 6


def test_unwritable_results_folder_refused_before_the_model_loads(tiny, tmp_path, capsys, monkeypatch):
    from zsiqa import evaluate
    root = _pipal(tmp_path)
    monkeypatch.setattr(evaluate, "Scorer", lambda *a, **k: pytest.fail("the model was loaded"))
    (tmp_path / "afile").write_text("x")
    for sdir in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        _fails(capsys, tiny, ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(sdir)], "not a folder")


@pytest.mark.parametrize("args,match", [
    (["-r", "-5"], "at least 224"), (["-r", "0"], "at least 224"), (["-r", "100"], "at least 224"),
    (["--batch-size", "0"], "at least 1"), (["--workers", "-1"], "at least 0"), (["--limit", "-1"], "at least 1"),
    (["-rob", "tra", "-pct", "-5"], "0 to 99"), (["-rob", "tra", "-pct", "100"], "0 to 99"),
    (["-rob", "tra", "-pct", "150"], "0 to 99"), (["-rob", "sca", "-pct", "-1"], "0 to 100"),
    (["-rob", "sca", "-pct", "100000000"], "0 to 100"),
    (["--kinds", "tra", "--pcts", "1,100"], "0 to 99"),
    (["-pct", "3"], "give -rob too"), (["--pcts", "1,2"], "give --kinds too")])
def test_bad_numbers_refused_up_front(tiny, tmp_path, capsys, args, match):
    root = _pipal(tmp_path, n_ref=1, n_dis=1)
    _fails(capsys, tiny, ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r"), *args], match)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_second_run_on_the_same_file_stops_at_once(tiny_weights, tmp_path):
    """Two real processes: the second meets the first's lock, names its pid, writes nothing."""
    root = _pipal(tmp_path, n_ref=2, n_dis=3)
    out = tmp_path / "r"
    common = [tiny_weights, "-dat", "pipal", "--root", root, "-m", "tiny_vit_test", "-d", "l2", "--device", "cpu",
              "--no-progress", "-sdir", str(out)]
    env = {**os.environ, "ZSIQA_TEST_DELAY": "1.5", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, str(ROOT / "tests" / "slow_run.py"), *common], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".pipal_tiny_vit_test_l2.csv.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run([sys.executable, str(ROOT / "tests" / "tiny_run.py"), *common], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    still_running = first.poll() is None
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert still_running, "the first run ended before the second met its lock: raise ZSIQA_TEST_DELAY"
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert str(first.pid) in lines[0] and "being written by another run" in lines[0]
    assert second.stdout == ""
    frame = pd.read_csv(out / "pipal_tiny_vit_test_l2.csv")
    assert len(frame) == 6 and frame.dis.is_unique
    assert len(list(csv.DictReader(open(out / "summary.csv")))) == 1  # the first run's row alone
    assert lock.read_text() == ""  # released at the end, its pid cleared


def test_lock_is_exclusive_and_released(tmp_path):
    path = str(tmp_path / "x.csv")
    lock_file = results.lock_path(path)
    assert lock_file == str(tmp_path / ".x.csv.lock")
    with results.Lock([path, path]):  # one file named twice is locked once
        assert open(lock_file).read().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            results.Lock([str(tmp_path / "y.csv"), path])
        results.Lock([str(tmp_path / "y.csv")]).release()  # the ones taken were given back
    assert open(lock_file).read() == ""  # released: no pid left behind
    results.Lock([path]).release()


def test_older_summary_header_is_moved_aside(tiny, tmp_path, capsys):
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    out.mkdir()
    old = ("dataset,model,distance,robustness,pct,n,srcc,plcc,krcc,plcc_logistic,pairs_per_s\n"
           "pipal,x,l2,none,0,6,0.5,0.5,0.4,0.5,1.0\n")
    (out / "summary.csv").write_text(old)
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out))
    assert "summary.old-1.csv" in capsys.readouterr().err
    assert (out / "summary.old-1.csv").read_text() == old
    logged = list(csv.DictReader(open(out / "summary.csv")))
    assert len(logged) == 1 and logged[0]["model"] == tiny[0] and logged[0]["precision"] == "published"
    # a repeated run adds a row of its own, told apart by its time stamp and run id
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out))
    logged = list(csv.DictReader(open(out / "summary.csv")))
    assert len(logged) == 2 and logged[0]["run_id"] != logged[1]["run_id"] and logged[1]["run_id"]
    stamps = [datetime.datetime.fromisoformat(r["time"]) for r in logged]
    assert all(t.tzinfo is not None for t in stamps) and stamps[0] <= stamps[1]


def _corrupt_kadid(tmp_path):
    root = minidata.make_kadid(str(tmp_path / "k"))
    victim = os.path.join(root, "images", "I02_01_02.png")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[: len(data) // 2])  # the header is intact: it passes the up-front check
    return root


def test_corrupt_body_stops_keeping_finished_rows(tiny, tmp_path, capsys):
    root = _corrupt_kadid(tmp_path)
    out = tmp_path / "r"
    _fails(capsys, tiny, ["-dat", "kadid10k", "--root", root, "-d", "l2", "-sdir", str(out), "--batch-size", "4"],
           "I02_01_02.png")
    path = out / f"kadid10k_{tiny[0]}_l2.csv"
    assert path.read_bytes().endswith(b"\n") and list(pd.read_csv(path).columns) == ["dis", "ref", "mos", "pred"]
    assert results.read_record(str(path))["distance"] == "l2"
    assert (out / f".kadid10k_{tiny[0]}_l2.csv.lock").read_text() == ""  # released


def test_corrupt_body_mid_run_skipped_with_skip_missing(tiny, tmp_path, capsys):
    root = _corrupt_kadid(tmp_path)
    out = tmp_path / "r"
    assert run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "l2", "-sdir", str(out), "--skip-missing",
                "--json") == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "I02_01_02.png" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")
    summary = json.loads(captured.out)[0]
    assert summary["n"] == 5 and summary["n_skipped"] == 1
    assert len(pd.read_csv(out / f"kadid10k_{tiny[0]}_l2.csv")) == 5
    assert list(csv.DictReader(open(out / "summary.csv")))[0]["n_skipped"] == "1"


def test_calc_scores_takes_the_direction_from_the_record(tiny, tmp_path, capsys):
    """A -dat csv list named live_mine.csv holds MOS (higher = better): not LIVE's DMOS."""
    target = minidata.make_csv(str(tmp_path / "data"))
    mine = os.path.join(os.path.dirname(target), "live_mine.csv")
    os.rename(target, mine)
    out = tmp_path / "r"
    run_tiny(tiny, "-dat", "csv", "--csv", mine, "-d", "l2", "-sdir", str(out), "--json")
    ran = json.loads(capsys.readouterr().out)[0]
    path = str(out / f"live_mine_{tiny[0]}_l2.csv")
    calc_scores.main(["-f", path, "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["label_higher_better"] is True and got["dataset"] == "live_mine"
    assert got["srcc"] == pytest.approx(ran["srcc"]) and got["srcc"] > 0.5
    calc_scores.main(["-f", path, "--json", "-dat", "live"])  # explicit wins
    assert json.loads(capsys.readouterr().out)["label_higher_better"] is False
    os.remove(os.path.join(out, f"live_mine_{tiny[0]}_l2.json"))  # no record: the file name's guess
    calc_scores.main(["-f", path, "--json"])
    assert json.loads(capsys.readouterr().out)["label_higher_better"] is False


def test_calc_scores_ignores_a_torn_last_row(tmp_path, capsys):
    path = tmp_path / "x_l2.csv"
    path.write_text("dis,ref,mos,pred\n" + "".join(f"d{i},r,{i},{0.1 * i}\n" for i in range(8)) + "d8,r,8,0.")
    (tmp_path / "x_l2.json").write_text(json.dumps({"dataset": "x", "label_higher_better": False}))
    calc_scores.main(["-f", str(path), "--json"])
    got = json.loads(capsys.readouterr().out)
    assert got["n"] == 8 and got["srcc"] == pytest.approx(1.0)


def test_another_copy_of_the_dataset_is_not_resumed(tiny, tmp_path, capsys):
    """Rows name images relative to the root: another root (or a CSV list in another folder)
    holding the same names is another dataset, so its results are not mixed in."""
    a, b = minidata.make_pipal(str(tmp_path / "a")), minidata.make_pipal(str(tmp_path / "b"), n_dis=4)
    out = ["-sdir", str(tmp_path / "r"), "-d", "l2"]
    run_tiny(tiny, "-dat", "pipal", "--root", a, *out, "--limit", "3")
    _fails(capsys, tiny, ["-dat", "pipal", "--root", b, *out], "ref_dir")
    la, lb = minidata.make_csv(str(tmp_path / "expA")), minidata.make_csv(str(tmp_path / "expB"))
    run_tiny(tiny, "-dat", "csv", "--csv", la, *out)
    _fails(capsys, tiny, ["-dat", "csv", "--csv", lb, *out], "ref_dir")


def test_odd_file_names_round_trip(tiny, tmp_path, capsys, monkeypatch):
    """Names holding \r, \n, a quote or a comma (files on disk, -dat dirs) are written quoted and
    read back: a resume has nothing to score (an unquoted \r split the row in two and the pair
    was dropped and scored again on every run)."""
    gt, (outs,) = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 2),), n=4, sub=False)
    names = ["c\rd", "e\nf", 'g"h', "i,j"]
    for k, name in enumerate(names):
        for folder in (gt, outs):
            os.rename(os.path.join(folder, f"{k}.png"), os.path.join(folder, name + ".png"))
    out = tmp_path / "r"
    base = ["-dat", "dirs", "--ref-dir", gt, "--dis-dir", outs, "-d", "l2", "-sdir", str(out), "--json"]
    assert run_tiny(tiny, *base) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == 4
    path = str(out / f"A_{tiny[0]}_l2.csv")
    assert sorted(d for d, _ in results.read_done(path)) == sorted(f"{n}.png" for n in names)
    seen = count_scored(monkeypatch)
    assert run_tiny(tiny, *base) == 0 and seen == []  # resumed: nothing left to score
    assert sorted(pd.read_csv(path).dis) == sorted(f"{n}.png" for n in names)


def test_summary_without_a_final_newline_gets_one(tmp_path):
    """A hand-edited summary.csv lacking its last newline: the next row starts a line of its own."""
    row = {"dataset": "x", "model": "m", "distance": "l2", "n": 4}
    results.append_summary(str(tmp_path), [row])
    path = tmp_path / "summary.csv"
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    results.append_summary(str(tmp_path), [{**row, "distance": "cos"}])
    logged = list(csv.reader(open(path, newline="")))
    assert [len(r) for r in logged] == [len(results.SUMMARY_FIELDS)] * 3
    assert [r[2] for r in logged[1:]] == ["l2", "cos"]
    (tmp_path / "summary_unlabelled.csv").write_bytes(b",".join(f.encode() for f in results.UNLABELLED_FIELDS))
    results.append_summary(str(tmp_path), [{"set": "A"}], "summary_unlabelled", results.UNLABELLED_FIELDS)
    assert [r["set"] for r in csv.DictReader(open(tmp_path / "summary_unlabelled.csv", newline=""))] == ["A"]


def _one_line_exit_2(capsys, main, argv, *match):
    """main(argv) exits 2 with one line on stderr holding every `match`; returns that line."""
    return fails_one_line(capsys, lambda: main(argv), *match, warnings=False)


@pytest.mark.parametrize("field,value", [("pred_higher_better", "false"), ("label_higher_better", "false"),
                                         ("label_higher_better", 0), ("pct", True), ("resize", "240"),
                                         ("dataset", ["x"])])
def test_record_with_a_wrong_type_is_refused(tiny, tmp_path, capsys, field, value):
    """A hand-edited record: "false" (a string) read with bool() was true and flipped every sign."""
    target = minidata.make_csv(str(tmp_path / "data"))
    out = tmp_path / "r"
    base = ["-dat", "csv", "--csv", target, "-d", "l2", "-sdir", str(out)]
    run_tiny(tiny, *base)
    rec = out / f"list_{tiny[0]}_l2.json"
    record = json.loads(rec.read_text())
    rec.write_text(json.dumps({**record, field: value}))
    path = str(out / f"list_{tiny[0]}_l2.csv")
    _one_line_exit_2(capsys, calc_scores.main, ["-f", path], str(rec), field, json.dumps(value))
    _fails(capsys, tiny, base, field)
    assert json.loads(rec.read_text())[field] == value  # refused: nothing touched


def test_torn_row_inside_a_quoted_name_is_left_out(tmp_path, capsys):
    """A row cut after a newline inside a quoted name: the part before is not a row's end, so
    resume and calc_scores leave the torn row out instead of reading (or refusing) half of it."""
    path = tmp_path / "x_l2.csv"
    rows = "".join(f"d{i},r,{i},{0.1 * i}\n" for i in range(8))
    path.write_text("dis,ref,mos,pred\n" + rows + '"d8\nx",r,8,0.8\n"d9\n')
    (tmp_path / "x_l2.json").write_text(json.dumps({"dataset": "x", "label_higher_better": False}))
    assert set(results.read_done(str(path))) == {*((f"d{i}", "r") for i in range(8)), ("d8\nx", "r")}
    calc_scores.main(["-f", str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["n"] == 9


def test_row_with_a_non_finite_number_is_scored_again(tiny, tmp_path, monkeypatch):
    """A results row whose pred reads inf or nan (a hand edit) is not a finished row: it was kept,
    and the summary's SRCC was computed from it (0.4 instead of 1, no warning)."""
    target = minidata.make_csv(str(tmp_path / "data"))
    out = tmp_path / "r"
    base = ["-dat", "csv", "--csv", target, "-d", "l2", "-sdir", str(out), "--per-layer"]
    run_tiny(tiny, *base)
    path, layers = out / f"list_{tiny[0]}_l2.csv", out / f"list_{tiny[0]}_l2_layers.csv"
    full = pd.read_csv(path)
    for victim, value in [(path, "inf"), (path, "nan"), (layers, "-inf")]:
        lines = victim.read_text().splitlines(keepends=True)
        lines[2] = lines[2].rsplit(",", 1)[0] + f",{value}\n"
        victim.write_text("".join(lines))
        seen = count_scored(monkeypatch)
        run_tiny(tiny, *base)
        assert len(seen) == 1
        np.testing.assert_allclose(pd.read_csv(path).pred, full.pred, rtol=1e-6)


def test_engine_nan_kept_in_file_left_out_of_summary_with_a_warning(tiny, tmp_path, monkeypatch, capsys):
    """A pair the engine scores NaN (a half-precision overflow, say) is neither dropped from
    the results file nor fed to the correlations: kept as nan, counted as skipped, one warning."""
    from zsiqa.scorer import Scorer
    root = _pipal(tmp_path)
    out = tmp_path / "r"
    original = Scorer.score_chunks

    def one_nan(self, *args, **kwargs):
        for k, item in enumerate(original(self, *args, **kwargs)):
            yield (item[0], item[1] * np.nan, *item[2:]) if k == 0 else item
    monkeypatch.setattr(Scorer, "score_chunks", one_nan)
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out), "--json") == 0
    captured = capsys.readouterr()
    assert "1 pair(s) scored NaN or inf" in captured.err and len(captured.err.strip().splitlines()) == 1
    frame = pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv")
    assert len(frame) == 6 and frame.pred.isna().sum() == 1
    row = json.loads(captured.out)[0]
    assert row["n"] == 5 and row["n_skipped"] == 1
    calc_scores.main(["-f", str(out / f"pipal_{tiny[0]}_l2.csv"), "--json"])  # the same rule reading it back
    again = capsys.readouterr()
    assert json.loads(again.out)["n"] == 5 and json.loads(again.out)["srcc"] == pytest.approx(row["srcc"])
    assert "1 pair(s) scored NaN or inf" in again.err
    monkeypatch.setattr(Scorer, "score_chunks", original)
    seen = count_scored(monkeypatch)
    assert run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)) == 0
    assert len(seen) == 1 and not pd.read_csv(out / f"pipal_{tiny[0]}_l2.csv").pred.isna().any()  # scored again


@pytest.mark.parametrize("values", [["a.png", "b.png", 1.5, 0.1234567891234], ["a,b", "c", 1.0, 2.0],
                                    ['x"y', "z", 0.0, float("nan")], ["x\ny", "z\r", 1, 2], ["", "", 1, 2],
                                    ["a", "b", float("inf"), -0.0], ["a", None, True, 3], [None], ["only"]])
def test_rows_are_written_as_the_csv_writer_writes_them(values):
    """The fast path for plain rows gives the csv module's bytes exactly (quoting, None, floats)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    assert csvfiles.csv_line(values) == (out.getvalue()[:-2] + "\n").encode("utf-8")


@pytest.mark.parametrize("name", ["summary.csv", "summary_unlabelled.csv", "summary.old-2.csv"])
def test_results_file_never_takes_a_summary_name(tmp_path, name):
    with pytest.raises(UserError, match="summary"):
        results.check_file_names([str(tmp_path / name)])
    results.check_file_names([str(tmp_path / "summary_x.csv")])  # a dataset called summary is fine


def test_summary_named_results_refused_before_work(tiny, tmp_path, capsys):
    """A list called summary.csv with -s unlabelled would write its results over the label-free summary."""
    target = minidata.make_csv(str(tmp_path / "d"))
    os.replace(target, os.path.join(os.path.dirname(target), "summary.csv"))
    _fails(capsys, tiny, ["-dat", "csv", "--csv", os.path.join(os.path.dirname(target), "summary.csv"),
                          "-s", "unlabelled", "-d", "l2", "-sdir", str(tmp_path / "r")], "summary")
    assert not (tmp_path / "r").exists()


SLOW_SUMMARY = """
import sys, time
from zsiqa import results
from zsiqa.store import summaries
slow = summaries.write_atomic
summaries.write_atomic = lambda path, data: (time.sleep(1.5), slow(path, data))[1]  # the summary's rewrite
rows = [{"set": "A", "model": "m", "distance": sys.argv[2], "mean": 1}]
results.append_summary(sys.argv[1], rows, "summary_unlabelled", results.UNLABELLED_FIELDS,
                       key=results.UNLABELLED_KEY)
"""


def test_concurrent_summary_updates_keep_every_row(tmp_path):
    """Two runs updating summary_unlabelled.csv at once (read, filter, rewrite): each waits for
    the other, so no row is lost (unlocked, the slower rewrite dropped the other's row)."""
    results.append_summary(str(tmp_path), [{"set": "A", "model": "m", "distance": "wsd", "mean": 1}],
                           "summary_unlabelled", results.UNLABELLED_FIELDS, key=results.UNLABELLED_KEY)
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SUMMARY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), d], env=env, stderr=subprocess.PIPE)
             for d in ("l2", "cos")]
    errs = []
    for p in procs:
        assert p.wait(timeout=120) == 0
        errs.append(p.stderr.read().decode())
    rows = list(csv.DictReader(open(tmp_path / "summary_unlabelled.csv")))
    assert sorted(r["distance"] for r in rows) == ["cos", "l2", "wsd"]
    assert sum("waiting for another run to release" in e for e in errs) == 1, errs  # the second says why it waits


def test_lock_files_follow_the_umask(tmp_path):
    """Under umask 002 (a group sharing a results folder) the locks are group-writable like the
    files beside them, so a colleague's run can take them (filelock 3 made them 0644)."""
    old = os.umask(0o002)
    try:
        results.append_summary(str(tmp_path), [{"dataset": "x"}])
        results.Lock([str(tmp_path / "x.csv")]).release()
    finally:
        os.umask(old)
    for name in ("summary.csv", ".summary.csv.lock", ".x.csv.lock"):
        assert oct(os.stat(tmp_path / name).st_mode & 0o777) == "0o664", name


def test_record_that_is_a_folder_refused_before_overwrite(tiny, tmp_path, capsys):
    """--overwrite removed the results file, then failed on a record that was a folder: both lost."""
    root, out = _pipal(tmp_path), tmp_path / "r"
    base = ["-dat", "pipal", "--root", root, "-d", "l2", "-sdir", str(out)]
    assert run_tiny(tiny, *base) == 0
    kept = (out / f"pipal_{tiny[0]}_l2.csv").read_bytes()
    (out / f"pipal_{tiny[0]}_l2.json").unlink()
    (out / f"pipal_{tiny[0]}_l2.json").mkdir()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        line = _fails(capsys, tiny, [*base, *extra], "is a folder")
        assert "move it away" in line and "--overwrite" not in line
    assert (out / f"pipal_{tiny[0]}_l2.csv").read_bytes() == kept


def test_summary_lock_held_too_long_is_one_line(tmp_path, monkeypatch):
    """Another run holding the summary's lock past the wait: a UserError saying the rows were not added."""
    import filelock
    monkeypatch.setattr(summaries, "SUMMARY_WAIT_S", 0.2)
    with filelock.FileLock(results.lock_path(str(tmp_path / "summary.csv"))):
        with pytest.raises(UserError, match="summary rows were not added"):
            results.append_summary(str(tmp_path), [{"dataset": "x"}])
    assert not (tmp_path / "summary.csv").exists()
    results.append_summary(str(tmp_path), [{"dataset": "x"}])  # released: the row goes in
    assert [r["dataset"] for r in csv.DictReader(open(tmp_path / "summary.csv"))] == ["x"]
