"""Images scored as the published code scores them, which a user may not expect: a non-default
EXIF orientation (scored as stored, not rotated) and an animated image (its first frame). The
commands say so once per run, with a count; the numbers stay those of the image as stored."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import run_tiny
from zsiqa.errors import ImageNoteWarning
from zsiqa.images import load_image, pair_problems


def _pixels(seed, w=240, h=232):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rotated_jpeg(path, seed):
    """A JPEG whose EXIF says 'rotate 90° clockwise to view' (orientation 6); returns its path."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_pixels(seed)).save(path, quality=95, exif=exif)
    return str(path)


def _animated_gif(path, seed):
    """A two-frame GIF whose first frame is `_pixels(seed)` quantised; returns its path."""
    frames = [Image.fromarray(_pixels(seed + k)).quantize(64) for k in range(2)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return str(path)


def test_pair_problems_count_each_kind_once(tmp_path):
    """One line per kind for every pair of the run, with the count and an example, and no line
    for plain images."""
    ref = tmp_path / "ref.png"
    Image.fromarray(_pixels(0)).save(ref)
    rotated = [_rotated_jpeg(tmp_path / f"r{k}.jpg", k) for k in range(3)]
    gif = _animated_gif(tmp_path / "a.gif", 7)
    lines = []
    assert pair_problems([(str(ref), p) for p in [*rotated, gif]], warn=lines.append) == [(None, None)] * 4
    assert len(lines) == 2, lines
    assert lines[0].startswith("3 image(s) carry an EXIF orientation") and rotated[0] in lines[0]
    assert lines[1].startswith("1 image(s) are animated") and gif in lines[1]
    quiet = []
    pair_problems([(str(ref), str(ref))], warn=quiet.append)
    assert quiet == []


def test_scored_as_stored_with_a_warning(tmp_path):
    """The API decodes a rotated JPEG as stored (the same pixels as the file without EXIF) and
    an animated GIF as its first frame, each with an ImageNoteWarning."""
    path = _rotated_jpeg(tmp_path / "r.jpg", 3)
    with pytest.warns(ImageNoteWarning, match="not rotated"):
        got = load_image(path)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(_pixels(3)).save(plain, quality=95)
    assert got.shape == (3, 232, 240) and bool((got == load_image(str(plain))).all())
    gif = _animated_gif(tmp_path / "a.gif", 5)
    with pytest.warns(ImageNoteWarning, match="first frame"):
        first = load_image(gif)
    with Image.open(gif) as im:
        want = np.asarray(im.convert("RGB"))
    assert np.allclose(first.permute(1, 2, 0).numpy(), want / 255.0, atol=1e-6)


def test_eval_says_it_once_per_run(tiny, tmp_path, capsys):
    """A label-free eval over several rotated outputs: one warning line with their count, scores
    equal to those of the same pixels without EXIF."""
    gt, out, plain = tmp_path / "GT", tmp_path / "out", tmp_path / "plain"
    for d in (gt, out, plain):
        d.mkdir()
    for k in range(3):
        Image.fromarray(_pixels(10 + k)).save(gt / f"{k}.png")
        _rotated_jpeg(out / f"{k}.jpg", 20 + k)
        Image.fromarray(_pixels(20 + k)).save(plain / f"{k}.jpg", quality=95)
    scores = {}
    for name, folder in (("rot", out), ("plain", plain)):
        assert run_tiny(tiny, "-dat", "dirs", "--ref-dir", str(gt), "--dis-dir", f"{name}={folder}", "-d", "l2",
                        "-sdir", str(tmp_path / f"res_{name}")) == 0
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if "EXIF orientation" in line]
        assert len(notes) == (1 if name == "rot" else 0), err
        if notes:
            assert notes[0].startswith("warning: 3 image(s) carry an EXIF orientation"), err
        csv = next((tmp_path / f"res_{name}").glob(f"{name}_*_l2.csv"))
        scores[name] = pd.read_csv(csv).sort_values("ref").pred.to_numpy()
    assert np.array_equal(scores["rot"], scores["plain"])
