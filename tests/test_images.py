"""Windows (golden positions), image loading across Pillow modes, size checks."""
import numpy as np
import pytest
import torch
from PIL import Image

from zsiqa.errors import UserError
from zsiqa.images import load_image
from zsiqa.windows import window_positions, windows


@pytest.mark.golden
def test_window_positions_golden(golden):
    for length, want in golden["windows"].items():
        assert list(window_positions(int(length))) == want


def test_window_positions_rule_and_small_sides():
    assert window_positions(224) == (0,)
    assert window_positions(225) == (0, 1)
    with pytest.raises(UserError, match="under 224"):
        window_positions(223)


def test_windows_are_the_right_crops_rows_outer():
    img = torch.arange(3 * 300 * 450, dtype=torch.float32).reshape(3, 300, 450)
    w = windows(img)
    rows, cols = window_positions(300), window_positions(450)
    assert w.shape == (len(rows) * len(cols), 3, 224, 224)
    k = 0
    for r in rows:
        for c in cols:
            assert torch.equal(w[k], img[:, r:r + 224, c:c + 224])
            k += 1


def _save(tmp_path, name, im):
    p = tmp_path / name
    im.save(p)
    return p


def test_load_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (230, 240, 3), dtype=np.uint8)
    base = Image.fromarray(rgb)
    want = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    assert torch.equal(load_image(_save(tmp_path, "a.png", base)), want)
    rgba = base.copy()
    rgba.putalpha(128)
    assert torch.equal(load_image(_save(tmp_path, "b.png", rgba)), want)  # alpha dropped
    grey = base.convert("L")
    g = load_image(_save(tmp_path, "c.png", grey))
    assert torch.equal(g[0], g[2]) and torch.equal(g[0], torch.from_numpy(np.array(grey)).float() / 255)
    assert load_image(_save(tmp_path, "d.png", base.convert("LA"))).shape == (3, 230, 240)
    pal = base.convert("P")
    want_pal = torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1).float() / 255
    assert torch.equal(load_image(_save(tmp_path, "e.png", pal)), want_pal)
    cmyk = base.convert("CMYK")
    assert load_image(_save(tmp_path, "f.jpg", cmyk)).shape == (3, 230, 240)
    deep = (np.arange(230 * 240).reshape(230, 240) * 1.1).astype(np.uint16)
    d = load_image(_save(tmp_path, "g.png", Image.fromarray(deep)))
    assert torch.allclose(d[1], torch.from_numpy(deep.astype(np.float32) / 65535), atol=1e-7)
    assert torch.unique(d[0]).numel() > 256  # 16-bit depth kept, not clipped to 8 bits


def test_load_image_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "text.png")
    good = _save(tmp_path, "full.png", Image.new("RGB", (300, 300), (10, 20, 30)))
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "cut.png")


def test_resize_option(tmp_path):
    p = _save(tmp_path, "small.png", Image.new("RGB", (100, 80), (200, 10, 10)))
    assert load_image(p, resize=224).shape == (3, 224, 224)


def test_windows_of_a_stack_are_image_major():
    g = torch.Generator().manual_seed(0)
    stack = torch.randint(0, 256, (3, 3, 260, 450), generator=g, dtype=torch.uint8)
    assert torch.equal(windows(stack), torch.cat([windows(img) for img in stack]))


def test_deep_images_of_unknown_scale_are_refused(tmp_path):
    """A float image holding 0-255 or a 32-bit one above 65535 has no known scale: one
    line naming the file, never a clipped (silently wrong) picture."""
    grey = np.arange(240 * 230, dtype=np.float32).reshape(230, 240) % 256
    Image.fromarray(grey, mode="F").save(tmp_path / "f255.tif")
    Image.fromarray((grey * 1000).astype(np.int32), mode="I").save(tmp_path / "i32.tif")
    holed = (grey / 255).astype(np.float32)
    holed[5, 5] = np.nan
    Image.fromarray(holed, mode="F").save(tmp_path / "fnan.tif")
    for name in ("f255.tif", "i32.tif", "fnan.tif"):
        with pytest.raises(UserError, match=f"{name}: .*scale is unknown"):
            load_image(tmp_path / name)
    Image.fromarray(grey / 255, mode="F").save(tmp_path / "f1.tif")  # float in [0, 1]: read as it is
    assert torch.allclose(load_image(tmp_path / "f1.tif")[0], torch.from_numpy(grey / 255), atol=1e-6)
