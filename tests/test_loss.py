"""A loss and an API that behave like PyTorch: the perceptual loss in an ordinary training loop
(unclamped images, generator ranges, small crops), as a module that moves, casts, copies and
saves like one; the distorted image first in every call; one default distance; messages that
name Python parameters."""
import copy
import inspect
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zsiqa import PerceptualLoss, Scorer
from zsiqa.cli import FLAGS
from zsiqa.errors import UserError
from zsiqa.images import image_tensor


def _pair(seed, shape=(1, 3, 224, 232), noise=0.2):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(shape, generator=gen)
    return ref + noise * torch.randn(shape, generator=gen), ref  # the distorted one not clamped


class Restorer(torch.nn.Module):
    """A model being trained that holds its loss, as training code does."""

    def __init__(self, criterion):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.criterion = criterion


def test_unclamped_adam_loop_lowers_the_loss(tiny):
    dis, ref = _pair(0)
    x = dis.clone().requires_grad_(True)
    assert x.min() < 0 and x.max() > 1  # outside [0, 1] from the start, as an optimised image drifts
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    opt = torch.optim.Adam([x], lr=0.01)
    values = []
    for _ in range(6):
        opt.zero_grad()
        loss = criterion(x, ref)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < 0.5 * values[0] and min(values) < values[0], values


def test_values_outside_unit_range_are_scored_as_given(tiny):
    """The network takes any values: a loss value, not a refusal, and equal to the backbone's
    distance of those very values (the Scorer, a measuring instrument, still refuses them)."""
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    ref = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    brighter = ref * 1.3
    value = criterion(brighter, ref).item()
    feats = [criterion.features(x) for x in (brighter, ref)]
    want = sum((a - b).pow(2).flatten(2).mean(-1).sum(1) for a, b in zip(*feats)).item()
    assert value == pytest.approx(want, rel=1e-5) and value > 0
    with pytest.raises(UserError, match=r", 1\.29999\d+\]"):  # the actual maximum, not a rounded 1.3
        Scorer(tiny[0], "l2", device="cpu", weights=tiny[1])(brighter[0], ref[0])


def test_generator_range_maps_to_unit_range(tiny):
    dis, ref = _pair(2, noise=0.05)
    dis = dis.clamp(0, 1)
    plain = PerceptualLoss(tiny[0], "wsd", weights=tiny[1], device="cpu")
    signed = PerceptualLoss(tiny[0], "wsd", weights=tiny[1], device="cpu", input_range=(-1, 1))
    assert signed(dis * 2 - 1, ref * 2 - 1).item() == pytest.approx(plain(dis, ref).item(), rel=1e-5)
    for bad in ((1, -1), (0, float("inf")), (0,), "0,1", (0, True), (-1e-300, 1e-300), (0, 1e39)):
        with pytest.raises(UserError, match="input_range"):
            PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu", input_range=bad)
    numpy_bounds = PerceptualLoss(tiny[0], "wsd", weights=tiny[1], device="cpu",
                                  input_range=(np.float32(-1), np.int64(1)))
    assert numpy_bounds(dis * 2 - 1, ref * 2 - 1).item() == pytest.approx(plain(dis, ref).item(), rel=1e-5)


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.bfloat16()])
def test_a_16_bit_range_survives_a_16_bit_cast(tiny, cast):
    """input_range=(0, 65535) on a module cast to float16: the span stays 65535 (it was cast to
    float16's inf, and every image mapped to 0: a zero loss without a warning)."""
    dis, ref = _pair(6, noise=0.05)
    dis = dis.clamp(0, 1)
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu", input_range=(0, 65535))
    want = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")(dis, ref).item()
    assert criterion(dis * 65535, ref * 65535).item() == pytest.approx(want, rel=1e-5)
    assert cast(criterion)(dis * 65535, ref * 65535).item() == pytest.approx(want, rel=0.05)


def test_meta_tensors_are_refused_in_one_line(tiny):
    meta = torch.empty(1, 3, 224, 224, device="meta")
    with pytest.raises(UserError, match="meta device"):
        PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")(meta, meta)
    with pytest.raises(UserError, match="meta device"):
        Scorer(tiny[0], "l2", weights=tiny[1], device="cpu")(meta[0], meta[0])


def test_small_crops_with_resize(tiny):
    dis, ref = _pair(3, shape=(2, 3, 160, 160), noise=0.1)
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu", resize=224)
    x = dis.clone().requires_grad_(True)
    value = criterion(x, ref)
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0 and x.grad.shape == (2, 3, 160, 160)
    up = [F.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False) for t in (dis, ref)]
    plain = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    assert value.item() == pytest.approx(plain(*up).item(), rel=1e-6)
    with pytest.raises(UserError, match="resize=224"):
        plain(dis, ref)


def test_a_model_holding_the_loss_saves_no_backbone(tiny):
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    owner = Restorer(criterion)
    assert list(owner.state_dict()) == ["net.weight", "net.bias"]
    assert sum(p.numel() for p in owner.parameters()) == 3 * 3 * 3 * 3 + 3
    assert list(criterion.parameters()) == [] and criterion.state_dict() == {}
    buffer = io.BytesIO()
    torch.save(owner.state_dict(), buffer)
    assert buffer.tell() < 4096
    fresh = Restorer(PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu"))
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))  # strict: it fits
    assert all(not p.requires_grad for p in criterion.backbone.parameters())


def test_a_model_holding_the_loss_pickles_whole(tiny):
    """torch.save(model) and pickle take the loss like any module, its frozen backbone included
    (they raised on a lambda in the weights' lookup), and the copy scores alike."""
    owner = Restorer(PerceptualLoss(tiny[0], "wsd", weights=tiny[1], device="cpu"))
    dis, ref = _pair(7, noise=0.05)
    want = owner.criterion(dis, ref).item()
    buffer = io.BytesIO()
    torch.save(owner, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    assert loaded.criterion(dis, ref).item() == want
    assert pickle.loads(pickle.dumps(owner.criterion))(dis, ref).item() == want


@pytest.mark.parametrize("cast, dtype", [(lambda m: m.to(torch.bfloat16), torch.bfloat16),
                                         (lambda m: m.bfloat16(), torch.bfloat16),
                                         (lambda m: m.half(), torch.float16),
                                         (lambda m: m.double(), torch.float64)])
def test_cast_moves_the_backbone_and_runs_in_that_dtype(tiny, cast, dtype):
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    want = criterion(*_pair(4, noise=0.05)).item()
    assert cast(criterion) is criterion
    assert {p.dtype for p in criterion.backbone.parameters()} == {dtype}
    x, ref = _pair(4, noise=0.05)
    x.requires_grad_(True)
    value = criterion(x, ref)
    value.backward()
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)  # distances: float32 at least
    assert torch.isfinite(x.grad).all()
    assert value.item() == pytest.approx(want, rel=0.05 if dtype in (torch.float16, torch.bfloat16) else 1e-6)
    criterion.to("cpu").float()
    assert criterion(*_pair(4, noise=0.05)).item() == pytest.approx(want, rel=0.05)


def test_clip_module_cast_to_bfloat16(checkpoint):
    """CLIP's LayerNorms compute in float32: a cast module keeps doing so (it raised a
    mixed-dtype error), and its value stays close to float32's."""
    criterion = PerceptualLoss("clip_vitb32", "l2", weights=checkpoint("clip_vitb32"), device="cpu")
    dis, ref = _pair(5, noise=0.05)
    want = criterion(dis, ref).item()
    assert criterion.to(torch.bfloat16)(dis, ref).item() == pytest.approx(want, rel=0.05)


def test_clip_module_cast_to_double_runs_in_float64(checkpoint):
    """.double() is float64 throughout, CLIP's float32 LayerNorms included (they cast float64
    down, so finite differences of the loss were float32 noise and gradcheck failed)."""
    criterion = PerceptualLoss("clip_vitb32", "l2", weights=checkpoint("clip_vitb32"), device="cpu").double()
    dis, ref = (t.double() for t in _pair(8, noise=0.05))
    direction = torch.randn(dis.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    step = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: criterion(dis + s * direction, ref), (step,), eps=1e-6, atol=1e-7,
                                    rtol=1e-4)


def test_train_mode_and_copy(tiny):
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu").train()
    assert criterion.training and not criterion.backbone.training
    twin = copy.deepcopy(criterion)
    pair = _pair(6)
    assert twin(*pair).item() == pytest.approx(criterion(*pair).item(), rel=1e-6)
    max(twin.backbone.parameters(), key=torch.numel).data.mul_(1.5)  # the copy has a backbone of its own
    assert twin(*pair).item() != pytest.approx(criterion(*pair).item(), rel=1e-6)


@pytest.mark.parametrize("member", ["__call__", "score", "layer_scores", "maps", "window_maps"])
def test_the_distorted_image_comes_first(member):
    names = list(inspect.signature(getattr(Scorer, member)).parameters)
    assert names[1:3] == ["dis", "ref"], (member, names)


def test_loss_forward_takes_the_distorted_image_first():
    assert list(inspect.signature(PerceptualLoss.forward).parameters)[1:3] == ["dis", "ref"]


def test_the_reference_is_the_second_argument(tiny, tmp_path, monkeypatch):
    """Behaviour, not only names: a reference shared by three distorted images is encoded once,
    whichever way the images are given (positional or keyword)."""
    from helpers import random_image
    ref = random_image(tmp_path / "r.png", 230, 224, 0)
    dises = [random_image(tmp_path / f"d{k}.png", 230, 224, k + 1) for k in range(3)]
    scorer = Scorer(tiny[0], "l2", device="cpu", weights=tiny[1])
    encoded = []
    original = scorer.encode
    monkeypatch.setattr(scorer, "encode", lambda w: encoded.append(w.shape[0]) or original(w))
    positional = scorer(dises, [ref] * 3)
    assert sum(encoded) == 8  # two windows each: 3 distorted images and the reference once (not 12)
    encoded.clear()
    assert torch.equal(scorer(ref=[ref] * 3, dis=dises), positional) and sum(encoded) == 8


def test_the_loss_takes_its_options_by_name():
    """PerceptualLoss(model, distance, <weights>) read the third argument as weights where the
    Scorer reads its device: the options are keyword-only, so neither is taken for the other."""
    params = list(inspect.signature(PerceptualLoss).parameters.values())
    assert [p.name for p in params[:2]] == ["model", "distance"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:]) and len(params) > 2
    assert list(inspect.signature(Scorer).parameters)[2] == "device"


def test_one_default_distance():
    cli_default = FLAGS["distance"][1]["default"]
    assert inspect.signature(Scorer).parameters["distances"].default == cli_default == "wsd"
    loss_default = inspect.signature(PerceptualLoss).parameters["distance"].default
    assert loss_default == "l2" and "not the Scorer's wsd" in PerceptualLoss.__doc__  # the stated reason


@pytest.mark.parametrize("build", [lambda m, w: Scorer(m, "cos", device="cpu", weights=w, layers="1"),
                                   lambda m, w: PerceptualLoss(m, "cos", device="cpu", weights=w, layers="1")])
def test_an_embedding_has_no_blocks_to_choose(tiny, build):
    """The loss refuses `layers` on an embedding as the Scorer does (it took layers='1' silently)."""
    name, weights = tiny
    with pytest.raises(UserError, match="no blocks to choose"):
        build("embed_" + name, weights)


def test_messages_name_python_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("ZSIQA_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("ZSIQA_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError) as e:
        Scorer("dinov1", "l2", device="cpu")
    assert "weights=" in str(e.value)
    with pytest.raises(UserError, match="device 'mps'"):
        Scorer("dinov1", "l2", device="mps")
    with pytest.raises(UserError, match=r"got \[0.0, 1.0000004\]"):  # float32 1.0000003: its actual maximum
        image_tensor(torch.tensor([0.0, 1.0000003]).repeat(3 * 224 * 112).view(3, 224, 224))


@pytest.mark.parametrize("case, match", [("small", "under 224"), ("missing", "image not found"),
                                         ("sizes", "sizes differ"), ("distance", "unknown distance")])
def test_score_command_checks_its_input_before_reading_weights(tiny, tmp_path, capsys, monkeypatch, case, match):
    import run_single_img
    from helpers import fails_one_line, random_image
    from zsiqa import extractor
    monkeypatch.setattr(extractor, "resolve_weights", lambda *a, **k: pytest.fail("the weights were looked for"))
    ref = random_image(tmp_path / "r.png", 300, 300, 0) if case != "small" else random_image(tmp_path / "r.png", 200,
                                                                                              300, 0)
    dis = {"small": random_image(tmp_path / "s.png", 200, 300, 1), "missing": str(tmp_path / "nope.png"),
           "sizes": random_image(tmp_path / "z.png", 300, 290, 1), "distance": ref}[case]
    args = ["-ref", ref, "-dis", dis, "-m", tiny[0], "--weights", tiny[1], "--device", "cpu",
            "-d", "nope" if case == "distance" else "l2"]
    fails_one_line(capsys, lambda: run_single_img.main(args), match)


def test_training_example_runs(checkpoint):
    """examples/loss_example.py as the README shows it: a few unclamped steps, no backbone saved."""
    import subprocess
    import sys

    from helpers import ROOT
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "loss_example.py"), "--steps", "3", "--every", "1",
                           "-m", "clip_vitb32", "--weights", checkpoint("clip_vitb32")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    losses = [float(line.split()[3]) for line in lines if line.startswith("step")]
    assert len(losses) == 3 and all(v == v and v > 0 for v in losses)
    assert "resized to 224 in the loss" in lines[0] and "(no backbone)" in lines[-1]
    assert int(lines[-1].split(",")[1].split()[0]) < 100  # KiB: the CNN alone
