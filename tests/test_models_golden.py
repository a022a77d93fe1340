"""Golden parity of the four main backbones with seed-0 stand-in checkpoints (PROTOCOL.md §3),
through the Python API and the CLI. Each model's features are computed once per route."""
import os
import subprocess
import sys

import pytest

from helpers import GOLDEN, ROOT, close, golden_api_scores, golden_cli_mismatches

pytestmark = pytest.mark.golden
DEVICE = os.environ.get("ZSIQA_TEST_DEVICE", "cpu")  # the API parity test also runs on a GPU in strict fp32


def _rows(golden):
    return golden["models"]


def test_every_model_row_via_api(golden, checkpoint):
    scores = golden_api_scores(_rows(golden), checkpoint, DEVICE)
    bad = [(r["model"], r["distance"], r["ref"], scores[id(r)], r["score"])
           for r in _rows(golden) if not close(scores[id(r)], r["score"])]
    assert len(_rows(golden)) == 36 and not bad, bad


def test_every_model_row_via_cli(golden, checkpoint, tmp_path, capsys):
    checked, bad = golden_cli_mismatches(_rows(golden), checkpoint, tmp_path, capsys)
    assert checked == 36 and not bad, bad


def test_cli_process_plain_output(golden, checkpoint):
    """The real entry point: exit code 0 and `distance<TAB>score` lines."""
    rows = [r for r in _rows(golden) if r["model"] == "clip_vitb32" and r["ref"] == "pair1_ref.png"]
    proc = subprocess.run([sys.executable, str(ROOT / "run_single_img.py"),
                           "-ref", str(GOLDEN / "models" / rows[0]["ref"]),
                           "-dis", str(GOLDEN / "models" / rows[0]["dis"]), "-m", "clip_vitb32", "-d", "all",
                           "--weights", checkpoint("clip_vitb32"), "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
    assert list(lines) == ["l2", "cos", "skld", "jsd", "wsd", "swd"]
    for r in rows:
        assert close(float(lines[r["distance"]]), r["score"]), r["distance"]


def test_torchscript_release_format_loads(golden, checkpoint, tmp_path):
    """OpenAI ships ViT-B-32.pt as a TorchScript archive: the stand-in, traced into one,
    must give the same golden scores as the plain state dict."""
    import torch

    from zsiqa.scorer import Scorer
    from zsiqa.weights import clip_model
    sd = torch.load(checkpoint("clip_vitb32"), map_location="cpu")
    model = clip_model().build_model(dict(sd)).float().eval()
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.trace_module(model, {"encode_image": torch.rand(1, 3, 224, 224)}).save(str(archive))
    rows = [r for r in _rows(golden) if r["model"] == "clip_vitb32" and r["ref"] == "pair0_ref.png"]
    got = Scorer("clip_vitb32", [r["distance"] for r in rows], device="cpu", weights=str(archive))(
        str(GOLDEN / "models" / rows[0]["ref"]), str(GOLDEN / "models" / rows[0]["dis"]))
    for r in rows:
        assert close(float(got[r["distance"]][0]), r["score"]), r["distance"]
