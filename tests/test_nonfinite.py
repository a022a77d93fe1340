"""A score that overflows (the tiny ViT with weights ×1e4 run in fp16 gives NaN; in fp32 the same
pair is finite) is never reported as a plain success: the score command prints it as nan (JSON
null), says in one warning line which distance and why, and exits with 3; the API warns with a
ScoreWarning."""
import json
import math
import warnings

import pytest
import torch

import run_single_img
from helpers import random_image
from zsiqa.errors import ScoreWarning
from zsiqa.scorer import Scorer


@pytest.fixture
def overflowing(tiny, tmp_path):
    """(backbone name, weights whose matrices are ×1e4: fp16 features overflow, fp32 ones do not,
    reference, distorted image)."""
    name, path = tiny
    sd = torch.load(path)
    big = tmp_path / "big.pth"
    torch.save({k: v * 1e4 if v.dim() > 1 else v for k, v in sd.items()}, big)
    return name, str(big), random_image(tmp_path / "r.png", 224, 224, 0), random_image(tmp_path / "d.png", 224, 224, 1)


def _score(capsys, overflowing, precision, *more):
    name, weights, ref, dis = overflowing
    argv = ["-ref", ref, "-dis", dis, "-m", name, "--weights", weights, "--device", "cpu", "-d", "l2,cos",
            "--precision", precision, *more]
    try:
        code = run_single_img.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_score_command_says_nan_and_exits_3(capsys, overflowing):
    code, out, err = _score(capsys, overflowing, "fp16")
    assert code == 3 and out == "l2\tnan\ncos\tnan\n", (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: l2 scored NaN or inf for 1 of 1 pair(s), cos "), err
    assert "overflowed in float16" in lines[0] and "try --precision fp32" in lines[0]
    code, out, err = _score(capsys, overflowing, "fp16", "--json")
    assert code == 3 and json.loads(out)["scores"] == {"l2": None, "cos": None} and len(err.strip().splitlines()) == 1
    code, out, err = _score(capsys, overflowing, "fp32")  # what the warning advises: finite scores, exit 0
    assert code == 0 and err == "" and all(math.isfinite(float(line.split("\t")[1])) for line in out.splitlines())


def test_api_warns_once_per_call(overflowing):
    name, weights, ref, dis = overflowing
    scorer = Scorer(name, "l2,cos", device="cpu", precision="fp16", weights=weights)
    with pytest.warns(ScoreWarning, match=r"l2 scored NaN or inf for 2 of 2 pair\(s\), cos .*--precision fp32") as w:
        got = scorer.score([dis, dis], [ref, ref])
    assert len(w) == 1 and all(torch.isnan(v).all() for v in got.values())
    with pytest.warns(ScoreWarning, match=r"l2 scored NaN or inf for 2 of 2 pair\(s\)") as w:
        rows = list(scorer.score_files([(dis, ref), (ref, dis)]))
    assert len(w) == 1 and len(rows) == 2
    fine = Scorer(name, "l2,cos", device="cpu", precision="fp32", weights=weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScoreWarning)
        assert all(math.isfinite(float(v)) for v in fine.score(dis, ref).values())
        assert len(list(fine.score_files([(dis, ref)]))) == 1
