"""Looking inside the metric: per-layer scores, block selection, spatial maps, the loss."""
import numpy as np
import pytest
import torch
from PIL import Image

import run_single_img
from helpers import fails_one_line, random_image
from zsiqa.blocks import parse_layers
from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError
from zsiqa.images import load_image
from zsiqa.loss import PerceptualLoss
from zsiqa.scorer import Scorer
from zsiqa.windows import windows

ALL = ["l2", "cos", "skld", "jsd", "wsd", "swd"]


@pytest.fixture
def pairs(tmp_path):
    """(dis, ref) pairs, the API's order."""
    sizes = [(224, 224), (300, 260), (450, 240)]
    refs = [random_image(tmp_path / f"r{i}.png", w, h, i) for i, (w, h) in enumerate(sizes)]
    return [(random_image(tmp_path / f"d{j}.png", *sizes[j % 3], 100 + j), refs[j % 3]) for j in range(5)]


def _split(pairs):
    """(dis, ref) pairs → (distorted images, references)."""
    return [d for d, _ in pairs], [r for _, r in pairs]


# ---------------------------------------------------------------- per-layer scores, --layers

@pytest.mark.slow
def test_layer_scores_sum_to_scores_tokens(tiny, pairs):
    name, weights = tiny
    scorer = Scorer(name, ALL, device="cpu", weights=weights, batch_size=3)
    scores, per = scorer(*_split(pairs)), scorer.layer_scores(*_split(pairs))
    assert set(per) == {"l2", "cos"} and per["l2"].shape == (len(pairs), 2)
    for d in per:
        np.testing.assert_allclose(per[d].sum(1).numpy(), scores[d].numpy(), rtol=1e-6)


def test_score_files_per_layer_rows(tiny, pairs):
    name, weights = tiny
    scorer = Scorer(name, "wsd,l2,cos", device="cpu", weights=weights, batch_size=4)
    rows = {i: (s, per) for (_, i), s, per in scorer.score_files(pairs, per_layer=True)}
    plain = {i: s for (_, i), s in scorer.score_files(pairs)}
    assert scorer.layer_distances == ("l2", "cos") and scorer.blocks == (1, 2)
    for i, (s, per) in rows.items():
        np.testing.assert_array_equal(s, plain[i])
        assert per.shape == (2, 2)
        np.testing.assert_allclose(per.sum(1), s[1:], rtol=1e-6)
    with pytest.raises(UserError, match="sum over layers"):
        Scorer(name, "wsd", device="cpu", weights=weights).layer_scores(*pairs[0])


def test_layer_scores_sum_to_scores_conv(checkpoint, pairs):
    scorer = Scorer("clip_rn50", "l2,cos", device="cpu", precision="fp32", weights=checkpoint("clip_rn50"))
    scores, per = scorer(*_split(pairs[:2])), scorer.layer_scores(*_split(pairs[:2]))
    assert per["l2"].shape == (2, 5) and scorer.group_sizes == (1, 1, 1, 1, 1)
    for d in per:
        np.testing.assert_allclose(per[d].sum(1).numpy(), scores[d].numpy(), rtol=1e-5)
    sub = Scorer("clip_rn50", "l2,cos", device="cpu", precision="fp32", weights=checkpoint("clip_rn50"), layers="2,4-5")
    got = sub(*_split(pairs[:2]))
    for d in per:
        np.testing.assert_allclose(got[d].numpy(), per[d][:, [1, 3, 4]].sum(1).numpy(), rtol=1e-5)


@pytest.mark.parametrize("spec,want", [("1-6,9", (0, 1, 2, 3, 4, 5, 8)), ("12", (11,)), (" 3 - 4 , 1", (0, 2, 3)),
                                       ("all", tuple(range(12))), ([2, 1, 2], (0, 1)), ("5-5", (4,))])
def test_parse_layers(spec, want):
    assert parse_layers(spec, 12) == want


@pytest.mark.parametrize("spec", ["0", "13", "3-1", "a", "", ",", "1-", "1.5", [0], []])
def test_parse_layers_refuses(spec):
    with pytest.raises(UserError) as e:
        parse_layers(spec, 12)
    assert "\n" not in str(e.value)


def test_all_blocks_equal_default_exactly(tiny, pairs):
    name, weights = tiny
    default = Scorer(name, ALL, device="cpu", weights=weights)(*_split(pairs))
    every = Scorer(name, ALL, device="cpu", weights=weights, layers="1-2")(*_split(pairs))
    for d in ALL:
        assert torch.equal(default[d], every[d]), d


def test_subset_of_blocks(tiny, pairs):
    name, weights = tiny
    per = Scorer(name, "l2,cos", device="cpu", weights=weights).layer_scores(*_split(pairs))
    sub = Scorer(name, ALL, device="cpu", weights=weights, layers="2")
    got = sub(*_split(pairs))
    for d in per:
        np.testing.assert_allclose(got[d].numpy(), per[d][:, 1].numpy(), rtol=1e-6)
    dis, ref = load_image(pairs[0][0]), load_image(pairs[0][1])
    f_r, f_d = sub.extractor(windows(ref))[:, 1:], sub.extractor(windows(dis))[:, 1:]
    np.testing.assert_allclose(got["wsd"][0].item(), DISTANCES["wsd"](f_d, f_r).mean().item(), rtol=1e-5)


# ---------------------------------------------------------------- maps

def test_window_maps_mean_is_window_score(tiny, pairs):
    name, weights = tiny
    scorer = Scorer(name, ALL, device="cpu", weights=weights, batch_size=4, layers="1-2")
    dis, ref = pairs[2]
    maps = scorer.window_maps(dis, ref)
    wr, wd = windows(load_image(ref)), windows(load_image(dis))
    want = scorer.window_scores(scorer.encode(wd), lambda a, b: [f[a:b] for f in scorer.encode(wr)])
    for j, d in enumerate(ALL):
        assert maps[d].shape == (wr.shape[0], 224, 224)
        np.testing.assert_allclose(maps[d].double().mean((1, 2)).numpy(), want[:, j].numpy(), rtol=1e-5, err_msg=d)
    image = scorer.maps(dis, ref)
    assert image["l2"].shape == (240, 450) and image["l2"].dtype == np.float32
    total, count = np.zeros((len(ALL), 240, 450)), np.zeros((240, 450))  # overlaps averaged, by hand
    for k, (r, c) in enumerate([(r, c) for r in (0, 16) for c in (0, 200, 226)]):
        count[r:r + 224, c:c + 224] += 1
        total[:, r:r + 224, c:c + 224] += np.stack([maps[d][k].double().numpy() for d in ALL])
    for j, d in enumerate(ALL):
        np.testing.assert_allclose(image[d], total[j] / count, rtol=1e-6, err_msg=d)


def test_conv_window_maps_mean(checkpoint, pairs):
    scorer = Scorer("clip_rn50", "l2,cos", device="cpu", precision="fp32", weights=checkpoint("clip_rn50"))
    dis, ref = pairs[1]
    maps = scorer.window_maps(dis, ref)
    wr, wd = windows(load_image(ref)), windows(load_image(dis))
    want = scorer.window_scores(scorer.encode(wd), lambda a, b: [f[a:b] for f in scorer.encode(wr)])
    for j, d in enumerate(["l2", "cos"]):
        np.testing.assert_allclose(maps[d].double().mean((1, 2)).numpy(), want[:, j].numpy(), rtol=1e-5, err_msg=d)


def test_local_distortion_shows_in_map(tiny):
    name, weights = tiny
    y, x = torch.meshgrid(torch.linspace(0, 1, 448), torch.linspace(0, 1, 448), indexing="ij")
    ref = torch.stack([x, y, (x + y) / 2]).float()
    dis = ref.clone()
    gen = torch.Generator().manual_seed(0)
    dis[:, 64:160, 288:384] = (dis[:, 64:160, 288:384] + 0.3 * torch.randn(3, 96, 96, generator=gen)).clamp(0, 1)
    maps = Scorer(name, "l2,cos", device="cpu", weights=weights).maps(dis, ref)
    inside = np.zeros((448, 448), bool)
    inside[64:160, 288:384] = True
    for d, m in maps.items():
        assert m[inside].mean() > 3 * m[~inside].mean(), d


def test_cli_writes_maps(tiny, pairs, tmp_path, capsys):
    name, weights = tiny
    dis, ref = pairs[1]
    out = tmp_path / "maps"
    run_single_img.main(["-ref", ref, "-dis", dis, "-m", name, "--weights", weights, "-d", "l2,wsd", "--device", "cpu",
                         "--maps", str(out), "--layers", "1-2"])
    assert sorted(p.name for p in out.iterdir()) == ["l2.npy", "l2.png", "wsd.npy", "wsd.png"]
    assert np.load(out / "l2.npy").shape == (260, 300)
    assert Image.open(out / "l2.png").size[0] > 100
    blocker = tmp_path / "file"
    blocker.write_text("x")
    capsys.readouterr()
    fails_one_line(capsys, lambda: run_single_img.main(["-ref", ref, "-dis", dis, "-m", name, "--weights", weights,
                                                        "--maps", str(blocker / "sub")]), warnings=False)


# ---------------------------------------------------------------- gradients and the loss

@pytest.mark.slow
@pytest.mark.parametrize("d", ALL)
def test_eager_distances_gradcheck(d):
    torch.manual_seed(0)
    a = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: DISTANCES[d](x, y), (a, b))
    if DISTANCES[d].per_layer:  # conv-map form [N, L, C, H, W]
        a5, b5 = (torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True) for _ in range(2))
        assert torch.autograd.gradcheck(lambda x, y: DISTANCES[d].layers(x, y), (a5, b5))


@pytest.mark.parametrize("d", ALL)
def test_loss_equals_scorer(tiny, d):
    name, weights = tiny
    gen = torch.Generator().manual_seed(1)
    ref = torch.rand(2, 3, 240, 300, generator=gen)
    dis = (ref + 0.1 * torch.randn(ref.shape, generator=gen)).clamp(0, 1).requires_grad_(True)
    loss = PerceptualLoss(name, d, weights=weights, device="cpu", reduction="none")
    value = loss(dis, ref)
    want = Scorer(name, d, device="cpu", weights=weights)(dis.detach(), ref)
    np.testing.assert_allclose(value.detach().numpy(), want.numpy(), rtol=1e-5)
    value.sum().backward()
    assert torch.isfinite(dis.grad).all() and dis.grad.abs().sum() > 0


@pytest.mark.parametrize("d", ALL)
def test_loss_gradients_finite_where_a_window_is_identical(tiny, d):
    """A window at distance 0 (the fourth root's slope is infinite there) gives the
    subgradient 0, not NaN: an identical pair has zero gradients, a pair differing in one
    window finite ones that are non-zero only where pixels differ or windows overlap them."""
    name, weights = tiny
    gen = torch.Generator().manual_seed(4)
    ref = torch.rand(1, 3, 224, 448, generator=gen)
    loss = PerceptualLoss(name, d, weights=weights, device="cpu")
    same = ref.clone().requires_grad_(True)
    loss(same, ref).backward()
    assert same.grad.abs().max() < 1e-9  # zero (cos: to float rounding)
    dis = ref.clone()
    dis[..., 300:] = (dis[..., 300:] + 0.2 * torch.rand(1, 3, 224, 148, generator=gen)).clamp(0, 1)
    dis.requires_grad_(True)
    loss(dis, ref).backward()
    assert torch.isfinite(dis.grad).all() and dis.grad[..., 200:].abs().sum() > 0
    assert dis.grad[..., :200].abs().max() < 1e-9  # only window 0, at distance 0, sees these columns


def test_loss_optimises_and_autocast(tiny):
    name, weights = tiny
    gen = torch.Generator().manual_seed(2)
    ref = torch.rand(1, 3, 224, 224, generator=gen)
    x = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1).requires_grad_(True)
    criterion = PerceptualLoss(name, "l2", weights=weights, device="cpu").train()
    assert not criterion.backbone.training
    opt = torch.optim.Adam([x], lr=0.01)
    values = []
    for _ in range(5):
        opt.zero_grad()
        loss = criterion(x.clamp(0, 1), ref)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < values[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = criterion(x.clamp(0, 1), ref)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


@pytest.mark.parametrize("bad,match", [(torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "float"),
                                       (torch.full((1, 3, 224, 224), float("nan")), "NaN or infinite"),
                                       (torch.full((1, 3, 224, 224), float("-inf")), "NaN or infinite"),
                                       (torch.rand(1, 3, 200, 300), "resize=224"),
                                       (torch.rand(3, 224, 224), r"\[N, 3, H, W\]")])
def test_loss_refuses_bad_input(tiny, bad, match):
    name, weights = tiny
    with pytest.raises(UserError, match=match):
        PerceptualLoss(name, "l2", weights=weights, device="cpu")(bad, torch.rand(bad.shape if bad.dim() == 4 else
                                                                                   (1, 3, 224, 224)))


@pytest.mark.slow
def test_loss_takes_float16_and_float64_images(tiny):
    """Float images of any precision are float images in [0, 1]: same value as float32."""
    name, weights = tiny
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(1, 3, 224, 230, generator=gen)
    dis = (ref + 0.1 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    loss = PerceptualLoss(name, "l2", weights=weights, device="cpu")
    want = loss(dis, ref).item()
    x = dis.double().requires_grad_(True)
    got = loss(x, ref.double())
    got.backward()
    assert got.item() == pytest.approx(want, rel=1e-6)
    assert x.grad.dtype == torch.float64 and torch.isfinite(x.grad).all()
    assert loss(dis.half(), ref.half()).item() == pytest.approx(want, rel=2e-2)
