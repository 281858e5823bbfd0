"""The image-token layout (sphinx_x/image_tokens.py): counts, the largest image, the max_len checks, and the
model producing exactly the counted embeddings, slot by slot, for many image shapes and presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers.accessory import RELEASED, tiny_accessory_config
from PIL import Image

from sphinx_x.canvas import collate_images, prepare_image, skipped_cells
from sphinx_x.config import ConfigError, SphinxXConfig
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.data.encode import DialogueEncoder
from sphinx_x.image_tokens import (
    SKIP,
    VIEW,
    check_image_fits,
    check_max_len,
    image_slots,
    max_image_tokens,
    visual_token_count,
)
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import load_tokenizer

TINY = SphinxXConfig.from_name("tiny").vision
PLUS_2K = SphinxXConfig.from_name("plus-2k").vision
# wide, tall, square, extreme strips, a single pixel, odd sizes: every skip pattern of a 2x2 and 3x3 grid
SHAPES = [(80, 40), (40, 80), (64, 64), (300, 20), (20, 300), (1, 1), (57, 91), (91, 57)]


# ---- counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size,tokens",
    [((1024, 1024), 1295), ((2048, 1024), 779), ((1024, 2048), 779), ((4096, 1024), 779), ((1000, 999), 1295)],
)
def test_visual_tokens_tiny(size, tokens):
    assert visual_token_count(*size, TINY) == tokens


def test_visual_tokens_plus_2k():
    assert visual_token_count(800, 2400, PLUS_2K) == 1042  # 4 views x 259 + 6 skip tokens
    assert visual_token_count(900, 900, PLUS_2K) == 10 * 259


def test_slots_are_the_global_view_then_the_cells_in_raster_order():
    assert image_slots([]) == [VIEW]  # grid 0: the global view only
    assert image_slots([False, False, True, True]) == [VIEW, VIEW, VIEW, SKIP, SKIP]


def test_the_largest_image_is_every_cell_encoded():
    assert max_image_tokens(TINY) == 5 * 259 == visual_token_count(1024, 1024, TINY)
    assert max_image_tokens(PLUS_2K) == 10 * 259
    nano = SphinxXConfig.from_name("nano").vision
    assert max_image_tokens(nano) == 95  # 5 views x (17 tokens + 2 tags)
    assert all(visual_token_count(w, h, nano) <= 95 for w, h in SHAPES)


@pytest.mark.parametrize("preset", RELEASED)
def test_released_presets_never_skip_so_every_image_takes_the_maximum(preset):
    vision = SphinxXConfig.from_name(preset).vision
    views = 1 + vision.canvas.grid ** 2
    assert max_image_tokens(vision) == views * (vision.tokens_per_view + 2)
    assert {visual_token_count(w, h, vision) for w, h in SHAPES} == {max_image_tokens(vision)}


# ---- max_len checks ------------------------------------------------------------------------------
def test_max_len_must_hold_the_largest_image_plus_bos_and_one_text_token():
    nano = SphinxXConfig.from_name("nano").vision
    check_max_len(97, nano)
    check_max_len(None, nano)
    with pytest.raises(ConfigError) as e:
        check_max_len(96, nano, field="data.max_len")
    assert str(e.value) == (
        "data.max_len 96 is shorter than one image's visual tokens: a full image (global view + 2x2 cells) "
        "takes 95 tokens (plus BOS and at least one text token = 97); raise data.max_len")
    single_view = SphinxXConfig.from_name("sphinx").vision
    with pytest.raises(ConfigError, match=r"max_len 10 .* \(global view only\) takes 291 tokens"):
        check_max_len(10, single_view)  # 32 Q-Former + 257 ensemble tokens + 2 tags


def test_one_image_must_fit_after_bos():
    check_image_fits(96, 95)
    check_image_fits(None, 10**6)
    with pytest.raises(ConfigError, match=r"max_len 95 is shorter than one image's visual tokens \(95 \+ BOS\)"):
        check_image_fits(95, 95)


# ---- the model produces what is counted ----------------------------------------------------------
def noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def nano_variant(**canvas) -> SphinxXConfig:
    data = SphinxXConfig.from_name("nano").to_dict()
    data["vision"]["canvas"].update(canvas)
    return SphinxXConfig.from_dict(data)


CONFIGS = {
    "nano": lambda: nano_variant(),
    "nano-center": lambda: nano_variant(pad_anchor="center"),
    "nano-grid3": lambda: nano_variant(grid=3),
    "nano-grid0": lambda: nano_variant(grid=0),
    "nano-no-skip": lambda: nano_variant(skip_padded_cells=False),
    **{f"tiny-{p}": (lambda p=p: tiny_accessory_config(p)) for p in RELEASED},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_model_embeddings_follow_the_counted_layout(name):
    config = CONFIGS[name]()
    torch.manual_seed(0)
    model = SphinxX(config).eval()
    vision = config.vision
    images = [noise(w, h, k) for k, (w, h) in enumerate(SHAPES)]
    counts = [visual_token_count(im.width, im.height, vision) for im in images]
    with torch.no_grad():
        seq = model.image_embeddings(collate_images([prepare_image(im, vision) for im in images], vision))
    assert seq.shape[0] == sum(counts)
    # slot by slot: a view opens with [start] and closes with [end], a skipped cell is one [skip]
    view = vision.tokens_per_view + 2
    at = 0
    for k, im in enumerate(images):
        for slot in image_slots(skipped_cells(im.width, im.height, vision.canvas)):
            if slot == SKIP:
                assert torch.equal(seq[at], model.skip_token.detach())
                at += 1
            else:
                assert torch.equal(seq[at], model.image_start.detach())
                assert torch.equal(seq[at + view - 1], model.image_end.detach())
                at += view
        assert at == sum(counts[: k + 1])
    assert at == seq.shape[0]


@pytest.mark.parametrize("name", ["nano", "nano-grid3", "tiny-sphinx", "tiny-sphinx-1k"])
def test_encoded_ids_hold_as_many_image_positions_as_the_model_fills(name):
    config = CONFIGS[name]()
    model = SphinxX(config).eval()
    vision = config.vision
    images = [noise(w, h, k) for k, (w, h) in enumerate(SHAPES[:3])]
    counts = [visual_token_count(im.width, im.height, vision) for im in images]
    encoder = DialogueEncoder(load_tokenizer("nano"), "accessory", max_len=None)
    enc = encoder.encode([{"role": "user", "content": "<image> <image> <image> what?"},
                          {"role": "assistant", "content": "three"}], counts)
    ids = torch.tensor([enc.input_ids]) % config.llm.vocab_size
    ids[0, torch.tensor(enc.input_ids) == IMAGE_TOKEN_ID] = IMAGE_TOKEN_ID
    assert int((ids == IMAGE_TOKEN_ID).sum()) == sum(counts)
    batch = collate_images([prepare_image(im, vision) for im in images], vision)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, batch)  # raises when the counts and the embeddings disagree
    assert embeds.shape == (1, len(enc.input_ids), model.llm.config.hidden_size)
