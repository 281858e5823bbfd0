import io

import numpy as np
import pytest
import torch
from PIL import Image

from sphinx_x.canvas import (
    CanvasGeometry,
    ImageError,
    collate_images,
    load_image,
    make_canvas,
    prepare_image,
    skipped_cells,
)
from sphinx_x.config import CanvasConfig, SphinxXConfig


def test_content_edge_on_cell_border_and_one_pixel_either_side():
    canvas = CanvasConfig(grid=2)
    # height exactly half the side: the bottom row holds no content
    assert skipped_cells(2000, 1000, canvas) == [False, False, True, True]
    # one pixel more: the bottom row holds a 1-pixel strip and is encoded
    assert skipped_cells(2000, 1001, canvas) == [False] * 4
    assert skipped_cells(2000, 999, canvas) == [False, False, True, True]
    # 3x3: a third of the width exactly, and one pixel either side
    g3 = CanvasConfig(grid=3)
    assert skipped_cells(1000, 3000, g3) == [False, True, True] * 3
    assert skipped_cells(1001, 3000, g3) == [False, False, True] * 3
    assert skipped_cells(999, 3000, g3) == [False, True, True] * 3


def test_centre_anchor_never_skips_on_2x2():
    canvas = CanvasConfig(grid=2, pad_anchor="center")
    for w, h in [(1, 1000), (1000, 1), (4096, 1024), (3, 7), (2048, 1024)]:
        assert skipped_cells(w, h, canvas) == [False] * 4
    # on 3x3 a thin centred strip keeps only the middle column
    assert skipped_cells(100, 3000, CanvasConfig(grid=3, pad_anchor="center")) == [True, False, True] * 3


def test_skip_disabled_encodes_every_cell():
    canvas = CanvasConfig(grid=2, skip_padded_cells=False)
    assert skipped_cells(4096, 1024, canvas) == [False] * 4


@pytest.mark.parametrize("anchor", ["top-left", "center"])
def test_coordinate_mapping_round_trip(anchor):
    geo = CanvasGeometry(200, 100, anchor)
    box = [20.0, 10.0, 180.0, 90.0]
    canvas = geo.to_canvas(box)
    assert geo.to_pixels(canvas) == pytest.approx(box)
    if anchor == "top-left":
        assert canvas == pytest.approx([0.1, 0.05, 0.9, 0.45])
    else:  # 50 px of padding above the image on a 200-px canvas
        assert canvas == pytest.approx([0.1, 0.3, 0.9, 0.7])
    # points map the same way and clamp to the image
    assert geo.to_pixels([1.0, 1.0]) == [200.0, 100.0]


def test_canvas_places_pixels_where_the_mapping_says():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 0, 0), (100, 50, 120, 70))  # a red square at known pixels
    for anchor in ("top-left", "center"):
        cfg = CanvasConfig(grid=2, pad_anchor=anchor)
        canvas = np.asarray(make_canvas(img, 400, cfg))
        x1, y1, x2, y2 = CanvasGeometry(200, 100, anchor).to_canvas([100, 50, 120, 70])
        cx, cy = int((x1 + x2) / 2 * 400), int((y1 + y2) / 2 * 400)
        assert tuple(canvas[cy, cx]) == (255, 0, 0)
        # padding takes the pad colour
        assert tuple(canvas[399, 399]) == cfg.pad_color


def test_prepare_image_views_and_skips():
    vision = SphinxXConfig.from_name("nano").vision
    img = Image.new("RGB", (300, 100), (10, 200, 30))  # 3:1 -> bottom row skipped
    views = prepare_image(img, vision)
    assert views.skipped.tolist() == [False, False, True, True]
    for expert in vision.experts:
        r = expert.view_size
        assert views.views[expert.name].shape == (3, 3, r, r)
        assert views.views[expert.name].dtype == torch.uint8
    batch = collate_images([views, prepare_image(Image.new("RGB", (50, 50)), vision)], vision)
    assert batch.skipped.shape == (2, 4)
    assert batch.views["dinov2"].shape[0] == 3 + 5


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_every_pil_mode_becomes_rgb():
    bg = (122, 117, 104)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert load_image(_png(rgba), background=bg).getpixel((0, 0)) == bg
    la = Image.new("LA", (4, 4), (200, 255))
    assert load_image(_png(la)).getpixel((0, 0)) == (200, 200, 200)
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 255] + [0] * 765)
    p.info["transparency"] = 0
    assert load_image(_png(p, transparency=0), background=bg).getpixel((1, 1)) == bg
    i16 = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(i16).getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    assert load_image(_png(cmyk, format="JPEG")).getpixel((0, 0))[0] > 200
    assert load_image(Image.new("L", (3, 3), 7)).getpixel((0, 0)) == (7, 7, 7)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    loaded = load_image(_png(img, format="JPEG", exif=exif.tobytes()))
    assert loaded.size == (20, 40)


def test_refuses_oversized_zero_and_broken_images(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(big)
    with pytest.raises(ImageError, match=r"big\.png: 100x100 = 10000 pixels exceeds the limit of 9999"):
        load_image(big, max_pixels=9999)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"bad\.png: not a readable image"):
        load_image(bad)
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


def _reference_views(img: Image.Image, vision) -> dict[str, torch.Tensor]:
    """The plain form of `prepare_image` (before the channels-last canvas): pad by repeat, paste the
    resize, `F.interpolate` the global view, concatenate the crops."""
    import torch.nn.functional as F

    def resize(x, w, h):
        return x if x.shape[-2:] == (h, w) else F.interpolate(x, size=(h, w), mode="bicubic", antialias=True)

    canvas, g = vision.canvas, vision.canvas.grid
    pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)[None]
    kept = [divmod(i, g) for i, s in enumerate(skipped_cells(img.width, img.height, canvas)) if not s]
    out = {}
    for e in vision.experts:
        r = e.view_size
        side = max(g, 1) * r
        m = max(img.width, img.height)
        nw, nh = max(1, round(img.width * side / m)), max(1, round(img.height * side / m))
        x0, y0 = (0, 0) if canvas.pad_anchor == "top-left" else ((side - nw) // 2, (side - nh) // 2)
        full = torch.tensor(canvas.pad_color, dtype=torch.uint8).view(1, 3, 1, 1).repeat(1, 1, side, side)
        full[..., y0 : y0 + nh, x0 : x0 + nw] = resize(pixels, nw, nh)
        out[e.name] = torch.cat([resize(full, r, r)] + [full[..., i * r:(i + 1) * r, j * r:(j + 1) * r]
                                                        for i, j in kept])
    return out


@pytest.mark.parametrize("anchor", ["top-left", "center"])
@pytest.mark.parametrize("grid", [2, 3, 1])
def test_views_equal_the_plain_tensor_procedure(anchor, grid):
    """The channels-last canvas and in-place resizes give exactly the plain procedure's views, contiguous
    channels-first: wide, tall, square, exact-size and one-pixel images."""
    vision = SphinxXConfig.from_name("nano").vision
    vision.canvas = CanvasConfig(grid=grid, pad_anchor=anchor)
    rng = np.random.default_rng(grid)
    for w, h in [(384, 384), (512, 256), (97, 61), (1000, 40), (90, 200), (256, 256), (112, 112), (1, 1),
                 (3, 300), (255, 256), (300, 100)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        views = prepare_image(img, vision).views
        for name, ref in _reference_views(img, vision).items():
            assert views[name].is_contiguous() and views[name].dtype == torch.uint8
            assert torch.equal(views[name], ref), (w, h, name)
