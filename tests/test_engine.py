"""The batched engine against a plain one-pair, one-window-at-a-time loop (tiny backbone)."""
import numpy as np
import pytest
import torch
from PIL import Image

from distances import DISTANCES
from engine import Scorer
from utils import load_image, windows

ALL = ["l2", "cos", "skld", "jsd", "wsd", "swd"]


def _image(path, w, h, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def mixed_set(tmp_path):
    """Three references of different sizes, 2-3 distorted images each, refs interleaved."""
    sizes = [(224, 224), (300, 260), (450, 240)]
    refs = [_image(tmp_path / f"r{i}.png", w, h, i) for i, (w, h) in enumerate(sizes)]
    pairs = []
    for j in range(8):
        i = j % 3
        pairs.append((refs[i], _image(tmp_path / f"d{j}.png", *sizes[i], 100 + j)))
    return pairs


def _loop(scorer, pairs):
    """The straightforward path: one pair at a time, one window per forward pass."""
    out = []
    for ref, dis in pairs:
        wr, wd = windows(load_image(ref)), windows(load_image(dis))
        per = [[DISTANCES[d](scorer.extractor(wd[k:k + 1]), scorer.extractor(wr[k:k + 1])).item()
                for d in scorer.distances] for k in range(wr.shape[0])]
        out.append(np.mean(per, axis=0))
    return np.array(out)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_engine_equals_one_pair_loop(tiny, mixed_set, batch_size):
    name, weights = tiny
    scorer = Scorer(name, ALL, device="cpu", weights=weights, batch_size=batch_size)
    want = _loop(scorer, mixed_set)
    got = scorer([r for r, _ in mixed_set], [d for _, d in mixed_set])
    for j, d in enumerate(ALL):
        np.testing.assert_allclose(got[d].numpy(), want[:, j], rtol=1e-5, atol=1e-7, err_msg=d)


@pytest.mark.parametrize("workers", [0, 2])
def test_score_files_equals_api(tiny, mixed_set, workers):
    name, weights = tiny
    scorer = Scorer(name, "l2,wsd", device="cpu", weights=weights, batch_size=5, workers=workers)
    api = scorer([r for r, _ in mixed_set], [d for _, d in mixed_set])
    rows = {i: r for (_, i), r in scorer.score_files(mixed_set)}
    assert sorted(rows) == list(range(len(mixed_set)))
    got = np.array([rows[i] for i in range(len(mixed_set))])
    np.testing.assert_allclose(got[:, 0], api["l2"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], api["wsd"].numpy(), rtol=1e-6)


def test_input_forms_agree(tiny, mixed_set):
    name, weights = tiny
    metric = Scorer(name, "cos", device="cpu", weights=weights)
    ref, dis = mixed_set[1]
    by_path = metric(ref, dis)
    assert by_path.shape == (1,)  # one distance name → a tensor
    by_pil = metric(Image.open(ref), Image.open(dis))
    by_tensor = metric(load_image(ref), load_image(dis))
    by_batch = metric(load_image(ref)[None].repeat(2, 1, 1, 1), load_image(dis)[None].repeat(2, 1, 1, 1))
    assert torch.allclose(by_pil, by_path) and torch.allclose(by_tensor, by_path)
    assert by_batch.shape == (2,) and torch.allclose(by_batch, by_path.expand(2))


def test_reference_encoded_once_per_run(tiny, mixed_set, monkeypatch):
    name, weights = tiny
    scorer = Scorer(name, "l2", device="cpu", weights=weights, batch_size=4)
    seen = []
    encode = scorer.encode
    monkeypatch.setattr(scorer, "encode", lambda w: seen.append(w.shape[0]) or encode(w))
    list(scorer.score_files(mixed_set))
    n_windows = sum(windows(load_image(d)).shape[0] for _, d in mixed_set)
    n_ref_windows = sum(windows(load_image(r)).shape[0] for r in {r for r, _ in mixed_set})
    assert sum(seen) == n_windows + n_ref_windows
    assert max(seen) <= 4


def test_embed_variant_runs_and_is_bounded(tiny, mixed_set):
    name, weights = tiny
    got = Scorer("embed_" + name, "cos", device="cpu", weights=weights)([r for r, _ in mixed_set], [d for _, d in mixed_set])
    assert torch.all((got >= 0) & (got <= 2))


def test_api_refuses_tensors_outside_unit_range(tiny):
    from utils import UserError
    name, weights = tiny
    metric = Scorer(name, "l2", device="cpu", weights=weights)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        metric(torch.full((3, 224, 224), 255.0), torch.zeros(3, 224, 224))
    with pytest.raises(UserError, match="3 references but 2"):
        metric([torch.zeros(3, 224, 224)] * 3, [torch.zeros(3, 224, 224)] * 2)
    assert metric(torch.zeros(3, 224, 224, dtype=torch.uint8), torch.zeros(3, 224, 224)).item() == 0.0
