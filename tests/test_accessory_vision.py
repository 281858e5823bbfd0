"""The released SPHINX models' vision side: the official preprocessing, views, DINOv2's run-time position
table, the token layout per view and image, and token counts, each against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _helpers.accessory import RELEASED, TINY_QUERIES, perturb_, tiny_accessory_config
from PIL import Image
from timm.layers import resample_abs_pos_embed
from torchvision import transforms

from sphinx_x.canvas import (
    accessory_views,
    collate_images,
    normalize_canvas,
    prepare_image,
    renormalize,
)
from sphinx_x.config import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, SphinxXConfig
from sphinx_x.experts.timm_experts import dinov2_runtime_pos_embed
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.model import SphinxX

OFFICIAL_TOKENS = {  # image_words of each official model file
    "sphinx": 32 + 257 + 2, "sphinx-1k": (32 + 257 + 2) * 5, "sphinx-v2-1k": (32 + 257 + 2) * 5,
    "sphinx-tiny": 257 + 2, "sphinx-tiny-1k": (257 + 2) * 5, "sphinx-moe": 32 + 257 + 2,
    "sphinx-moe-1k": (32 + 257 + 2) * 5,
}


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def official_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """The official padded_resize transform, written out with torchvision: pad at the original resolution
    (centred, integer offsets, int(255 * mean)), bicubic resize, ToTensor, Normalize."""
    w, h = img.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in CLIP_MEAN))
    square.paste(img, ((side - w) // 2, (side - h) // 2))
    t = transforms.Compose([
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
    ])
    return t(square if w != h else img)[None]


def half(x: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    return F.interpolate(x.half(), size=(size, size), mode=mode).to(x)


# ---- token counts ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", RELEASED)
def test_visual_tokens_are_the_official_image_words_for_every_size(preset):
    vision = SphinxXConfig.from_name(preset).vision
    for w, h in [(1024, 1024), (2048, 1024), (300, 2000), (1, 1), (7000, 30)]:
        assert visual_token_count(w, h, vision) == OFFICIAL_TOKENS[preset]


@pytest.mark.parametrize("preset", RELEASED)
def test_tiny_model_emits_as_many_tokens_as_counted(preset):
    cfg = tiny_accessory_config(preset)
    model = SphinxX(cfg).eval()
    images = [noise_image(40, 90, 1), noise_image(64, 64, 2)]
    batch = collate_images([prepare_image(im, cfg.vision) for im in images], cfg.vision)
    with torch.no_grad():
        out = model.image_embeddings(batch)
    assert out.shape[0] == sum(visual_token_count(*im.size, cfg.vision) for im in images)
    views = 1 + cfg.vision.canvas.grid ** 2
    own = TINY_QUERIES if "tiny" not in preset else 0
    assert cfg.vision.tokens_per_view == own + 1 + 2 * 2
    assert out.shape[0] == len(images) * views * (cfg.vision.tokens_per_view + 2)


def test_existing_presets_keep_sphinx_x_preprocessing():
    for name in ("nano", "tiny", "intern2", "plus", "plus-2k", "moe"):
        cfg = SphinxXConfig.from_name(name)
        assert cfg.vision.canvas.preprocess == "sphinx-x" and cfg.vision.canvas.skip_padded_cells
        assert cfg.vision.canvas.pad_anchor == "top-left"
        assert all(e.pos_embed == "resampled" and not e.own_projector for e in cfg.vision.experts)
    nano = SphinxXConfig.from_name("nano")
    views = prepare_image(noise_image(90, 40), nano.vision)
    assert views.canvas is None and all(v.dtype == torch.uint8 for v in views.views.values())
    assert not any("own_projectors" in k for k in SphinxX(nano).state_dict())


# ---- preprocessing -----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(90, 40), (40, 91), (64, 64), (300, 301), (13, 200)])
def test_canvas_is_the_official_transform_exactly(size):
    cfg = tiny_accessory_config("sphinx-1k")
    img = noise_image(*size, seed=sum(size))
    canvas = prepare_image(img, cfg.vision).canvas
    assert canvas.dtype == torch.uint8 and canvas.shape == (1, 3, 56, 56)
    assert torch.equal(normalize_canvas(canvas, cfg.vision.canvas), official_tensor(img, 56))


def test_pad_colour_is_truncated_not_rounded():
    canvas = SphinxXConfig.from_name("sphinx").vision.canvas
    assert tuple(canvas.pad_color) == (122, 116, 104)
    assert SphinxXConfig.from_name("tiny").vision.canvas.pad_color != canvas.pad_color  # SPHINX-X rounds


def test_views_global_is_float16_bicubic_and_cells_are_crops():
    x = torch.randn(2, 3, 56, 56)
    v = accessory_views(x, 28, 2)
    assert v.shape == (10, 3, 28, 28)
    for i in range(2):
        assert torch.equal(v[5 * i], half(x[i : i + 1], 28)[0])
        assert not torch.equal(v[5 * i], F.interpolate(x[i : i + 1], size=(28, 28), mode="bicubic")[0])
        for cell, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            assert torch.equal(v[5 * i + 1 + cell], x[i, :, 28 * r : 28 * (r + 1), 28 * c : 28 * (c + 1)])


def test_views_from_a_larger_canvas_crop_its_float16_resize():
    x = torch.randn(1, 3, 128, 128)
    v = accessory_views(x, 28, 2)
    big = half(x, 56)
    assert torch.equal(v[0], half(x, 28)[0])
    assert torch.equal(v[4], big[0, :, 28:, 28:])
    assert torch.equal(accessory_views(x, 128, 0), x)  # the canvas itself: no resize, no rounding
    assert torch.equal(accessory_views(x, 64, 0), half(x, 64))


def test_renormalisation_formulas_match_the_official_expressions():
    cfg = tiny_accessory_config("sphinx")
    dino = next(e for e in cfg.vision.experts if e.kind == "dinov2")
    x = torch.randn(3, 3, 8, 8)
    cm, cs = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    dm, ds = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert dino.renorm == "unnormalize"
    assert torch.equal(renormalize(x, cfg.vision.canvas, dino), (x * cs + cm - dm) / ds)
    light = next(e for e in tiny_accessory_config("sphinx-tiny").vision.experts if e.kind == "dinov2")
    assert light.renorm == "affine"
    assert torch.equal(renormalize(x, cfg.vision.canvas, light), x * (cs / ds) + (cm - dm) / ds)
    clip = next(e for e in cfg.vision.experts if e.kind == "clip_vit")
    assert renormalize(x, cfg.vision.canvas, clip) is x


# ---- DINOv2 position table ---------------------------------------------------------------------
def test_dinov2_runtime_table_is_bicubic_at_the_official_scale_factor():
    table = torch.randn(1, 1 + 37 * 37, 8)
    out = dinov2_runtime_pos_embed(table, 16, 16, torch.float32)
    patch = table[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(patch, scale_factor=((16 + 0.1) / 37, (16 + 0.1) / 37), mode="bicubic", antialias=False)
    assert torch.equal(out[:, 0], table[:, 0])
    assert torch.equal(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 256, 8))
    timm_way = resample_abs_pos_embed(table, new_size=(16, 16), num_prefix_tokens=1)  # size-based, antialiased
    assert (out - timm_way).abs().max() > 1e-3
    assert torch.equal(dinov2_runtime_pos_embed(table, 37, 37, torch.float32), table)  # native size: as stored
    assert dinov2_runtime_pos_embed(table, 16, 16, torch.bfloat16).dtype == torch.bfloat16


def test_dinov2_expert_uses_the_runtime_table_in_its_forward():
    cfg = tiny_accessory_config("sphinx-tiny")
    model = SphinxX(cfg).eval()
    perturb_(model, seed=3)
    dino = model.visual.experts["dinov2"]
    trunk = dino.trunk
    assert trunk.pos_embed.shape == (1, 1 + 5 * 5, 24)  # the stored table, never resampled
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tokens = trunk.patch_embed(x)
        table = trunk.pos_embed[:, 1:].reshape(1, 5, 5, 24).permute(0, 3, 1, 2)
        pos = F.interpolate(table, scale_factor=(2.1 / 5, 2.1 / 5), mode="bicubic", antialias=False)
        pos = torch.cat([trunk.pos_embed[:, :1], pos.flatten(2).transpose(1, 2)], dim=1)
        ref = trunk.norm(trunk.blocks(torch.cat([trunk.cls_token.expand(2, -1, -1), tokens], dim=1) + pos))
        out = dino.forward_normalized(x)
    assert out.shape == (2, 5, 24)
    torch.testing.assert_close(out[:, 0], ref[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 1:], ref[:, 1:], rtol=0, atol=1e-6)


# ---- the token layout --------------------------------------------------------------------------
def _reference_views(model: SphinxX, x: torch.Tensor, preset: str) -> torch.Tensor:
    """Per view [start, qformer_proj(queries), visual_proj(clip | convnext | dinov2), end], computed from the
    official recipe of the 5-view 4-expert files (llama_ens5) with tiny sizes."""
    cm, cs = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    dm, ds = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    views = torch.cat([half(x, 28), x[..., :28, :28], x[..., :28, 28:], x[..., 28:, :28], x[..., 28:, 28:]])
    ex = model.visual.experts
    q = ex["qformer"].trunk(views)
    clip = ex["clip"].encode(views)
    fmap = ex["clip_convnext"].trunk.forward_features(half(views, 32, "nearest"))
    fmap = ex["clip_convnext"].trunk.head.norm(fmap)
    assert fmap.shape[-2:] == (1, 1)
    fmap = fmap.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2).flatten(-2).permute(0, 2, 1)
    convnext = torch.cat([fmap.mean(dim=1, keepdim=True), fmap], dim=1)
    dino = ex["dinov2"].encode((views * cs + cm - dm) / ds)
    ens = model.visual.projector(torch.cat([clip, convnext, dino], dim=2))
    per_view = torch.cat([model.visual.own_projectors["qformer"](q), ens], dim=1)
    start, end = model.image_start[None, None].expand(5, 1, -1), model.image_end[None, None].expand(5, 1, -1)
    return torch.cat([start, per_view, end], dim=1).flatten(0, 1)


def test_sphinx_1k_layout_is_the_official_one():
    cfg = tiny_accessory_config("sphinx-1k")
    model = SphinxX(cfg).eval()
    perturb_(model, seed=4)
    img = noise_image(70, 45, 5)
    with torch.no_grad():
        out = model.image_embeddings(collate_images([prepare_image(img, cfg.vision)], cfg.vision))
        ref = _reference_views(model, official_tensor(img, 56), "sphinx-1k")
    assert out.shape == ref.shape == (5 * (TINY_QUERIES + 5 + 2), 48)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_sphinx_tiny_1k_views_per_expert():
    """llama_ens5_light: DINOv2 on float16 resizes of the 1024 canvas (224 global, 448 cut into cells),
    ConvNeXt on the 512 resize then raw crops of the canvas, with the affine re-normalisation."""
    cfg = tiny_accessory_config("sphinx-tiny-1k")
    model = SphinxX(cfg).eval()
    img = noise_image(100, 60, 6)
    batch = collate_images([prepare_image(img, cfg.vision)], cfg.vision)
    inputs = model.visual.expert_inputs(batch)
    x = official_tensor(img, 128)
    cm, cs = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    dm, ds = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x56 = half(x, 56)
    dino = torch.cat([half(x, 28), x56[..., :28, :28], x56[..., :28, 28:], x56[..., 28:, :28], x56[..., 28:, 28:]])
    conv = torch.cat([half(x, 64), x[..., :64, :64], x[..., :64, 64:], x[..., 64:, :64], x[..., 64:, 64:]])
    assert torch.equal(inputs["dinov2"], dino * (cs / ds) + (cm - dm) / ds)
    assert torch.equal(inputs["clip_convnext"], conv)


def test_single_view_convnext_input_is_rounded_to_float16():
    """llama_ens_light / mixtral_sparse_ens: ConvNeXt sees the canvas through a same-size float16 resize."""
    cfg = tiny_accessory_config("sphinx-moe")
    model = SphinxX(cfg).eval()
    img = noise_image(64, 30, 7)
    inputs = model.visual.expert_inputs(collate_images([prepare_image(img, cfg.vision)], cfg.vision))
    x = official_tensor(img, 64)
    assert torch.equal(inputs["clip_convnext"], x)
    seen = model.visual.experts["clip_convnext"].resize_input(inputs["clip_convnext"])
    assert torch.equal(seen, x.half().float()) and not torch.equal(seen, x)
    for name in ("qformer", "clip"):
        assert torch.equal(inputs[name], half(x, 28))
