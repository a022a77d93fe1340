"""The batched engine against a plain one-pair, one-window-at-a-time loop (tiny backbone)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import random_image
from zsiqa.distances import DISTANCES
from zsiqa.images import load_image
from zsiqa.scorer import Scorer
from zsiqa.windows import windows

ALL = ["l2", "cos", "skld", "jsd", "wsd", "swd"]
# ZSIQA_TEST_DEVICE=cuda runs these on a GPU (strict fp32): streams, fused kernels, compilation
ON = {"device": os.environ.get("ZSIQA_TEST_DEVICE", "cpu"), "precision": "fp32"}


@pytest.fixture
def mixed_set(tmp_path):
    """(dis, ref) pairs, the API's order: three references of different sizes, 2-3 distorted
    images each, refs interleaved."""
    sizes = [(224, 224), (300, 260), (450, 240)]
    refs = [random_image(tmp_path / f"r{i}.png", w, h, i) for i, (w, h) in enumerate(sizes)]
    pairs = []
    for j in range(8):
        i = j % 3
        pairs.append((random_image(tmp_path / f"d{j}.png", *sizes[i], 100 + j), refs[i]))
    return pairs


def _loop(scorer, pairs):
    """The straightforward path: one pair at a time, one window per forward pass."""
    out = []
    for dis, ref in pairs:
        wr, wd = windows(load_image(ref)), windows(load_image(dis))
        per = [[DISTANCES[d](scorer.extractor(wd[k:k + 1]), scorer.extractor(wr[k:k + 1])).item()
                for d in scorer.distances] for k in range(wr.shape[0])]
        out.append(np.mean(per, axis=0))
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
def test_engine_equals_one_pair_loop(tiny, mixed_set, batch_size):
    name, weights = tiny
    scorer = Scorer(name, ALL, **ON, weights=weights, batch_size=batch_size)
    want = _loop(scorer, mixed_set)
    got = scorer(*zip(*mixed_set))
    for j, d in enumerate(ALL):
        np.testing.assert_allclose(got[d].numpy(), want[:, j], rtol=1e-5, atol=1e-7, err_msg=d)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_score_files_equals_api(tiny, mixed_set, workers):
    name, weights = tiny
    scorer = Scorer(name, "l2,wsd", **ON, weights=weights, batch_size=5, workers=workers)
    api = scorer(*zip(*mixed_set))
    rows = {i: r for (_, i), r in scorer.score_files(mixed_set)}
    assert sorted(rows) == list(range(len(mixed_set)))
    got = np.array([rows[i] for i in range(len(mixed_set))])
    np.testing.assert_allclose(got[:, 0], api["l2"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[:, 1], api["wsd"].numpy(), rtol=1e-6)


def test_input_forms_agree(tiny, mixed_set):
    name, weights = tiny
    metric = Scorer(name, "cos", **ON, weights=weights)
    dis, ref = mixed_set[1]
    by_path = metric(dis, ref)
    assert by_path.shape == (1,)  # one distance name → a tensor
    by_pil = metric(Image.open(dis), Image.open(ref))
    by_tensor = metric(load_image(dis), load_image(ref))
    by_batch = metric(load_image(dis)[None].repeat(2, 1, 1, 1), load_image(ref)[None].repeat(2, 1, 1, 1))
    assert torch.allclose(by_pil, by_path) and torch.allclose(by_tensor, by_path)
    assert by_batch.shape == (2,) and torch.allclose(by_batch, by_path.expand(2))


@pytest.mark.slow
def test_reference_encoded_once_per_run(tiny, mixed_set, monkeypatch):
    name, weights = tiny
    scorer = Scorer(name, "l2", **ON, weights=weights, batch_size=4)
    seen = []
    encode = scorer.encode
    monkeypatch.setattr(scorer, "encode", lambda w: seen.append(w.shape[0]) or encode(w))
    list(scorer.score_files(mixed_set))
    n_windows = sum(windows(load_image(d)).shape[0] for d, _ in mixed_set)
    n_ref_windows = sum(windows(load_image(r)).shape[0] for r in {r for _, r in mixed_set})
    assert sum(seen) == n_windows + n_ref_windows
    assert max(seen) <= 4


def test_embed_variant_runs_and_is_bounded(tiny, mixed_set):
    name, weights = tiny
    got = Scorer("embed_" + name, "cos", **ON, weights=weights)(*zip(*mixed_set))
    assert torch.all((got >= 0) & (got <= 2))


def test_api_refuses_tensors_outside_unit_range(tiny):
    from zsiqa.errors import UserError
    name, weights = tiny
    metric = Scorer(name, "l2", **ON, weights=weights)
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        metric(torch.full((3, 224, 224), 255.0), torch.zeros(3, 224, 224))
    with pytest.raises(UserError, match="3 distorted images but 2 references"):
        metric([torch.zeros(3, 224, 224)] * 3, [torch.zeros(3, 224, 224)] * 2)
    assert metric(torch.zeros(3, 224, 224, dtype=torch.uint8), torch.zeros(3, 224, 224)).item() == 0.0


# ---------------------------------------------------------------- trust: inputs that used to give wrong numbers

@pytest.mark.slow
def test_mixed_bit_depths_share_a_batch_correctly(tiny, tmp_path):
    """An 8-bit and a 16-bit image in one forward batch: each is scaled to [0, 1] on its own
    (the 16-bit copy of an 8-bit grey image scores as the 8-bit one does, at any batch size)."""
    name, weights = tiny
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (240, 250), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "ref8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "dis16.png")  # the same picture, 16 bits
    Image.fromarray(np.clip(grey.astype(int) + 9, 0, 255).astype(np.uint8)).save(tmp_path / "dis8.png")
    ref = str(tmp_path / "ref8.png")
    pairs = [(str(tmp_path / "dis16.png"), ref), (str(tmp_path / "dis8.png"), ref)]
    one = {i: r for (_, i), r in Scorer(name, "l2,cos", **ON, weights=weights, batch_size=1).score_files(pairs)}
    big = {i: r for (_, i), r in Scorer(name, "l2,cos", **ON, weights=weights, batch_size=64).score_files(pairs)}
    assert abs(one[0][0]) < 1e-9 and abs(big[0][0]) < 1e-9  # identical pictures: distance 0 (to rounding)
    np.testing.assert_allclose(big[1], one[1], rtol=1e-5)  # batch 1 and 64 differ in float rounding on a GPU
    metric = Scorer(name, "l2", **ON, weights=weights)
    ref8 = torch.from_numpy(np.repeat(grey[None], 3, 0))
    noisy = (ref8.float() / 255 + 0.02).clamp(0, 1)
    assert metric(noisy, ref8).item() == pytest.approx(metric(noisy, ref8.float() / 255).item(), rel=1e-5)


def test_api_input_types(tiny, tmp_path):
    from zsiqa.errors import UserError
    name, weights = tiny
    metric = Scorer(name, "l2", **ON, weights=weights)
    rng = np.random.default_rng(4)
    a8 = rng.integers(0, 256, (230, 240, 3), dtype=np.uint8)
    b8 = np.clip(a8.astype(int) + 15, 0, 255).astype(np.uint8)
    want = metric(Image.fromarray(a8), Image.fromarray(b8)).item()
    assert metric(a8, b8).item() == pytest.approx(want, rel=1e-6)                 # numpy HWC uint8 as PIL
    ta, tb = (torch.from_numpy(x).permute(2, 0, 1).contiguous() for x in (a8, b8))
    assert metric(ta, tb).item() == pytest.approx(want, rel=1e-6)                 # uint8 tensors / 255
    t16 = (ta.to(torch.int32) * 257).to(torch.uint16)
    assert metric(t16, tb).item() == pytest.approx(want, rel=1e-5)                # uint16 tensors / 65535
    for bad, match in [(ta.long(), "ambiguous"), (torch.full((3, 230, 240), float("nan")), "NaN"),
                       (None, "cannot score a NoneType"), (a8.astype(np.float64), "numpy images"), (7, "cannot score")]:
        with pytest.raises(UserError, match=match):
            metric(bad, tb if torch.is_tensor(bad) else b8)
    for kwargs, match in [({"batch_size": 2.5}, "batch size"), ({"batch_size": 0}, "batch size"),
                          ({"workers": -1}, "workers"), ({"resize": 0}, "resize"), ({"resize": -5}, "resize")]:
        with pytest.raises(UserError, match=match):
            Scorer(name, "l2", **ON, weights=weights, **kwargs)
    assert metric.score(ta, tb).keys() == {"l2"} and metric.lower_better is True


def test_large_reference_compared_block_by_block(tiny, monkeypatch):
    """A reference over the cache budget is compared per block of window positions: same
    scores, and never more than a block's reference windows cached at once."""
    name, weights = tiny
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(3, 700, 650, generator=g)
    dises = [(ref + s * torch.rand(3, 700, 650, generator=g)).clamp(0, 1) for s in (0.05, 0.1, 0.2)]
    cached = Scorer(name, ALL, **ON, weights=weights)(dises, [ref] * 3)
    blocky = Scorer(name, ALL, **ON, weights=weights, cache_mb=1)
    sizes = blocky.group_sizes  # pretend a window's features take a third of the 1 MB budget: blocks of 2
    monkeypatch.setattr(blocky.extractor, "probe", lambda: (sizes, 2**20 // 3 + 1))
    assert blocky.cached_windows == 2
    from zsiqa import engine
    reserved = []
    original = engine.SlotPool.reserve
    monkeypatch.setattr(engine.SlotPool, "reserve", lambda self, n: reserved.append(n) or original(self, n))
    got = blocky(dises, [ref] * 3)
    assert max(reserved) == 2 and sum(reserved) == 16  # 4×4 windows, one reference encoding
    for d in ALL:
        np.testing.assert_allclose(got[d].numpy(), cached[d].numpy(), rtol=1e-6, err_msg=d)


def test_unreadable_body_mid_run(tiny, mixed_set, tmp_path):
    """A file whose header reads but whose body is cut: with on_error the pair is reported
    and skipped, the others scored; without, UserError after the pairs before it."""
    from zsiqa.errors import UserError
    name, weights = tiny
    cut = tmp_path / "cut.png"
    data = open(mixed_set[4][0], "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    pairs = list(mixed_set)
    pairs[4] = (str(cut), pairs[4][1])
    scorer = Scorer(name, "l2", **ON, weights=weights)
    failed = []
    rows = {i: r for (_, i), r in scorer.score_files(pairs, on_error=lambda job, msg: failed.append((job, msg)))}
    assert [job for job, _ in failed] == [(0, 4)] and "cut.png" in failed[0][1]
    assert sorted(rows) == [i for i in range(len(pairs)) if i != 4]
    api = scorer(*zip(*mixed_set))
    np.testing.assert_allclose([rows[i][0] for i in sorted(rows)], np.delete(api.numpy(), 4), rtol=1e-6)
    done = []
    with pytest.raises(UserError, match="cut.png"):
        for job, _ in scorer.score_files(pairs):
            done.append(job)
    assert (0, 4) not in done


def test_fixed_batch_padding_changes_nothing(tiny, mixed_set):
    """A compiled backbone gets fixed-shape batches: short batches are padded with blank
    windows whose features are dropped (the same code runs here on a CPU)."""
    name, weights = tiny
    plain = Scorer(name, ALL, **ON, weights=weights, batch_size=5)
    padded = Scorer(name, ALL, **ON, weights=weights, batch_size=5)
    padded.fixed_batch = True
    shapes = []
    encode = padded.encode
    padded.encode = lambda w: shapes.append(w.shape[0]) or encode(w)
    dises, refs = (list(x) for x in zip(*mixed_set))
    a, b = plain(dises, refs), padded(dises, refs)
    assert set(shapes) == {5}
    for d in ALL:
        np.testing.assert_allclose(b[d].numpy(), a[d].numpy(), rtol=1e-6, err_msg=d)


@pytest.mark.slow
def test_compiled_backbone_gives_the_same_scores(tiny, mixed_set):
    """compile=True (torch.compile, fixed-shape batches): the same numbers as eager. On this
    CPU it only proves the path; on a GPU bench.py measures what it gains."""
    name, weights = tiny
    dises, refs = (list(x) for x in zip(*mixed_set[:4]))
    eager = Scorer(name, ALL, **ON, weights=weights, batch_size=6)(dises, refs)
    compiled = Scorer(name, ALL, **ON, weights=weights, batch_size=6, compile=True)
    assert compiled.fixed_batch
    got = compiled(dises, refs)
    for d in ALL:
        np.testing.assert_allclose(got[d].numpy(), eager[d].numpy(), rtol=1e-5, atol=1e-8, err_msg=d)


def test_api_refuses_bad_distance_lists_and_seeds(tiny):
    from zsiqa.errors import UserError
    name, weights = tiny
    for kwargs, match in [({"distances": None}, "distances must be"), ({"distances": ["l2", 3]}, "distances must be"),
                          ({"model_norm": "no"}, "True or False"),
                          ({"swd_seed": 2**64}, "below 2\\*\\*63")]:
        with pytest.raises(UserError, match=match):
            Scorer(name, **{"distances": "l2", **kwargs}, device="cpu", weights=weights)


@pytest.mark.slow
def test_resize_comes_after_rgb_conversion_for_every_input_kind(tiny, tmp_path):
    """-r N resizes the RGB image (PROTOCOL §1: convert to RGB, then resize), whether the pair
    comes as files, PIL images or tensors: RGBA with transparent pixels and a palette image
    score as their RGB conversions do, and a tensor is resized as its file would be."""
    name, weights = tiny
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (230, 250, 4), dtype=np.uint8)
    rgba[:, :125, 3] = 0  # half transparent: Pillow's RGBA resize would premultiply these away
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.png")
    pal = Image.fromarray(rng.integers(0, 256, (230, 250, 3), dtype=np.uint8)).quantize(64)
    pal.save(tmp_path / "p.png")
    pal.convert("RGB").save(tmp_path / "p_rgb.png")
    sized = Scorer(name, "l2", **ON, weights=weights, resize=256)
    assert sized(str(tmp_path / "a.png"), str(tmp_path / "rgb.png")).item() == 0
    assert sized(str(tmp_path / "p.png"), str(tmp_path / "p_rgb.png")).item() == 0
    plain = Scorer(name, "l2", **ON, weights=weights)

    def by_hand(path):  # convert, then Pillow's bilinear resize, then the unresized scorer
        return torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)))

    want = plain(by_hand(tmp_path / "a.png").permute(2, 0, 1), by_hand(tmp_path / "p.png").permute(2, 0, 1)).item()
    assert want > 0
    tensors = [torch.from_numpy(np.array(Image.open(tmp_path / f).convert("RGB"))).permute(2, 0, 1)
               for f in ("a.png", "p.png")]
    assert sized(str(tmp_path / "a.png"), str(tmp_path / "p.png")).item() == pytest.approx(want, rel=1e-6)
    assert sized(Image.open(tmp_path / "a.png"), Image.open(tmp_path / "p.png")).item() == pytest.approx(want, rel=1e-6)
    assert sized(*tensors).item() == pytest.approx(want, rel=1e-6)  # uint8 tensors: resized as the files
    assert sized(*(t.float() / 255 for t in tensors)).item() == pytest.approx(want, rel=2e-2)  # float: unrounded
    small = torch.rand(3, 100, 120)
    assert Scorer(name, "l2", **ON, weights=weights, resize=224)(small, small).item() == 0  # resized, not refused


def test_every_deep_and_odd_pil_mode_reads(tiny, tmp_path):
    """Big-endian 16-bit TIFF ('I;16B'), PIL images in 'I;16L'/'I;16N'/'La' modes score as
    their plain equivalents; a closed PIL image is one clear error."""
    from zsiqa.errors import UserError
    name, weights = tiny
    grey = (np.random.default_rng(6).integers(0, 65536, (230, 240))).astype(np.uint16)
    Image.fromarray(grey.astype(">u2")).save(tmp_path / "be.tif")
    Image.fromarray(grey).save(tmp_path / "le.png")
    assert Image.open(tmp_path / "be.tif").mode == "I;16B"
    assert torch.equal(load_image(tmp_path / "be.tif"), load_image(tmp_path / "le.png"))
    metric = Scorer(name, "l2", **ON, weights=weights)
    assert metric(str(tmp_path / "be.tif"), str(tmp_path / "le.png")).item() == 0
    for mode in ("I;16L", "I;16N"):  # built from bytes (Pillow's convert() to these modes clips at 255)
        im = Image.frombytes(mode, (240, 230), grey.astype("<u2" if mode == "I;16L" else "=u2").tobytes())
        assert metric(im, str(tmp_path / "le.png")).item() == 0
    la = Image.fromarray(np.random.default_rng(7).integers(0, 256, (230, 240, 2), dtype=np.uint8), "LA")
    assert metric(la.convert("La"), la.convert("La").convert("LA")).item() == 0
    closed = Image.open(tmp_path / "le.png")
    closed.close()
    with pytest.raises(UserError, match="PIL image"):
        metric(closed, str(tmp_path / "le.png"))


def test_api_misuse_is_one_clear_error(tiny, tmp_path):
    """Wrong types and out-of-range values given to the API end in a UserError naming them,
    never a TypeError/IndexError from deep inside (or a silent compile)."""
    from zsiqa.errors import UserError
    from zsiqa.loss import PerceptualLoss
    name, weights = tiny
    for kwargs, match in [({"model": [name]}, "registry name"), ({"device": "mps"}, "unsupported device"),
                          ({"device": "meta"}, "unsupported device"), ({"compile": "no"}, "compile must be"),
                          ({"layers": 2.5}, "layer selection"), ({"layers": {1}}, "layer selection")]:
        with pytest.raises(UserError, match=match):
            Scorer(**{"model": name, "distances": "l2", **ON, "weights": weights, **kwargs})
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            Scorer(name, "l2", device=0, weights=weights)
    blocks = [Scorer(name, "l2", **ON, weights=weights, layers=k).blocks for k in (2, np.int64(2), "2", [2])]
    assert blocks == [(2,)] * 4
    metric = Scorer(name, "l2", **ON, weights=weights)
    img = torch.rand(3, 224, 230)
    with pytest.raises(UserError, match="dense"):
        metric(img.to_sparse(), img)
    pair = (random_image(tmp_path / "a.png", 230, 224, 1), random_image(tmp_path / "b.png", 230, 224, 2))
    for pairs, kwargs in [([pair[0]], {}), ([pair], {"jobs": [(0, 1)]}), ([pair], {"jobs": [(1, 0)]}),
                          ([(pair[0], None)], {})]:
        with pytest.raises(UserError, match="pair|job"):
            list(metric.score_files(pairs, **kwargs))
    assert [i for i, _ in metric.score_files(iter([pair]))] == [(0, 0)]  # any iterable of pairs
    assert [i for i, _ in metric.score_files(np.array([pair]), jobs=((0, k) for k in range(1)))] == [(0, 0)]
    ref, dis = torch.rand(3, 224, 230), torch.rand(3, 224, 230)
    np.testing.assert_array_equal(metric.maps(dis[None], ref[None])["l2"], metric.maps(dis, ref)["l2"])
    with pytest.raises(UserError, match="one pair at a time"):
        metric.maps(torch.stack([dis, dis]), torch.stack([ref, ref]))
    one, empty = torch.rand(1, 3, 224, 224), torch.rand(0, 3, 224, 224)
    for kwargs, images, match in [({}, empty, "empty batch"), ({"swd_seed": "a"}, one, "swd_seed"),
                                  ({"swd_seed": -1}, one, "swd_seed")]:
        with pytest.raises(UserError, match=match):
            PerceptualLoss(name, "swd", weights=weights, device="cpu", **kwargs)(images, images)


def test_a_variant_must_return_two_images(tiny, mixed_set):
    """A caller's transform that returns something else is a TypeError naming the variant (it was an
    AttributeError from deep in the loader), not a pair marked unreadable."""
    name, weights = tiny
    scorer = Scorer(name, "l2", **ON, weights=weights)
    for bad in (lambda r, d: None, lambda r, d: (r,), lambda r, d: (r, np.asarray(d))):
        with pytest.raises(TypeError, match="variant 0 .* must return"):
            list(scorer.score_files(mixed_set[:2], variants=[bad]))
    for good in (lambda r, d: (r, d), lambda r, d: [r, d]):  # a tuple or a list of two images scores
        assert sorted(i for (_, i), _ in scorer.score_files(mixed_set[:2], variants=[good])) == [0, 1]
