"""Image preprocessing on tensors: within one uint8 level of the PIL procedure it replaced, and images are
prepared once per chat (the history's images are not prepared again on later turns)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sphinx_x.infer.prompts as prompts_module
from sphinx_x.canvas import make_canvas, prepare_image, resize_uint8, to_uint8_tensor
from sphinx_x.config import CanvasConfig, SphinxXConfig
from sphinx_x.infer.prompts import PromptEncoder, user_turn
from sphinx_x.tokenizer import load_tokenizer


def photo(w: int, h: int, seed: int, pattern: bool = False) -> Image.Image:
    """Gradients with some noise (photo-like); `pattern` adds a high-frequency moire, the worst case for
    resampling differences."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx * yy) % 255 if pattern else (xx + yy) * 127 / (w + h)], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


SIZES = [((384, 384), (256, 256)), ((512, 256), (256, 128)), ((97, 61), (256, 161)), ((1000, 40), (112, 4)),
         ((90, 200), (50, 112)), ((256, 256), (128, 128))]


def level_diff(ours: torch.Tensor, pil: torch.Tensor) -> torch.Tensor:
    assert ours.shape == pil.shape and ours.dtype == pil.dtype == torch.uint8
    return (ours.int() - pil.int()).abs().float()


@pytest.mark.parametrize("src, dst", SIZES)
def test_tensor_resize_is_close_to_pil(src, dst):
    """Photo-like images: within 2 uint8 levels everywhere (at some scales a quarter of the pixels off by
    one, a rounding difference; most scales nearly all equal). A high-frequency
    pattern differs more at a few pixels (PIL's fixed-point filter vs torch's), still < 0.5 level on
    average."""
    for pattern, max_bound, mean_bound in ((False, 2, 0.3), (True, 255, 0.5)):
        img = photo(*src, seed=sum(src), pattern=pattern)
        d = level_diff(resize_uint8(to_uint8_tensor(img)[None], *dst)[0],
                       to_uint8_tensor(img.resize(dst, Image.Resampling.BICUBIC)))
        assert float(d.max()) <= max_bound and float(d.mean()) < mean_bound


def pil_views(img: Image.Image, vision) -> dict[str, torch.Tensor]:
    """The PIL procedure prepare_image used before: a canvas per expert, its resize as the global view,
    crops of the canvas as the kept cells."""
    g = vision.canvas.grid
    skipped = prepare_image(img, vision).skipped.tolist()
    out = {}
    for e in vision.experts:
        r = e.view_size
        full = make_canvas(img, g * r, vision.canvas)
        arr = to_uint8_tensor(full)
        tiles = [to_uint8_tensor(full.resize((r, r), Image.Resampling.BICUBIC))]
        tiles += [arr[:, i * r:(i + 1) * r, j * r:(j + 1) * r] for k, (i, j) in
                  enumerate(divmod(n, g) for n in range(g * g)) if not skipped[k]]
        out[e.name] = torch.stack(tiles)
    return out


@pytest.mark.parametrize("anchor", ["top-left", "center"])
@pytest.mark.parametrize("size", [(300, 100), (64, 64), (90, 200)])
def test_views_match_the_pil_procedure(anchor, size):
    vision = SphinxXConfig.from_name("nano").vision
    vision.canvas = CanvasConfig(grid=2, pad_anchor=anchor)
    img = photo(*size, seed=size[0])
    views = prepare_image(img, vision)
    for name, ref in pil_views(img, vision).items():
        d = level_diff(views.views[name], ref)
        assert float(d.max()) <= 2 and float(d.mean()) < 0.3


def test_history_images_are_prepared_once(monkeypatch):
    vision = SphinxXConfig.from_name("nano").vision
    calls = []
    real = prompts_module.prepare_image
    monkeypatch.setattr(prompts_module, "prepare_image", lambda im, v: calls.append(im) or real(im, v))
    encoder = PromptEncoder(load_tokenizer("nano"), "accessory", vision)
    first = user_turn("What is this?", photo(80, 40, 1))
    turn1 = encoder.encode([first])
    turn2 = encoder.encode([first, {"role": "assistant", "content": "A cat."},
                            user_turn("And this?", photo(40, 40, 2))])
    assert len(calls) == 2  # the first image once, the second once
    assert turn2.images[0] is turn1.images[0]
    assert torch.equal(turn2.images[1].views["dinov2"], prepare_image(photo(40, 40, 2), vision).views["dinov2"])
