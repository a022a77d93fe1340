"""The registries are the whole truth: a new distance is one `DISTANCES` entry, usable at once
from the API and the CLI by every backbone whose features it applies to."""
import numpy as np
import pytest
import torch
from PIL import Image

import run_single_img
from zsiqa import distances
from zsiqa.images import load_image
from zsiqa.scorer import Scorer
from zsiqa.windows import windows


def l1(f_dis, f_ref):
    """Σ over layers of the mean absolute difference (a distance the project does not ship)."""
    return (f_dis.float() - f_ref.float()).abs().flatten(2).mean(-1).sum(1)


@pytest.fixture
def with_l1(monkeypatch):
    entry = distances.Distance(l1, ("tokens", "grids"), "Σ_layers mean |difference|")
    monkeypatch.setitem(distances.DISTANCES, "l1", entry)


def test_a_new_distance_is_one_entry(tiny, with_l1, tmp_path, capsys):
    name, weights = tiny
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    ref, dis = str(tmp_path / "r.png"), str(tmp_path / "d.png")
    Image.fromarray(a).save(ref)
    Image.fromarray(b).save(dis)
    scorer = Scorer(name, "l1", device="cpu", weights=weights)
    # by hand: the mean over windows of Σ_layers mean |f_dis − f_ref|
    f_ref, f_dis = scorer.extractor(windows(load_image(ref))), scorer.extractor(windows(load_image(dis)))
    want = (f_dis - f_ref).abs().flatten(2).mean(-1).sum(1).double().mean().item()
    assert scorer(dis, ref).item() == pytest.approx(want, rel=1e-6)
    assert "l1" in Scorer(name, "all", device="cpu", weights=weights).distances
    assert "l1" not in Scorer("embed_" + name, "all", device="cpu", weights=weights).distances  # tokens and maps only
    run_single_img.main(["-ref", ref, "-dis", dis, "-m", name, "-d", "l1,l2", "--weights", weights, "--device", "cpu"])
    printed = dict(line.split("\t") for line in capsys.readouterr().out.strip().splitlines())
    assert float(printed["l1"]) == pytest.approx(want, rel=1e-6)
    l2 = Scorer(name, "l2", device="cpu", weights=weights)(dis, ref).item()
    assert float(printed["l2"]) == pytest.approx(l2, rel=1e-6)


def test_distance_directions_are_declared():
    assert all(isinstance(d.lower_better, bool) and d.applies_to for d in distances.DISTANCES.values())
    assert distances.applicable("embed") == ("cos",)
    assert distances.applicable("grids") == ("l2", "cos")
    assert distances.DISTANCES["l2"](torch.ones(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)).item() == pytest.approx(2.0)
