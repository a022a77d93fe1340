"""run.py end to end on tiny datasets in every layout, with the tiny backbone."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

import minidata
from helpers import ROOT, count_scored, fails_one_line, interrupt_after, run_tiny
from zsiqa.robustness import Transform
from zsiqa.scorer import Scorer


def _rows(path):
    return pd.read_csv(path)


@pytest.mark.parametrize("layout", ["pipal", "live", "tid2013", "kadid10k", "csv"])
def test_each_layout_end_to_end(tiny, tmp_path, capsys, layout):
    make = {"pipal": minidata.make_pipal, "live": minidata.make_live, "tid2013": minidata.make_tid2013,
            "kadid10k": minidata.make_kadid, "csv": minidata.make_csv}[layout]
    target = make(str(tmp_path / "data"))
    where = ["--csv", target] if layout == "csv" else ["--root", target]
    out = tmp_path / "res"
    assert run_tiny(tiny, "-dat", layout, *where, "-d", "l2,wsd", "-sdir", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    stem = "list" if layout == "csv" else layout
    files = {d: out / f"{stem}_{tiny[0]}_{d}.csv" for d in ("l2", "wsd")}
    frame = _rows(files["l2"])
    assert list(frame.columns) == ["dis", "ref", "mos", "pred"]
    root = os.path.dirname(target) if layout == "csv" else target
    for _, r in frame.iterrows():  # relative paths that exist under the root
        assert os.path.isfile(os.path.join(root, r.dis)) and os.path.isfile(os.path.join(root, r.ref))
    # predictions are the API's scores for the same pairs
    api = Scorer(tiny[0], ["l2", "wsd"], device="cpu", weights=tiny[1])(
        [os.path.join(root, p) for p in frame.ref], [os.path.join(root, p) for p in frame.dis])
    np.testing.assert_allclose(frame.pred, api["l2"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(_rows(files["wsd"]).pred, api["wsd"].numpy(), rtol=1e-6)
    # the summary's correlations are scipy's on the file, signed for agreement
    sign = -1 if layout in ("pipal", "kadid10k", "csv") else 1
    row = next(s for s in summary if s["distance"] == "l2")
    assert row["n"] == len(frame)
    assert row["srcc"] == pytest.approx(stats.spearmanr(sign * frame.pred, frame.mos)[0])
    assert row["plcc"] == pytest.approx(stats.pearsonr(sign * frame.pred, frame.mos)[0])
    assert row["krcc"] == pytest.approx(stats.kendalltau(sign * frame.pred, frame.mos)[0])
    assert row["srcc"] > 0.5  # noise level drives both labels and the distance
    logged = list(csv.DictReader(open(out / "summary.csv")))
    assert len(logged) == 2 and logged[0]["dataset"] == (stem if layout == "csv" else layout)


def test_label_conventions(tmp_path):
    from zsiqa.datasets import load_dataset
    tid = load_dataset("tid2013", minidata.make_tid2013(str(tmp_path / "tid")))
    assert tid.pairs[0] == ("reference_images/I01.BMP", "distorted_images/i01_01_1.bmp", pytest.approx(100 - 6.0))
    assert tid.pairs[1][1] == "distorted_images/I01_01_2.bmp"  # case taken from disk
    live = load_dataset("live", minidata.make_live(str(tmp_path / "live")))
    assert len(live.pairs) == 5 and all(not d.endswith("/img1.bmp") for _, d, _ in live.pairs)  # originals left out
    assert live.pairs[0] == ("refimgs/bikes.bmp", "jp2k/img2.bmp", 18.5) and not live.higher_better
    pipal = load_dataset("pipal", minidata.make_pipal(str(tmp_path / "pipal")))
    assert pipal.pairs[0][:2] == ("Train_Ref/A0001.bmp", "Train_Dis/A0001_00_00.bmp") and pipal.higher_better


def test_seed_naming_with_saveas(tiny, tmp_path):
    root = minidata.make_kadid(str(tmp_path / "k"))
    run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "cos", "-s", "mine", "-sdir", str(tmp_path / "r"), "-rob",
         "sca", "-pct", "2")
    assert (tmp_path / "r" / "kadid10k_mine_sca-2.csv").is_file()


@pytest.mark.slow
def test_robustness_run_scores_transformed_pairs(tiny, tmp_path):
    root = minidata.make_pipal(str(tmp_path / "p"), size=(260, 240))
    for kind in ("tra", "sca", "rot"):
        run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2",
                 "-sdir", str(tmp_path / "r"), "-rob", kind, "-pct", "3")
        frame = _rows(tmp_path / "r" / f"pipal_{tiny[0]}_l2_{kind}-3.csv")
        from zsiqa.images import pil_to_tensor
        pairs = [Transform(kind, 3)(Image.open(os.path.join(root, r)).convert("RGB"),
                                    Image.open(os.path.join(root, d)).convert("RGB"))
                 for r, d in zip(frame.ref, frame.dis, strict=False)]
        api = Scorer(tiny[0], "l2", device="cpu", weights=tiny[1])(dis=[pil_to_tensor(d) for _, d in pairs],
                                                                   ref=[pil_to_tensor(r) for r, _ in pairs])
        np.testing.assert_allclose(frame.pred, api.numpy(), rtol=1e-6, err_msg=kind)


@pytest.mark.slow
def test_sweep_reuses_references_and_matches_single_runs(tiny, tmp_path, monkeypatch):
    root = minidata.make_pipal(str(tmp_path / "p"), size=(260, 240))
    encoded = []
    original = Scorer.encode
    monkeypatch.setattr(Scorer, "encode", lambda self, w: encoded.append(w.shape[0]) or original(self, w))
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,cos",
             "-sdir", str(tmp_path / "s"), "--kinds", "tra,sca,rot",
         "--pcts", "1,4")
    n_windows = 4  # 260×240 → 2×2 windows
    # 2 refs × (1 plain ref + 2 translated refs) + 6 pairs × 7 variants
    assert sum(encoded) == n_windows * (2 * 3 + 6 * 7)
    table = pd.read_csv(tmp_path / "s" / f"pipal_{tiny[0]}_sweep.csv")
    assert len(table) == 2 * 7 and set(table.robustness) == {"none", "tra", "sca", "rot"}
    png = tmp_path / "s" / f"pipal_{tiny[0]}_sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "cos",
             "-sdir", str(tmp_path / "single"), "-rob", "rot", "-pct",
         "4")
    np.testing.assert_allclose(_rows(tmp_path / "s" / f"pipal_{tiny[0]}_cos_rot-4.csv").pred,
                               _rows(tmp_path / "single" / f"pipal_{tiny[0]}_cos_rot-4.csv").pred, rtol=1e-6)


def test_interrupted_run_resumes_without_recomputing(tiny, tmp_path, monkeypatch):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=3, n_dis=3)
    full = tmp_path / "full"
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,jsd", "-sdir", str(full), "--batch-size", "3")
    restore = interrupt_after(monkeypatch, 4)
    part = tmp_path / "part"
    with pytest.raises(SystemExit) as e:
        run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,jsd", "-sdir", str(part), "--batch-size", "3")
    assert e.value.code == 130
    assert len(_rows(part / f"pipal_{tiny[0]}_l2.csv")) == 4  # a valid file with the finished rows
    restore()
    seen = count_scored(monkeypatch)
    run_tiny(tiny, "-dat", "pipal", "--root", root, "-d", "l2,jsd", "-sdir", str(part), "--batch-size", "3")
    assert len(seen) == 9 - 4  # only the missing pairs were scored
    for d in ("l2", "jsd"):
        a, b = _rows(full / f"pipal_{tiny[0]}_{d}.csv"), _rows(part / f"pipal_{tiny[0]}_{d}.csv")
        assert list(a.dis) == list(b.dis)  # same rows, dataset order
        np.testing.assert_allclose(a.pred, b.pred, rtol=1e-6)


def test_missing_images_listed_up_front(tiny, tmp_path, capsys):
    root = minidata.make_tid2013(str(tmp_path / "t"))
    os.remove(os.path.join(root, "distorted_images", "I01_01_2.bmp"))
    open(os.path.join(root, "distorted_images", "i02_01_1.bmp"), "w").write("broken")
    _huge_png_header(os.path.join(root, "distorted_images", "i01_01_1.bmp"), 20000, 10000)  # 200 Mpx declared
    line = fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "tid2013", "--root", root, "-d", "l2",
                                                   "-sdir", str(tmp_path / "r")),
                          "3 of 6 pair(s) unusable", "missing; too large; unreadable", "decompression-bomb limit",
                          warnings=False)
    assert "i01_01_2.bmp (missing)" in line.lower(), line
    assert not (tmp_path / "r").exists()
    assert run_tiny(tiny, "-dat", "tid2013", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r"),
                "--skip-missing") == 0
    assert len(_rows(tmp_path / "r" / f"tid2013_{tiny[0]}_l2.csv")) == 3


def _huge_png_header(path, width, height):
    """A PNG that declares width×height grey pixels but holds almost no data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                + chunk(b"IEND", b""))


def test_bad_dataset_arguments(tiny, tmp_path, capsys):
    for args, match in [(["-dat", "imagenet", "--root", str(tmp_path)], "unknown dataset"),
                        (["-dat", "live", "--root", str(tmp_path / "none")], "not found"),
                        (["-dat", "tid2013", "--root", str(tmp_path)], "TID2013 label file not found"),
                        (["-dat", "csv"], "needs --csv")]:
        fails_one_line(capsys, lambda args=args: run_tiny(tiny, *args, "-sdir", str(tmp_path / "r")), match,
                       warnings=False)


def test_limit(tiny, tmp_path):
    root = minidata.make_kadid(str(tmp_path / "k"))
    run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r"), "--limit", "4")
    assert len(_rows(tmp_path / "r" / f"kadid10k_{tiny[0]}_l2.csv")) == 4


@pytest.mark.slow
@pytest.mark.subprocess
def test_torchrun_two_processes_equal_one(tiny_weights, tmp_path):
    root = minidata.make_pipal(str(tmp_path / "p"), n_ref=3, n_dis=3)
    common = ["-dat", "pipal", "--root", root, "-m", "tiny_vit_test", "-d", "l2,wsd", "--device", "cpu",
              "--no-progress", "--json"]
    one = subprocess.run([sys.executable, str(ROOT / "tests" / "tiny_run.py"), tiny_weights, *common, "-sdir",
                          str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517",
                          str(ROOT / "tests" / "tiny_run.py"), tiny_weights, *common, "-sdir", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    for d in ("l2", "wsd"):
        a = _rows(tmp_path / "one" / f"pipal_tiny_vit_test_{d}.csv")
        b = _rows(tmp_path / "two" / f"pipal_tiny_vit_test_{d}.csv")
        assert list(a.dis) == list(b.dis) and list(a.mos) == list(b.mos)
        np.testing.assert_allclose(a.pred, b.pred, rtol=1e-5)
    assert not list((tmp_path / "two").glob("*.rank*"))
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)
    for x, y in zip(s1, s2, strict=False):
        assert x["n"] == y["n"] and x["srcc"] == pytest.approx(y["srcc"], abs=1e-9)


def test_mis_sized_pairs_found_before_scoring(tiny, tmp_path, capsys):
    root = minidata.make_kadid(str(tmp_path / "k"), n_ref=2, n_dis=2, size=(230, 240))
    Image.new("RGB", (300, 240)).save(os.path.join(root, "images", "I02_01_02.png"))  # wrong size
    fails_one_line(capsys, lambda: run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "l2",
                                            "-sdir", str(tmp_path / "r")), "1 of 4 pair(s) unusable", "sizes differ")
    with pytest.raises(SystemExit):  # a 3 % shift leaves 230 − 7 = 223 px: caught up front too
        run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "l2",
                 "-sdir", str(tmp_path / "r"), "-rob", "tra", "-pct",
             "3")
    assert "under 224 px after the shift" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert run_tiny(tiny, "-dat", "kadid10k", "--root", root, "-d", "l2", "-sdir", str(tmp_path / "r"),
                "--skip-missing") == 0
    assert len(_rows(tmp_path / "r" / f"kadid10k_{tiny[0]}_l2.csv")) == 3
