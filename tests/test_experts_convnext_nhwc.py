"""The ConvNeXt expert's channels-last forward without gradients (`convnext_nhwc`) against timm's own forward:
the nano expert (timm `conv_mlp=True`), the same weights in timm's `conv_mlp=False` layout (the real CLIP
ConvNeXt-XXL's), the packaged stand-in; what falls back to timm's forward; and the experts' input normalisation
against the three-step formula."""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch
from _helpers.accessory import perturb_
from torch import nn

from sphinx_x.canvas import collate_images, prepare_image
from sphinx_x.config import SphinxXConfig
from sphinx_x.experts import VisionExpert
from sphinx_x.experts.timm_experts import convnext_nhwc, convnext_nhwc_supported

NANO = SphinxXConfig.from_name("nano")
NANO_CONVNEXT = next(e for e in NANO.vision.experts if e.kind == "convnext")
TOL = dict(rtol=1e-5, atol=1e-5)


def nano_expert(seed: int = 0, **overrides) -> VisionExpert:
    torch.manual_seed(seed)
    expert = VisionExpert(dataclasses.replace(NANO_CONVNEXT, **{"frozen": True, **overrides}), NANO.vision.feature_grid)
    perturb_(expert.trunk, seed=seed, scale=0.3)  # layer scales away from 1e-6, so every block counts
    return expert


def views(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def timm_tokens(expert: VisionExpert, v: torch.Tensor) -> torch.Tensor:
    """The expert's tokens through timm's forward (the path taken with gradients enabled)."""
    with torch.enable_grad():
        return expert.encode(expert.normalize(v)).detach()


def test_nano_expert_channels_last_equals_timm_forward():
    expert = nano_expert()
    assert expert.trunk.stages[0].blocks[0].use_conv_mlp  # the nano expert's 1x1-conv MLP
    assert convnext_nhwc_supported(expert.trunk)
    v = views(5, NANO_CONVNEXT.view_size)
    with torch.no_grad():
        fast = expert(v)
    ref = timm_tokens(expert, v)
    assert fast.shape == ref.shape == (5, 1 + NANO.vision.feature_grid**2, NANO_CONVNEXT.channels)
    assert ref.abs().max() > 0.5  # not a degenerate comparison
    torch.testing.assert_close(fast, ref, **TOL)


def test_conv_mlp_and_linear_mlp_layouts_give_the_same_features():
    """The same weights as 1x1 convolutions (timm conv_mlp=True) and as Linear layers (conv_mlp=False, the
    layout of the real CLIP ConvNeXt-XXL): timm's forwards and the channels-last forward all agree."""
    kwargs = dict(pretrained=False, num_classes=0, **NANO_CONVNEXT.timm_kwargs)
    conv = timm.create_model(NANO_CONVNEXT.timm_model, **kwargs).eval()
    perturb_(conv, seed=3, scale=0.3)
    linear = timm.create_model(NANO_CONVNEXT.timm_model, conv_mlp=False, **kwargs).eval()
    state = {k: v.flatten(1) if ".mlp.fc" in k and v.ndim == 4 else v for k, v in conv.state_dict().items()}
    linear.load_state_dict(state)
    assert not linear.stages[0].blocks[0].use_conv_mlp
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = conv.forward_features(x)
        outs = [linear.forward_features(x), convnext_nhwc(conv, x).permute(0, 3, 1, 2),
                convnext_nhwc(linear, x).permute(0, 3, 1, 2)]
    assert convnext_nhwc_supported(conv) and convnext_nhwc_supported(linear)
    scale = float(ref.abs().max())
    for out in outs:  # the layouts differ by float rounding only, through five blocks
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5 * scale)


def test_packaged_standin_features_are_unchanged():
    """The lead's experiments read the packaged stand-in experts: the whole vision path (both experts and the
    projector) gives the same tokens with the channels-last ConvNeXt as with timm's forward."""
    from PIL import Image

    from sphinx_x.model import SphinxX
    from sphinx_x.standins import nano_model_config

    model = SphinxX(nano_model_config()).eval()
    expert = model.visual.experts["clip_convnext"]
    assert expert.cfg.checkpoint and convnext_nhwc_supported(expert.trunk)
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray(torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g).numpy())
              for w, h in ((512, 256), (300, 300))]
    batch = collate_images([prepare_image(im, model.config.vision) for im in images], model.config.vision)
    with torch.no_grad():
        fast = model.visual(batch)
    real_forward = expert.encode
    expert.encode = lambda x: real_forward(x) if torch.is_grad_enabled() else _with_grad(real_forward, x)
    try:
        with torch.no_grad():
            ref = model.visual(batch)
    finally:
        del expert.encode
    torch.testing.assert_close(fast, ref, **TOL)
    v = batch.views["clip_convnext"]
    with torch.no_grad():
        torch.testing.assert_close(expert(v), timm_tokens(expert, v), **TOL)


def _with_grad(fn, x):
    with torch.enable_grad():
        return fn(x).detach()


def test_what_keeps_timms_forward():
    expert = nano_expert()
    trunk = expert.trunk
    trunk.train()
    assert not convnext_nhwc_supported(trunk)  # dropout / drop path would be active
    trunk.eval()
    handle = trunk.stages[1].register_forward_pre_hook(lambda m, a: None)  # FSDP units, profilers
    assert not convnext_nhwc_supported(trunk)
    handle.remove()
    assert convnext_nhwc_supported(trunk)
    mlp = trunk.stages[2].blocks[0].mlp
    fc1 = mlp.fc1
    mlp.fc1 = nn.Sequential(fc1)  # a replaced layer (quantized, LoRA) computes something else
    assert not convnext_nhwc_supported(trunk)
    mlp.fc1 = fc1
    assert convnext_nhwc_supported(trunk)
    # with gradients (a trained expert) the tokens come from timm's forward and reach the weights
    trained = nano_expert(frozen=False).train()
    out = trained(views(2, NANO_CONVNEXT.view_size))
    out.sum().backward()
    assert trained.trunk.stages[0].blocks[0].mlp.fc1.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_normalize_equals_the_three_step_formula(dtype):
    expert = nano_expert().to(dtype)
    v = views(3, NANO_CONVNEXT.view_size, seed=1)
    mean = torch.tensor(NANO_CONVNEXT.mean).view(1, 3, 1, 1)
    std = torch.tensor(NANO_CONVNEXT.std).view(1, 3, 1, 1)
    ref = ((v.float() / 255.0 - mean) / std).to(dtype)
    out = expert.normalize(v)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=1e-6 if dtype == torch.float32 else 1e-2, atol=1e-6)
    # the cached (scale, shift) made under inference mode serve a later call with gradients enabled
    with torch.inference_mode():
        expert.normalize(v)
    with torch.enable_grad():
        torch.testing.assert_close(expert.normalize(v), ref, rtol=1e-6 if dtype == torch.float32 else 1e-2,
                                   atol=1e-6)


@pytest.mark.parametrize("grid", [2, 8])
def test_resampled_grids_and_other_head_norms_match_timm(grid):
    """A feature grid coarser or finer than the 4x4 map (pooled / repeated cells), and a head norm that is not
    a LayerNorm (run channels-first through its own forward)."""
    expert = nano_expert(seed=1)
    expert.feature_grid = grid
    v = views(3, NANO_CONVNEXT.view_size, seed=2)
    with torch.no_grad():
        fast = expert(v)
    assert fast.shape == (3, 1 + grid * grid, NANO_CONVNEXT.channels)
    torch.testing.assert_close(fast, timm_tokens(expert, v), **TOL)
    expert.trunk.head.norm = nn.GroupNorm(4, NANO_CONVNEXT.channels)
    perturb_(expert.trunk.head.norm, seed=5)
    assert convnext_nhwc_supported(expert.trunk)
    with torch.no_grad():
        fast = expert(v)
    torch.testing.assert_close(fast, timm_tokens(expert, v), **TOL)
