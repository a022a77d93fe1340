"""Classical baselines (zsiqa/baselines.py): PSNR, SSIM, MS-SSIM and LPIPS as methods of the eval
command (-m psnr) and as --baselines columns of a label-free comparison, checked against numpy
by hand and torchmetrics' functional forms; their directions in records, corr and rankings."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats

import minidata
import run
from helpers import ROOT, fails_one_line, run_tiny
from zsiqa.cli import main as cli_main

tm_image = pytest.importorskip("torchmetrics.functional.image", reason="the baselines need torchmetrics")


def _eval(*args):
    return run.main([*args, "--device", "cpu", "--no-progress"])


def _dirs(gt, outs):
    return ["-dat", "dirs", "--ref-dir", gt, *[a for o in outs for a in ("--dis-dir", o)]]


def _float(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255


def _tensors(root, frame):
    """(dis, ref) stacks [n, 3, H, W] float64 of a results file's pairs under the PIPAL layout `root`."""
    def stack(paths):
        return torch.from_numpy(np.stack([_float(os.path.join(root, p)) for p in paths])).permute(0, 3, 1, 2)
    return stack(frame.dis), stack(frame.ref)


def test_psnr_file_equals_numpy_by_hand_and_corr_signs_it_positive(tmp_path, capsys):
    root = minidata.make_pipal(str(tmp_path / "pipal"))
    res = tmp_path / "res"
    assert _eval("-dat", "pipal", "--root", root, "-m", "psnr", "-sdir", str(res)) == 0
    frame = pd.read_csv(res / "pipal_psnr.csv")
    assert list(frame.columns) == ["dis", "ref", "mos", "pred"] and len(frame) == 6
    want = [10 * np.log10(1 / np.mean((_float(os.path.join(root, d)) - _float(os.path.join(root, r))) ** 2))
            for d, r in zip(frame.dis, frame.ref)]
    np.testing.assert_allclose(frame.pred, want, rtol=1e-6)  # torchmetrics' ln 10 is a float32 constant
    record = json.loads((res / "pipal_psnr.json").read_text())
    assert record["model"] == "psnr" and record["distance"] == "psnr" and record["pred_higher_better"] is True
    capsys.readouterr()
    assert cli_main(["corr", "-f", str(res / "pipal_psnr.csv"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    row = rows[0] if isinstance(rows, list) else rows
    srcc = stats.spearmanr(frame.pred, frame.mos)[0]  # PIPAL: higher MOS is better, higher PSNR more alike
    assert srcc > 0 and row["srcc"] == pytest.approx(srcc)


@pytest.mark.parametrize("name, functional", [
    ("ssim", "structural_similarity_index_measure"), ("ms_ssim", "multiscale_structural_similarity_index_measure")])
def test_ssim_and_ms_ssim_equal_torchmetrics_functional(tmp_path, name, functional):
    root = minidata.make_pipal(str(tmp_path / "pipal"))
    res = tmp_path / "res"
    assert _eval("-dat", "pipal", "--root", root, "-m", name, "-sdir", str(res)) == 0
    frame = pd.read_csv(res / f"pipal_{name}.csv")
    dis, ref = _tensors(root, frame)
    want = getattr(tm_image, functional)(dis, ref, data_range=1.0, reduction="none").numpy()
    np.testing.assert_allclose(frame.pred, want, rtol=1e-9)
    record = json.loads((res / f"pipal_{name}.json").read_text())
    assert record["pred_higher_better"] is True and record["model"] == name


def test_baselines_columns_in_the_comparison_ranked_in_their_own_direction(tiny, tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), n=6)
    res, report = tmp_path / "res", tmp_path / "report"
    assert run_tiny(tiny, *_dirs(gt, outs), "-d", "l2", "--baselines", "psnr,ssim", "-sdir", str(res),
                    "--report", str(report)) == 0
    out = capsys.readouterr().out
    for name, direction in (("psnr", "higher"), ("ssim", "higher"), ("l2", "lower")):
        table = out[out.index(f"{name} ("):]
        assert table.startswith(f"{name} ({direction} = more alike")
        ranks = [line.split()[1] for line in table.splitlines()[2:4]]
        assert ranks == ["A", "B"], table  # noise level 1 beats level 4 whichever way the metric runs
    frames = {m: pd.read_csv(res / f"{m}_psnr.csv") for m in ("A", "B")}
    for m, out_dir in zip(("A", "B"), outs):
        want = [10 * np.log10(1 / np.mean((_float(os.path.join(out_dir, d)) - _float(os.path.join(gt, r))) ** 2))
                for d, r in zip(frames[m].dis, frames[m].ref)]
        np.testing.assert_allclose(frames[m].pred, want, rtol=1e-6)
        assert json.loads((res / f"{m}_ssim.json").read_text())["pred_higher_better"] is True
    assert frames["A"].pred.mean() > frames["B"].pred.mean()
    md = (report / "report.md").read_text()
    for name, direction in (("psnr", "higher"), ("ssim", "higher"), ("l2", "lower")):
        section = md[md.index(f"## {name} ("):]
        section = section[:section.find("\n## ", 1) if "\n## " in section else None]
        assert section.startswith(f"## {name} ({direction} = more alike")
        rows = [line.split(" | ")[:2] for line in section.splitlines() if line.startswith(("| 1 ", "| 2 "))]
        assert rows == [["| 1", "**A**"], ["| 2", "B"]], section  # best first (bold), in the metric's own direction
    scores = pd.read_csv(report / "scores.csv")
    assert {"psnr", "ssim", "l2"} <= set(scores.distance)


def test_baseline_results_file_resumes(tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=4)
    res = tmp_path / "res"
    assert _eval(*_dirs(gt, outs), "-m", "ssim", "-sdir", str(res), "--limit", "2") == 0
    first = pd.read_csv(res / "A_ssim.csv")
    assert _eval(*_dirs(gt, outs), "-m", "ssim", "-sdir", str(res)) == 0
    full = pd.read_csv(res / "A_ssim.csv")
    assert len(first) == 2 and len(full) == 4
    pd.testing.assert_frame_equal(full.iloc[:2].reset_index(drop=True), first)  # the first rows kept as written
    capsys.readouterr()
    assert _eval(*_dirs(gt, outs), "-m", "ssim", "-sdir", str(res), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["pairs_per_s"] is None and rows[0]["n"] == 4  # every pair resumed


@pytest.mark.parametrize("extra, match", [
    (["--baselines", "psnr"], "--baselines adds columns to a comparison without labels"),
    (["-m", "psnr", "-d", "l2"], "-d does not apply"),
    (["-m", "psnr", "--per-layer"], "--per-layer does not apply"),
])
def test_bad_combinations_on_a_labelled_set_are_one_line(tmp_path, capsys, extra, match):
    root = minidata.make_pipal(str(tmp_path / "pipal"))
    res = tmp_path / "res"
    args = ["-dat", "pipal", "--root", root, "-sdir", str(res), "--device", "cpu", "--no-progress", *extra]
    fails_one_line(capsys, lambda: cli_main(["eval", *args]), match)
    assert not res.exists() or not any(res.glob("*.csv"))


def test_unknown_baseline_is_one_line_before_any_work(tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=2)
    res = tmp_path / "res"
    fails_one_line(capsys, lambda: cli_main(["eval", *_dirs(gt, outs), "-m", "psnr", "--baselines", "psnr,fsim",
                                             "-sdir", str(res), "--device", "cpu"]), "unknown baseline 'fsim'")
    assert not res.exists()


def test_report_with_a_baseline_method_is_refused(tmp_path, capsys):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=2)
    fails_one_line(capsys, lambda: cli_main(["eval", *_dirs(gt, outs), "-m", "ssim", "--report", str(tmp_path / "r"),
                                             "-sdir", str(tmp_path / "res"), "--device", "cpu"]),
                   "--report does not apply")


def test_lpips_offline_is_one_line_before_any_scoring(tmp_path, capsys, monkeypatch):
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=2)
    monkeypatch.setenv("ZSIQA_OFFLINE", "1")
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    res = tmp_path / "res"
    line = fails_one_line(capsys, lambda: cli_main(["eval", *_dirs(gt, outs), "-m", "lpips_alex", "-sdir", str(res),
                                                    "--device", "cpu", "--no-progress"]),
                          "weights for lpips_alex not found")
    assert "alexnet-owt-7be5be79.pth" in line and "offline" in line
    assert not any(res.glob("*.csv")) if res.exists() else True


def _random_alexnet(make, seed=0):
    torch.manual_seed(seed)
    return make(weights=None).eval()


def test_lpips_with_weights_present_equals_torchmetrics(tmp_path, monkeypatch):
    """A seeded random AlexNet stands in for the ImageNet file (none can be downloaded here): our
    LPIPS equals torchmetrics' own functional LPIPS built on the same AlexNet."""
    import torchvision
    make = torchvision.models.alexnet
    alexnet = _random_alexnet(make)
    wdir = tmp_path / "weights"
    wdir.mkdir()
    torch.save(alexnet.state_dict(), wdir / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("ZSIQA_OFFLINE", "1")
    root = minidata.make_pipal(str(tmp_path / "pipal"), n_ref=1)
    res = tmp_path / "res"
    assert _eval("-dat", "pipal", "--root", root, "-m", "lpips_alex", "-sdir", str(res)) == 0
    frame = pd.read_csv(res / "pipal_lpips_alex.csv")
    record = json.loads((res / "pipal_lpips_alex.json").read_text())
    assert record["pred_higher_better"] is False and record["weights"].startswith("sha256:")
    monkeypatch.setattr(torchvision.models, "alexnet", lambda weights=None, **kw: _random_alexnet(make))
    dis, ref = _tensors(root, frame)
    want = tm_image.learned_perceptual_image_patch_similarity(dis.float(), ref.float(), net_type="alex",
                                                              reduction="none", normalize=True)
    np.testing.assert_allclose(frame.pred, want.numpy().reshape(-1), rtol=1e-5)
    assert (frame.pred > 0).all()


def test_without_torchmetrics_a_baseline_is_one_line_naming_the_extra(tmp_path):
    from test_missing_dependency import BLOCKED
    gt, outs = minidata.make_dirs(str(tmp_path / "d"), levels=(("A", 1),), n=2)
    res = tmp_path / "res"
    proc = subprocess.run([sys.executable, "-c", BLOCKED, "torchmetrics", "eval", *_dirs(gt, outs), "-m", "psnr",
                           "-sdir", str(res), "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install zsiqa[torchmetrics]" in proc.stderr
    assert not res.exists()
