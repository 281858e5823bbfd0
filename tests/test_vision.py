"""Mixture of visual experts: parameter counts, token layout, resampling, normalisation, exact skipping,
freezing and checkpoint loading in real on-disk formats. Tiny timm models (the `nano` experts) only."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from sphinx_x.canvas import ImageBatch, collate_images, prepare_image
from sphinx_x.config import ConfigError, SphinxXConfig, VisionConfig, VisionExpertConfig
from sphinx_x.vision import (
    CheckpointError,
    MixtureOfVisualExperts,
    VisionExpert,
    count_vision_params,
    load_expert_checkpoint,
)


def nano_vision() -> VisionConfig:
    return SphinxXConfig.from_name("nano").vision


def nano_expert(kind: str, **overrides) -> VisionExpertConfig:
    (cfg,) = [e for e in nano_vision().experts if e.kind == kind]
    return dataclasses.replace(cfg, **overrides)


def random_views(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def perturb_(module: nn.Module, seed: int = 0) -> None:
    """Move every parameter away from its init (unit norms, 1e-6 layer scales) so comparisons bite."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def convnext_map(expert: VisionExpert, views: torch.Tensor) -> torch.Tensor:
    """Reference native ConvNeXt map: the trunk run as the public SPHINX code runs it (head pooling removed)."""
    trunk = expert.trunk
    with torch.no_grad():
        x = expert.normalize(views)
        return trunk.head.norm(trunk.forward_features(x))  # (V, C, h, w)


# ---- parameter counts --------------------------------------------------------------------------
def test_real_expert_parameter_counts_on_meta_device():
    counts = count_vision_params(SphinxXConfig.from_name("tiny").vision)
    assert counts["clip_convnext"] == pytest.approx(0.85e9, rel=0.01)  # OpenCLIP convnext_xxlarge trunk
    assert counts["dinov2"] == pytest.approx(1.14e9, rel=0.01)  # DINOv2 ViT-g/14
    with torch.device("meta"):
        mov = MixtureOfVisualExperts(SphinxXConfig.from_name("tiny").vision, d=2048)
    assert all(p.is_meta for p in mov.parameters())
    assert sum(p.numel() for p in mov.projector.parameters()) == (3072 + 1536) * 2048 + 2048 + 2 * 2048


def test_real_experts_give_257_tokens_per_view_on_meta_device():
    """Shapes of the published setup without computing: ConvNeXt-XXL at 512 px and ViT-g/14 at 224 px
    both have native 16x16 maps, so each view is 1 + 256 tokens and the projector sees 3072 + 1536."""
    vision = SphinxXConfig.from_name("tiny").vision
    with torch.device("meta"):
        mov = MixtureOfVisualExperts(vision, d=2048)
        views = {"clip_convnext": torch.empty(5, 3, 512, 512, dtype=torch.uint8),
                 "dinov2": torch.empty(5, 3, 224, 224, dtype=torch.uint8)}
        clip = mov.experts["clip_convnext"]
        assert clip.trunk.forward_features(clip.normalize(views["clip_convnext"])).shape == (5, 3072, 16, 16)
        assert mov.experts["dinov2"].trunk.patch_embed.grid_size == (16, 16)
        assert mov.experts["dinov2"](views["dinov2"]).shape == (5, 257, 1536)
        out = mov(ImageBatch(views, torch.zeros(1, 4, dtype=torch.bool)))
    assert out.shape == (5, 257, 2048)


def test_channel_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="channels is 100 but convnext_atto outputs 128"):
        VisionExpert(nano_expert("convnext", channels=100), feature_grid=4)
    with pytest.raises(ConfigError, match="view_size 70"):
        VisionExpert(nano_expert("dinov2", view_size=70), feature_grid=4)


# ---- tokens and resampling ---------------------------------------------------------------------
@pytest.mark.parametrize("kind,channels", [("convnext", 128), ("dinov2", 96)])
@pytest.mark.parametrize("grid", [2, 4, 6, 8])
def test_output_shape(kind, channels, grid):
    cfg = nano_expert(kind)
    out = VisionExpert(cfg, feature_grid=grid).eval()(random_views(3, cfg.view_size))
    assert out.shape == (3, 1 + grid * grid, channels)


def test_convnext_native_grid_and_summary_is_mean_of_grid():
    cfg = nano_expert("convnext")
    expert = VisionExpert(cfg, feature_grid=4).eval()
    perturb_(expert)
    views = random_views(2, cfg.view_size)
    out = expert(views).detach()
    ref = convnext_map(expert, views)  # (2, C, 4, 4)
    torch.testing.assert_close(out[:, 1:], ref.flatten(2).transpose(1, 2))  # raster order
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(dim=1))


def test_convnext_coarser_map_repeats_each_cell():
    cfg = nano_expert("convnext")
    expert = VisionExpert(cfg, feature_grid=8).eval()  # native 4x4 -> 8x8
    perturb_(expert)
    views = random_views(2, cfg.view_size)
    out = expert(views).detach()
    ref = convnext_map(expert, views).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out[:, 1:], ref.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(dim=1))


def test_convnext_finer_map_is_average_pooled():
    cfg = nano_expert("convnext")
    expert = VisionExpert(cfg, feature_grid=2).eval()  # native 4x4 -> 2x2
    perturb_(expert)
    views = random_views(2, cfg.view_size)
    out = expert(views).detach()
    native = convnext_map(expert, views)
    blocks = native.reshape(2, -1, 2, 2, 2, 2).mean(dim=(3, 5))  # mean over each 2x2 block
    torch.testing.assert_close(out[:, 1:], blocks.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(dim=1))


def test_non_integer_downsampling_is_adaptive_average_pooling():
    cfg = nano_expert("convnext")
    expert = VisionExpert(cfg, feature_grid=3).eval()  # native 4x4 -> 3x3: overlapping windows
    perturb_(expert)
    views = random_views(1, cfg.view_size)
    out = expert(views).detach()[0, 1:].reshape(3, 3, -1)
    native = convnext_map(expert, views)[0]
    windows = [(0, 2), (1, 3), (2, 4)]  # [floor(i*4/3), ceil((i+1)*4/3))
    for i, (r0, r1) in enumerate(windows):
        for j, (c0, c1) in enumerate(windows):
            torch.testing.assert_close(out[i, j], native[:, r0:r1, c0:c1].mean(dim=(1, 2)))


def test_non_integer_upsampling_is_nearest():
    cfg = nano_expert("convnext")
    expert = VisionExpert(cfg, feature_grid=6).eval()  # native 4x4 -> 6x6
    perturb_(expert)
    views = random_views(1, cfg.view_size)
    out = expert(views).detach()[0, 1:].reshape(6, 6, -1)
    native = convnext_map(expert, views)[0]
    for i in range(6):
        for j in range(6):
            torch.testing.assert_close(out[i, j], native[:, i * 4 // 6, j * 4 // 6])


@pytest.mark.parametrize("timm_kwargs,prefix", [({}, 1), ({"reg_tokens": 2, "no_embed_class": True}, 3)])
def test_dinov2_summary_is_cls_after_final_norm(timm_kwargs, prefix):
    base = nano_expert("dinov2")
    cfg = dataclasses.replace(base, timm_kwargs={**base.timm_kwargs, **timm_kwargs})
    expert = VisionExpert(cfg, feature_grid=4).eval()
    perturb_(expert)
    assert expert.trunk.num_prefix_tokens == prefix
    views = random_views(2, cfg.view_size)
    out = expert(views).detach()
    with torch.no_grad():
        ref = expert.trunk.forward_features(expert.normalize(views))  # timm applies the final norm here
    assert ref.shape[1] == prefix + 16
    torch.testing.assert_close(out[:, 0], ref[:, 0])
    torch.testing.assert_close(out[:, 1:], ref[:, prefix:])  # registers dropped, patches in raster order


def test_dinov2_coarser_patch_grid_repeats_cells():
    cfg = nano_expert("dinov2")
    expert = VisionExpert(cfg, feature_grid=8).eval()
    perturb_(expert)
    views = random_views(2, cfg.view_size)
    out = expert(views).detach()
    with torch.no_grad():
        ref = expert.trunk.forward_features(expert.normalize(views))
    patches = ref[:, 1:].transpose(1, 2).reshape(2, -1, 4, 4)
    up = patches.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(out[:, 1:], up.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, 0], ref[:, 0])


# ---- normalisation -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["convnext", "dinov2"])
def test_each_expert_normalises_with_its_own_mean_and_std(kind):
    colour = (100, 120, 140)
    # A mean that a uint8 colour hits exactly: that colour normalises to exactly zero.
    cfg = nano_expert(kind, mean=tuple(c / 255 for c in colour), std=(0.2, 0.3, 0.4))
    expert = VisionExpert(cfg, feature_grid=4).eval()
    perturb_(expert)
    r = cfg.view_size
    const = torch.tensor(colour, dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, r, r).contiguous()
    torch.testing.assert_close(expert.normalize(const), torch.zeros(2, 3, r, r), rtol=0, atol=0)
    with torch.no_grad():
        zero_feats = expert.trunk.forward_features(torch.zeros(2, 3, r, r))
    out = expert(const).detach()
    if kind == "dinov2":
        torch.testing.assert_close(out[:, 0], zero_feats[:, 0])
    else:
        torch.testing.assert_close(out[:, 1:], expert.trunk.head.norm(zero_feats).flatten(2).transpose(1, 2))

    views = random_views(2, r)
    x = views.float() / 255
    expected = (x - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    torch.testing.assert_close(expert.normalize(views), expected)


def test_default_experts_use_different_normalisations():
    clip, dino = nano_vision().experts
    assert clip.mean != dino.mean and clip.std != dino.std
    views = random_views(1, 56)
    a = VisionExpert(dataclasses.replace(clip, view_size=56), 4).normalize(views)
    b = VisionExpert(dino, 4).normalize(views)
    assert not torch.allclose(a, b)


def test_rejects_float_views():
    expert = VisionExpert(nano_expert("dinov2"), 4)
    with pytest.raises(TypeError, match="expected uint8"):
        expert(torch.zeros(1, 3, 56, 56))


# ---- skipping is exact -------------------------------------------------------------------------
def _noise_image(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_encoding_only_kept_views_equals_encoding_all_and_discarding():
    vision = nano_vision()
    skip_cfg = dataclasses.replace(vision, canvas=dataclasses.replace(vision.canvas, skip_padded_cells=True))
    all_cfg = dataclasses.replace(vision, canvas=dataclasses.replace(vision.canvas, skip_padded_cells=False))
    images = [_noise_image(200, 100, 0), _noise_image(60, 180, 1), _noise_image(90, 90, 2), _noise_image(300, 70, 3)]
    batch_skip = collate_images([prepare_image(im, skip_cfg) for im in images], skip_cfg)
    batch_all = collate_images([prepare_image(im, all_cfg) for im in images], all_cfg)

    torch.manual_seed(0)
    mov = MixtureOfVisualExperts(vision, d=32).eval()
    perturb_(mov)
    out_skip = mov(batch_skip).detach()
    out_all = mov(batch_all).detach()

    # Per image: the global view is always kept, then each cell unless skipped (raster order).
    keep = torch.cat([torch.cat([torch.ones(1, dtype=torch.bool), ~row]) for row in batch_skip.skipped])
    assert int((~keep).sum()) == 6  # 2:1 and 300x70 skip their bottom row, 1:3 its right column
    assert out_all.shape == (len(images) * 5, 17, 32)
    assert out_skip.shape == (int(keep.sum()), 17, 32)
    for name in batch_all.views:
        assert torch.equal(batch_skip.views[name], batch_all.views[name][keep])
    torch.testing.assert_close(out_skip, out_all[keep], rtol=1e-5, atol=1e-6)


# ---- freezing ----------------------------------------------------------------------------------
def test_frozen_expert_has_no_grad_and_stays_in_eval_mode():
    vision = nano_vision()
    clip, dino = vision.experts
    vision = dataclasses.replace(vision, experts=[dataclasses.replace(clip, frozen=True), dino])
    mov = MixtureOfVisualExperts(vision, d=32)
    mov.train()
    frozen, trainable = mov.experts["clip_convnext"], mov.experts["dinov2"]
    assert not any(m.training for m in frozen.modules())
    assert all(m.training for m in trainable.modules())
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable_ids = {id(p) for p in mov.trainable_parameters()}
    assert not any(id(p) in trainable_ids for p in frozen.parameters())

    images = collate_images([prepare_image(_noise_image(120, 80, 0), vision)], vision)
    assert not frozen(images.views["clip_convnext"]).requires_grad  # ran under no_grad
    mov(images).square().mean().backward()
    assert all(p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mov.projector.parameters())
    assert trainable.trunk.patch_embed.proj.weight.grad.abs().sum() > 0

    mov.eval()
    mov.train()  # back to train mode: the frozen expert still stays in eval
    assert not frozen.training and trainable.training
    frozen.requires_grad_(True)  # even if a caller re-enables grads, a frozen expert runs under no_grad
    assert not frozen(images.views["clip_convnext"]).requires_grad


def test_nano_experts_are_trainable():
    mov = MixtureOfVisualExperts(nano_vision(), d=32).train()
    images = collate_images([prepare_image(_noise_image(64, 64, 5), nano_vision())], nano_vision())
    mov(images).square().mean().backward()
    assert all(expert.training for expert in mov.experts.values())
    assert all(p.requires_grad for p in mov.parameters())
    assert mov.experts["clip_convnext"].trunk.stem[0].weight.grad.abs().sum() > 0
    assert mov.experts["dinov2"].trunk.cls_token.grad.abs().sum() > 0


# ---- checkpoints -------------------------------------------------------------------------------
def _open_clip_state(trunk_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state = {f"visual.trunk.{k}": v.clone() for k, v in trunk_state.items()}
    state["visual.head.proj.weight"] = torch.randn(16, 128, generator=g)
    state["logit_scale"] = torch.tensor(4.6)
    state["token_embedding.weight"] = torch.randn(100, 16, generator=g)
    state["text_projection"] = torch.randn(16, 16, generator=g)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_open_clip_checkpoint_loads_trunk_and_ignores_head(tmp_path, suffix):
    cfg = nano_expert("convnext")
    source = VisionExpert(cfg, 4).eval()
    perturb_(source, seed=3)
    state = _open_clip_state(source.trunk.state_dict())
    path = tmp_path / f"open_clip_convnext{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)

    loaded = VisionExpert(dataclasses.replace(cfg, checkpoint=str(path), checkpoint_format="open_clip"), 4).eval()
    views = random_views(2, cfg.view_size)
    assert torch.equal(loaded(views), source(views))
    fresh = VisionExpert(cfg, 4).eval()
    assert not torch.allclose(fresh(views), source(views))


def test_real_open_clip_model_state_dict_matches_sphinx_trunk_usage(tmp_path):
    """A genuine OpenCLIP CLIP model with a timm ConvNeXt trunk, saved as OpenCLIP saves it; the expert's
    tokens equal the public SPHINX code's use of that trunk (head pooling removed, map flattened)."""
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir()
    (cfg_dir / "sphinxtest_convnext_atto.json").write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "timm_drop": 0.0, "timm_drop_path": 0.1, "image_size": 64},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
    }))
    open_clip.add_model_config(cfg_dir)
    clip = open_clip.create_model("sphinxtest_convnext_atto", pretrained=None).eval()
    perturb_(clip, seed=4)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip.state_dict(), path)

    cfg = VisionExpertConfig(name="clip", kind="convnext", timm_model="convnext_atto", view_size=64, channels=320,
                             checkpoint=str(path), checkpoint_format="open_clip")
    expert = VisionExpert(cfg, feature_grid=2).eval()
    views = random_views(3, 64)
    trunk = clip.visual.trunk
    trunk.head.global_pool = nn.Identity()
    trunk.head.flatten = nn.Identity()
    with torch.no_grad():
        ref = trunk(expert.normalize(views))  # (3, 320, 2, 2)
    assert ref.shape == (3, 320, 2, 2)
    out = expert(views).detach()
    torch.testing.assert_close(out[:, 1:], ref.flatten(2).transpose(1, 2))
    torch.testing.assert_close(out[:, 0], ref.flatten(2).mean(dim=2))


def test_dinov2_checkpoint_with_other_pos_embed_size_is_resampled(tmp_path):
    cfg = nano_expert("dinov2")
    source = VisionExpert(dataclasses.replace(cfg, view_size=70, timm_kwargs={**cfg.timm_kwargs, "img_size": 70}), 5)
    perturb_(source, seed=5)
    src_state = source.trunk.state_dict()
    assert src_state["pos_embed"].shape == (1, 1 + 25, 96)
    path = tmp_path / "dinov2_timm.safetensors"
    save_file(src_state, str(path))

    loaded = VisionExpert(dataclasses.replace(cfg, checkpoint=str(path)), 4)
    state = loaded.trunk.state_dict()
    expected_pos = resample_abs_pos_embed(src_state["pos_embed"], new_size=(4, 4), num_prefix_tokens=1)
    torch.testing.assert_close(state["pos_embed"], expected_pos)
    assert not torch.allclose(state["pos_embed"][:, 1:], src_state["pos_embed"][:, 1:17])
    for k, v in src_state.items():
        if k != "pos_embed":
            assert torch.equal(state[k], v), k


def test_original_dinov2_layout_with_mask_token_loads(tmp_path):
    cfg = nano_expert("dinov2")
    source = VisionExpert(cfg, 4).eval()
    perturb_(source, seed=6)
    state = dict(source.trunk.state_dict(), mask_token=torch.zeros(1, 96))  # facebookresearch/dinov2 layout
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    loaded = VisionExpert(dataclasses.replace(cfg, checkpoint=str(path)), 4).eval()
    views = random_views(2, 56)
    assert torch.equal(loaded(views), source(views))


def test_wrong_keys_give_a_clear_error(tmp_path):
    dino_state = VisionExpert(nano_expert("dinov2"), 4).trunk.state_dict()
    path = tmp_path / "not_a_convnext.safetensors"
    save_file(dino_state, str(path))
    convnext = VisionExpert(nano_expert("convnext"), 4)
    with pytest.raises(CheckpointError, match=r"not_a_convnext\.safetensors.*convnext_atto"):
        load_expert_checkpoint(convnext, path, "timm")
    with pytest.raises(CheckpointError, match=r"not_a_convnext\.safetensors: no keys under 'visual.trunk.'"):
        load_expert_checkpoint(convnext, path, "open_clip")

    convnext_state = convnext.trunk.state_dict()
    del convnext_state["stem.0.weight"]
    convnext_state["stages.9.extra.weight"] = torch.zeros(1)
    path2 = tmp_path / "broken_convnext.safetensors"
    save_file(convnext_state, str(path2))
    with pytest.raises(CheckpointError, match=r"broken_convnext.*missing 1: stem\.0\.weight.*stages\.9\.extra"):
        load_expert_checkpoint(convnext, path2, "timm")


def test_checkpoint_file_errors(tmp_path):
    expert = VisionExpert(nano_expert("dinov2"), 4)
    with pytest.raises(CheckpointError, match="missing.safetensors: vision expert checkpoint not found"):
        load_expert_checkpoint(expert, tmp_path / "missing.safetensors")
    pickled = tmp_path / "pickled.pt"
    torch.save({"weights": object()}, pickled)  # weights_only refuses arbitrary objects
    with pytest.raises(CheckpointError, match="pickled.pt: cannot read checkpoint"):
        load_expert_checkpoint(expert, pickled)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="garbage.safetensors: cannot read safetensors file"):
        load_expert_checkpoint(expert, tmp_path / "garbage.safetensors")
    with pytest.raises(CheckpointError, match="unsupported checkpoint suffix"):
        (tmp_path / "w.npz").write_bytes(b"")
        load_expert_checkpoint(expert, tmp_path / "w.npz")


def test_meta_construction_skips_checkpoint_reading(tmp_path):
    cfg = nano_expert("convnext", checkpoint=str(tmp_path / "absent.safetensors"))
    with torch.device("meta"):
        expert = VisionExpert(cfg, 4)  # counting parameters must not touch the file
    assert next(expert.parameters()).is_meta
    with pytest.raises(CheckpointError, match="absent.safetensors"):
        VisionExpert(cfg, 4)


def test_mixture_concatenates_expert_tokens_then_projects():
    vision = nano_vision()
    mov = MixtureOfVisualExperts(vision, d=32).eval()
    perturb_(mov, seed=7)
    images = collate_images([prepare_image(_noise_image(80, 80, 9), vision)], vision)
    out = mov(images)
    feats = torch.cat([mov.experts[e.name](images.views[e.name]) for e in vision.experts], dim=-1)
    assert feats.shape == (5, 17, 128 + 96)
    torch.testing.assert_close(out, mov.projector(feats))
    assert isinstance(mov.projector[0], nn.Linear) and isinstance(mov.projector[1], nn.LayerNorm)


def test_projector_norm_init_sets_the_scale_image_tokens_start_at():
    from sphinx_x.config import SphinxXConfig
    from sphinx_x.model import SphinxX

    base = SphinxXConfig.from_name("nano")
    small = base.with_overrides({"vision": {"projector_norm_init": 0.02}})
    assert SphinxXConfig.from_dict(small.to_dict()).vision.projector_norm_init == 0.02  # saved and read back
    norms = []
    for cfg in (base, small):
        torch.manual_seed(0)
        model = SphinxX(cfg)
        feats = torch.randn(3, cfg.vision.channels)
        norms.append(float(model.visual.projector(feats).norm(dim=-1).mean()))
    assert abs(norms[0] - base.llm.hidden_size ** 0.5) < 1.0  # LayerNorm weight 1: norm sqrt(d)
    assert abs(norms[1] / norms[0] - 0.02) < 1e-3
