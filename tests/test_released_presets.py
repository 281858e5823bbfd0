"""The seven released SPHINX presets: `sphinx-x info` sizes and tokens, and a tiny stand-in of each that
runs a forward, saves and loads back identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers.accessory import RELEASED, perturb_, tiny_accessory_config
from PIL import Image

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.cli import main as cli_main
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.model import SphinxX

# (LLM parameters, experts, visual tokens per image): LLaMA2-13B, TinyLlama-1.1B, Mixtral-8x7B.
EXPECTED = {
    "sphinx": (13.0e9, 4, 291), "sphinx-1k": (13.0e9, 4, 1455), "sphinx-v2-1k": (13.0e9, 4, 1455),
    "sphinx-tiny": (1.10e9, 2, 259), "sphinx-tiny-1k": (1.10e9, 2, 1295),
    "sphinx-moe": (46.7e9, 4, 291), "sphinx-moe-1k": (46.7e9, 4, 1455),
}
EXPERT_SIZES = {"qformer": 1.09e9, "clip": 0.304e9, "clip_convnext": 0.843e9, "dinov2": 1.136e9}


@pytest.mark.slow
def test_info_gives_sizes_and_tokens_of_the_released_models(capsys):
    for preset, (llm, n_experts, tokens) in EXPECTED.items():
        assert cli_main(["info", preset, "--json", "--image-size", "1024x768", "--image-size", "300x900"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["preset"] == preset
        assert abs(out["params"]["llm"] - llm) / llm < 0.01, (preset, out["params"]["llm"])
        experts = out["params"]["vision_experts"]
        assert len(experts) == n_experts
        for name, n in experts.items():
            assert abs(n - EXPERT_SIZES[name]) / EXPERT_SIZES[name] < 0.01, (name, n)
        d = 5120 if "moe" not in preset and "tiny" not in preset else (2048 if "tiny" in preset else 4096)
        shared = (3072 + 1536 + (1024 if n_experts == 4 else 0)) * d + d + 2 * d
        own = (768 * d + d + 2 * d) if n_experts == 4 else 0
        assert out["params"]["projector"] == shared + own
        assert out["visual_tokens"] == {"1024x768": tokens, "300x900": tokens}
    assert cli_main(["info", "sphinx-1k"]) == 0
    text = capsys.readouterr().out
    assert "global + 2x2, accessory preprocessing, 448 px canvas" in text
    assert "[start] 32 qformer + 257 clip+clip_convnext+dinov2 [end]" in text


@pytest.mark.parametrize("preset", RELEASED)
@pytest.mark.slow
def test_tiny_stand_in_forwards_and_round_trips(preset, tmp_path):
    cfg = tiny_accessory_config(preset)
    torch.manual_seed(0)
    model = SphinxX(cfg).eval()
    perturb_(model, seed=2, scale=0.05)
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 90, 3), dtype=np.uint8))
    n = visual_token_count(90, 50, cfg.vision)
    ids = torch.tensor([[1] + [IMAGE_TOKEN_ID] * n + [5, 6, 7]])
    images = collate_images([prepare_image(img, cfg.vision)], cfg.vision)
    with torch.no_grad():
        logits = model(ids, images=images).logits
    assert logits.shape == (1, 1 + n + 3, 96) and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path / "m")
    loaded = SphinxX.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(loaded(ids, images=images).logits, logits)


def test_flop_counting_runs_every_expert_kind_on_the_meta_device():
    from sphinx_x.train.flops import expert_view_flops

    cfg = tiny_accessory_config("sphinx-1k")
    flops = {e.name: expert_view_flops(e, cfg.vision.feature_grid) for e in cfg.vision.experts}
    assert set(flops) == {"qformer", "clip", "clip_convnext", "dinov2"} and all(f > 0 for f in flops.values())
    # ConvNeXt is counted at its input_resize (32 px here), not at the 28 px view
    convnext = next(e for e in cfg.vision.experts if e.kind == "convnext")
    import dataclasses

    assert expert_view_flops(dataclasses.replace(convnext, input_resize=64), 2) > 3 * flops["clip_convnext"]
