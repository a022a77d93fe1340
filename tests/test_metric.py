"""A metric shaped like its peers (pyiqa, piq, lpips, torchmetrics): the Scorer as a torch module,
float32 scores, creation by one name, `lower_better`, input ranges and grey tensors, a
torchmetrics Metric synced across processes, and one core behind the Scorer, the maps and the loss."""
import copy
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import zsiqa
from zsiqa import engine
from zsiqa.core import MetricCore
from zsiqa.distances import DISTANCES
from zsiqa.errors import UserError
from zsiqa.images import load_image
from zsiqa.loss import PerceptualLoss
from zsiqa.models import BACKBONES
from zsiqa.scorer import Scorer
from zsiqa.windows import windows

ALL = ["l2", "cos", "skld", "jsd", "wsd", "swd"]


def _images(seed, n=2, size=(3, 224, 260)):
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand((n, *size), generator=gen)
    return (ref + 0.1 * torch.rand((n, *size), generator=gen)).clamp(0, 1), ref


def _by_hand(scorer, dis, ref, d):
    """A pair's score from the backbone's features and the registry's formula, in float64:
    the mean over windows of the per-window distance (independent of the engine)."""
    wd, wr = windows(dis), windows(ref)
    per = [float(DISTANCES[d](scorer.extractor(wd[k:k + 1]), scorer.extractor(wr[k:k + 1]))) for k in range(len(wd))]
    return float(np.mean(per))


class Holder(torch.nn.Module):
    """A user's model that holds a metric, as it would hold an lpips or piq module."""

    def __init__(self, metric):
        super().__init__()
        self.net = torch.nn.Conv2d(3, 3, 1)
        self.metric = metric


# ---------------------------------------------------------------- a torch module

def test_scorer_is_a_module_without_its_backbone_in_the_tree(tiny):
    name, weights = tiny
    scorer = Scorer(name, "l2", device="cpu", weights=weights)
    assert isinstance(scorer, torch.nn.Module)
    assert scorer.state_dict() == {} and list(scorer.parameters()) == []
    owner = Holder(scorer)
    assert list(owner.state_dict()) == ["net.weight", "net.bias"]
    assert owner.to("cpu").eval() is owner and not scorer.training and not scorer.extractor.model.training
    owner.train()
    assert scorer.training and not scorer.extractor.model.training  # the backbone stays in eval mode
    dis, ref = _images(0)
    want = scorer(dis, ref)
    for copied in (copy.deepcopy(owner).metric, pickle.loads(pickle.dumps(owner)).metric):
        assert torch.equal(copied(dis, ref), want)


def test_casts_mean_the_precision(tiny):
    """.bfloat16() runs the backbone in bfloat16 (scores still float32); .double() in float64
    with float64 scores; .float() back to float32."""
    name, weights = tiny
    dis, ref = _images(1, n=1)
    scorer = Scorer(name, "l2", device="cpu", weights=weights)
    want = _by_hand(scorer, dis[0], ref[0], "l2")
    half = copy.deepcopy(scorer).bfloat16()
    assert {p.dtype for p in half.extractor.model.parameters()} == {torch.bfloat16} and half.precision == "bf16"
    got = half(dis, ref)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(want, rel=0.1)
    double = scorer.double()
    assert {p.dtype for p in double.extractor.model.parameters()} == {torch.float64}
    got = double(dis, ref)
    assert got.dtype == torch.float64 and got.item() == pytest.approx(want, rel=1e-4)
    assert scorer.float()(dis, ref).dtype == torch.float32 and scorer.settings["precision"] == "fp32"


# ---------------------------------------------------------------- float32 scores

def test_scores_are_float32_unless_float64_is_asked_for(tiny):
    name, weights = tiny
    dis, ref = _images(2)
    plain = Scorer(name, ALL, device="cpu", weights=weights)
    wide = Scorer(name, ALL, device="cpu", weights=weights, dtype=torch.float64)
    got, full = plain(dis, ref), wide(dis, ref)
    for d in ALL:
        assert got[d].dtype == torch.float32 and full[d].dtype == torch.float64, d
        assert torch.equal(got[d], full[d].float()), d
        np.testing.assert_allclose(full[d].numpy(), [_by_hand(plain, a, b, d) for a, b in zip(dis, ref)],
                                   rtol=1e-5, err_msg=d)
    assert plain.layer_scores(dis, ref)["l2"].dtype == torch.float32
    with pytest.raises(UserError, match="dtype"):
        Scorer(name, "l2", device="cpu", weights=weights, dtype=torch.float16)


# ---------------------------------------------------------------- input ranges, grey tensors

def test_input_range_maps_float_tensors(tiny):
    name, weights = tiny
    dis, ref = _images(3)
    want = Scorer(name, "wsd", device="cpu", weights=weights)(dis, ref)
    signed = Scorer(name, "wsd", device="cpu", weights=weights, input_range=(-1, 1))
    np.testing.assert_allclose(signed(dis * 2 - 1, ref * 2 - 1).numpy(), want.numpy(), rtol=1e-5)
    with pytest.raises(UserError, match=r"\[0, 1\]"):  # -1 lies outside the default range
        Scorer(name, "wsd", device="cpu", weights=weights)(dis * 2 - 1, ref * 2 - 1)
    with pytest.raises(UserError, match="input_range"):
        Scorer(name, "wsd", device="cpu", weights=weights, input_range=(1, -1))


def test_grey_tensors_score_as_grey_files(tiny, tmp_path):
    """A 1-channel tensor is the grey image a grey ('L') file is: the same numbers as the file."""
    name, weights = tiny
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (230, 250), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    files = [str(tmp_path / f"{k}.png") for k in "ab"]
    for arr, path in zip((a, b), files):
        Image.fromarray(arr, mode="L").save(path)
    scorer = Scorer(name, ALL, device="cpu", weights=weights)
    want = scorer(files[0], files[1])
    ta, tb = (torch.from_numpy(x)[None] for x in (a, b))
    for got in (scorer(ta, tb), scorer(ta.float() / 255, tb.float() / 255), scorer(ta[None], tb[None])):
        for d in ALL:
            assert torch.equal(got[d], want[d]), d


def test_the_loss_takes_grey_tensors(tiny):
    dis, ref = _images(4, n=1)
    criterion = PerceptualLoss(tiny[0], "l2", weights=tiny[1], device="cpu")
    grey = criterion(dis[:, :1], ref[:, :1])
    assert grey.item() == pytest.approx(criterion(dis[:, :1].expand(-1, 3, -1, -1),
                                                  ref[:, :1].expand(-1, 3, -1, -1)).item(), rel=1e-6)


# ---------------------------------------------------------------- one name

def test_list_metrics_is_every_backbone_with_every_distance(tiny):
    names = zsiqa.list_metrics()
    want = {f"{b}_{d}" for b, entry in BACKBONES.items() for d in entry.distances}
    assert set(names) == want and len(names) == len(want)
    assert {"dinov1_wsd", "clip_vitb32_l2", "embed_dinov1_cos", "clip_rn50_cos", "tiny_vit_test_swd"} <= set(names)
    assert "embed_dinov1_l2" not in names and "clip_rn50_wsd" not in names


def test_create_metric_is_the_scorer_or_the_loss(tiny):
    name, weights = tiny
    dis, ref = _images(6)
    metric = zsiqa.create_metric(f"{name}_wsd", device="cpu", weights=weights)
    assert isinstance(metric, Scorer) and metric.name == f"{name}_wsd" and metric.lower_better is True
    assert torch.equal(metric(dis, ref), Scorer(name, "wsd", device="cpu", weights=weights)(dis, ref))
    embed = zsiqa.create_metric(f"embed_{name}_cos", device="cpu", weights=weights)
    assert embed.backbone.name == f"embed_{name}" and embed.distances == ("cos",)
    loss = zsiqa.create_metric(f"{name}_l2", as_loss=True, device="cpu", weights=weights)
    assert isinstance(loss, PerceptualLoss) and loss.lower_better is True and loss.name == f"{name}_l2"
    x = dis.clone().requires_grad_(True)
    value = loss(x, ref)
    value.backward()
    assert x.grad.abs().sum() > 0
    assert value.item() == pytest.approx(Scorer(name, "l2", device="cpu", weights=weights)(dis, ref).mean().item(),
                                         rel=1e-5)
    for bad, match in [("dinov1", "unknown metric"), ("nomodel_wsd", "unknown metric"),
                       (f"embed_{name}_wsd", "does not apply"), (7, "a string")]:
        with pytest.raises(UserError, match=match):
            zsiqa.create_metric(bad)


# ---------------------------------------------------------------- torchmetrics

def test_torch_metric_is_the_mean_of_the_scores(tiny):
    pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (pip install zsiqa[torchmetrics])")
    import torchmetrics
    name, weights = tiny
    metric = zsiqa.TorchMetric(f"{name}_l2", device="cpu", weights=weights)
    assert isinstance(metric, torchmetrics.Metric) and metric.state_dict() == {}
    scorer = Scorer(name, "l2", device="cpu", weights=weights, dtype=torch.float64)
    scores = []
    for seed, n in ((7, 2), (8, 3)):
        dis, ref = _images(seed, n=n)
        metric.update(dis, ref)
        scores += scorer(dis, ref).tolist()
    got = metric.compute()
    assert got.dtype == torch.float32 and got.item() == pytest.approx(float(np.mean(scores)), rel=1e-6)
    metric.reset()
    with pytest.raises(UserError, match="before any update"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' own warning of the same
        metric.compute()


def test_importing_zsiqa_leaves_torchmetrics_out():
    import subprocess
    import sys
    code = "import sys, zsiqa; zsiqa.Scorer; zsiqa.create_metric; print('torchmetrics' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _synced_worker(rank, world, rendezvous, weights, folder):
    """One process of a two-process gloo group: its own pairs, the synced mean saved."""
    import torch.distributed as dist

    from tinymodel import register_tiny
    from zsiqa import models
    register_tiny(models.BACKBONES)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        metric = zsiqa.TorchMetric("tiny_vit_test_l2", device="cpu", weights=weights)
        metric.update(*_images(20 + rank, n=rank + 1))  # 1 and 2 pairs: a mean of means would differ
        torch.save(metric.compute(), os.path.join(folder, f"{rank}.pt"))
        dist.barrier()  # neither process tears the group down while the other is still in a collective
    finally:
        dist.destroy_process_group()


def test_torch_metric_syncs_across_processes(tiny, tmp_path):
    pytest.importorskip("torchmetrics", reason="torchmetrics is not installed (pip install zsiqa[torchmetrics])")
    import torch.multiprocessing as mp
    name, weights = tiny
    rendezvous = tmp_path / "rendezvous"  # a file, not a TCP port another test could take meanwhile
    mp.spawn(_synced_worker, args=(2, str(rendezvous), weights, str(tmp_path)), nprocs=2, join=True)
    scorer = Scorer(name, "l2", device="cpu", weights=weights, dtype=torch.float64)
    every = torch.cat([scorer(*_images(20 + rank, n=rank + 1)) for rank in range(2)])
    assert len(every) == 3
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got.item() == pytest.approx(every.mean().item(), rel=1e-6), rank


# ---------------------------------------------------------------- one core

def test_the_engine_runs_from_a_spec_without_a_scorer(tiny, tmp_path):
    """engine.run takes a Spec of values and functions (here a bare MetricCore's): the same
    scores as the Scorer, so the engine needs nothing of the Scorer itself."""
    from zsiqa.loading import Chunk
    name, weights = tiny
    dis, ref = _images(9, n=2)
    core = MetricCore(name, ALL, weights=weights, device="cpu")
    spec = engine.Spec(device=torch.device("cpu"), batch_size=3, fixed_batch=False, overlap=False, resized=False,
                       cached_windows=100, columns=len(ALL), layer_columns=0, encode=core.encode,
                       window_scores=core.window_scores)
    chunks = [Chunk(k, ref[k], [dis[k]], [k]) for k in range(2)]
    got = dict(engine.run(spec, chunks))
    want = Scorer(name, ALL, device="cpu", weights=weights, dtype=torch.float64)(dis, ref)
    for j, d in enumerate(ALL):
        np.testing.assert_allclose([got[k][j] for k in range(2)], want[d].numpy(), rtol=1e-6, err_msg=d)


def test_map_terms_are_the_distance_terms(tiny, tmp_path):
    """l2's and cos's maps are their registry terms laid out: per token, the mean over channels of
    the squared difference and 1 − cosine, computed here by hand from the features."""
    from helpers import random_image
    name, weights = tiny
    scorer = Scorer(name, "l2,cos", device="cpu", weights=weights)
    ref, dis = random_image(tmp_path / "r.png", 224, 224, 0), random_image(tmp_path / "d.png", 224, 224, 1)
    fd, fr = scorer.extractor(windows(load_image(dis))), scorer.extractor(windows(load_image(ref)))  # [1, L, T, D]
    maps = scorer.window_maps(dis, ref)
    terms = {"l2": ((fd - fr) ** 2).mean(-1).sum(1)[0],
             "cos": (1 - torch.nn.functional.cosine_similarity(fd, fr, dim=-1)).sum(1)[0]}  # [T]
    for d, t in terms.items():
        patches = t[1:].reshape(14, 14) + t[0] / 196  # the class token's share spread evenly
        want = patches.repeat_interleave(16, 0).repeat_interleave(16, 1) * 196 / 197
        np.testing.assert_allclose(maps[d][0].numpy(), want.numpy(), rtol=1e-4, atol=1e-7, err_msg=d)
