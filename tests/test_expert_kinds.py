"""Expert kinds: the registry, the CLIP ViT and BLIP-2 Q-Former kinds against their own libraries' forward
passes, their weights loaded from tiny models saved in the real formats, and clear config errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _helpers.accessory import TINY_QUERIES, perturb_, tiny_accessory_config
from safetensors.torch import save_file

from sphinx_x.config import ConfigError, SphinxXConfig, VisionExpertConfig
from sphinx_x.experts import CheckpointError, VisionExpert, register_expert, registered_kinds
from sphinx_x.experts.timm_experts import ConvNeXtExpert


def expert_cfg(which: str, **overrides) -> VisionExpertConfig:
    cfg = next(e for e in tiny_accessory_config("sphinx").vision.experts if e.kind == which)
    return dataclasses.replace(cfg, **overrides)


def test_registry_builds_each_kind_by_name():
    assert {"convnext", "dinov2", "clip_vit", "blip2_qformer"} <= set(registered_kinds())
    for kind in ("convnext", "dinov2", "clip_vit", "blip2_qformer"):
        expert = VisionExpert(expert_cfg(kind), 2)
        assert type(expert).kind == kind and isinstance(expert, VisionExpert)


def test_a_new_kind_is_one_registered_class():
    @register_expert("test_mean_colour")
    class MeanColour(ConvNeXtExpert):  # reuses the timm trunk, own token extraction
        def encode(self, x):
            return x.mean(dim=(2, 3))[:, None].expand(-1, 1 + self.feature_grid**2, -1).repeat(1, 1, 32 // 3 + 1)[
                ..., :32
            ]

    try:
        cfg = dataclasses.replace(expert_cfg("convnext"), kind="test_mean_colour")
        expert = VisionExpert(cfg, 2)
        assert isinstance(expert, MeanColour)
        assert expert(torch.zeros(1, 3, 28, 28, dtype=torch.uint8)).shape == (1, 5, 32)
    finally:
        from sphinx_x.experts import base

        del base._KINDS["test_mean_colour"]


# ---- CLIP ViT (open_clip) ----------------------------------------------------------------------
def _tiny_clip():
    import open_clip

    vision_cfg = expert_cfg("clip_vit").arch_kwargs["vision_cfg"]
    text_cfg = dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=vision_cfg, text_cfg=text_cfg).eval()
    perturb_(model, seed=11)
    return model


def test_clip_tokens_are_open_clips_ln_post_tokens():
    clip = _tiny_clip()
    cfg = expert_cfg("clip_vit")
    expert = VisionExpert(cfg, 2).eval()
    expert.trunk.load_state_dict(clip.visual.state_dict())
    x = torch.randn(3, 3, 28, 28)
    clip.visual.output_tokens = True
    with torch.no_grad():
        pooled, patch_tokens = clip.visual(x)  # open_clip's own forward: ln_post, CLS pooled then proj
        out = expert.forward_normalized(x)
    assert out.shape == (3, 1 + 4, 32)
    torch.testing.assert_close(out[:, 1:], patch_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[:, 0] @ clip.visual.proj, pooled, rtol=0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_clip_loads_an_open_clip_checkpoint_and_ignores_the_text_tower(tmp_path, suffix):
    clip = _tiny_clip()
    path = tmp_path / f"open_clip_model{suffix}"
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = VisionExpert(expert_cfg("clip_vit", checkpoint=str(path)), 2).eval()
    for k, v in clip.visual.state_dict().items():
        assert torch.equal(loaded.trunk.state_dict()[k], v), k
    save_file({"token_embedding.weight": torch.zeros(2, 2)}, str(tmp_path / "text_only.safetensors"))
    with pytest.raises(CheckpointError, match=r"text_only\.safetensors: no keys under 'visual\.'"):
        VisionExpert(expert_cfg("clip_vit", checkpoint=str(tmp_path / "text_only.safetensors")), 2)
    del state["visual.ln_post.weight"]
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError, match=r"broken\.safetensors: keys do not match.*missing 1: ln_post\.weight"):
        VisionExpert(expert_cfg("clip_vit", checkpoint=str(tmp_path / "broken.safetensors")), 2)


def test_clip_gelu_follows_the_config():
    from open_clip.transformer import QuickGELU

    plain = VisionExpert(expert_cfg("clip_vit"), 2)
    quick = VisionExpert(expert_cfg("clip_vit", arch_kwargs={**expert_cfg("clip_vit").arch_kwargs,
                                                            "quick_gelu": True}), 2)
    assert not any(isinstance(m, QuickGELU) for m in plain.modules())
    assert any(isinstance(m, QuickGELU) for m in quick.modules())


# ---- BLIP-2 Q-Former (transformers) ------------------------------------------------------------
def _tiny_blip2(tmp_path):
    from transformers import Blip2Config, Blip2Model, OPTConfig

    kw = expert_cfg("blip2_qformer").arch_kwargs
    text = OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                     max_position_embeddings=32, word_embed_proj_dim=16)
    config = Blip2Config(vision_config=kw["vision_config"], qformer_config=kw["qformer_config"],
                         text_config=text.to_dict(), num_query_tokens=kw["num_query_tokens"])
    model = Blip2Model(config).eval()
    perturb_(model, seed=12)
    model.save_pretrained(tmp_path / "blip2")  # config.json + model.safetensors, the hub layout
    return model


def test_qformer_tokens_are_get_qformer_features_from_a_saved_blip2_model(tmp_path):
    blip2 = _tiny_blip2(tmp_path)
    expert = VisionExpert(expert_cfg("blip2_qformer", checkpoint=str(tmp_path / "blip2")), 2).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = blip2.get_qformer_features(pixel_values=x)
        ref = getattr(ref, "last_hidden_state", ref)
        out = expert.forward_normalized(x)
    assert out.shape == (2, TINY_QUERIES, 32)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    fresh = VisionExpert(expert_cfg("blip2_qformer"), 2).eval()
    assert not torch.allclose(fresh.forward_normalized(x), out)


def test_qformer_checkpoint_errors_name_the_file(tmp_path):
    _tiny_blip2(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        VisionExpert(expert_cfg("blip2_qformer", checkpoint=str(tmp_path)), 2)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "blip2" / "model.safetensors"))
    state.pop("query_tokens")
    state["qformer.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(1)  # transformers-4 text FFN: ignored
    save_file(state, str(tmp_path / "no_queries.safetensors"))
    with pytest.raises(CheckpointError, match=r"no_queries\.safetensors: keys do not match.*missing 1: query_tokens"):
        VisionExpert(expert_cfg("blip2_qformer", checkpoint=str(tmp_path / "no_queries.safetensors")), 2)


# ---- config errors -----------------------------------------------------------------------------
def test_bad_expert_configs_are_named():
    with pytest.raises(ConfigError, match=r"'clip_convnext': kind must be one of .*'convnext'.*got 'resnet'"):
        expert_cfg("convnext", kind="resnet")
    with pytest.raises(ConfigError, match="kind 'blip2_qformer' needs own_projector: true"):
        expert_cfg("blip2_qformer", own_projector=False)
    with pytest.raises(ConfigError, match="pos_embed 'runtime_bicubic' is for kind 'dinov2' only"):
        expert_cfg("convnext", pos_embed="runtime_bicubic")
    with pytest.raises(ConfigError, match="pos_embed must be 'resampled' or 'runtime_bicubic'"):
        expert_cfg("dinov2", pos_embed="bilinear")
    with pytest.raises(ConfigError, match="renorm must be 'unnormalize' or 'affine'"):
        expert_cfg("dinov2", renorm="other")
    with pytest.raises(ConfigError, match="checkpoint_format must be one of 'open_clip' for kind 'clip_vit'"):
        expert_cfg("clip_vit", checkpoint_format="hf")
    with pytest.raises(ConfigError, match="view_size 56 but ViT-L-14 is built for 28 px"):
        expert_cfg("clip_vit", view_size=56)
    with pytest.raises(ConfigError, match=r"unknown arch_kwargs \['layers'\]"):
        expert_cfg("clip_vit", arch_kwargs={"layers": 2})
    with pytest.raises(ConfigError, match="arch 'ViT-Q-99' is not an open_clip model config"):
        expert_cfg("clip_vit", arch="ViT-Q-99")
    with pytest.raises(ConfigError, match="encoder_hidden_size 1408 != vision_config.hidden_size 24"):
        expert_cfg("blip2_qformer", arch_kwargs={**expert_cfg("blip2_qformer").arch_kwargs, "qformer_config": {}})
    with pytest.raises(ConfigError, match="needs timm_model"):
        expert_cfg("dinov2", timm_model="")
    with pytest.raises(ConfigError, match="view_size 30 is not a multiple of the patch size 14"):
        VisionExpert(expert_cfg("dinov2", view_size=30), 2)


def test_bad_canvas_and_vision_configs_are_named():
    data = SphinxXConfig.from_name("sphinx").to_dict()

    def build(**canvas):
        d = {**data, "vision": {**data["vision"], "canvas": {**data["vision"]["canvas"], **canvas}}}
        return SphinxXConfig.from_dict(d)

    with pytest.raises(ConfigError, match="canvas.preprocess must be 'sphinx-x' or 'accessory', got 'llava'"):
        build(preprocess="llava")
    with pytest.raises(ConfigError, match="canvas.size must be > 0"):
        build(size=0)
    with pytest.raises(ConfigError, match="set pad_anchor 'center' and skip_padded_cells false"):
        build(skip_padded_cells=True)
    with pytest.raises(ConfigError, match="canvas.grid must be >= 0"):
        build(grid=-1)
    experts = [dict(e, own_projector=True) for e in data["vision"]["experts"] if e["kind"] == "blip2_qformer"]
    with pytest.raises(ConfigError, match="at least one expert must join the shared block"):
        SphinxXConfig.from_dict({**data, "vision": {**data["vision"], "experts": experts}})


def test_presets_round_trip_through_json(tmp_path):
    for name in ("sphinx-1k", "sphinx-tiny"):
        cfg = SphinxXConfig.from_name(name)
        cfg.save(tmp_path / f"{name}.json")
        assert SphinxXConfig.load(tmp_path / f"{name}.json") == cfg


def test_dinov2_runtime_expert_loads_the_original_layout_without_resampling(tmp_path):
    cfg = expert_cfg("dinov2")
    source = VisionExpert(cfg, 2)
    perturb_(source, seed=13)
    state = dict(source.trunk.state_dict(), mask_token=torch.zeros(1, 24))  # facebookresearch/dinov2 layout
    assert state["pos_embed"].shape == (1, 1 + 5 * 5, 24)
    torch.save(state, tmp_path / "dinov2_pretrain.pth")
    loaded = VisionExpert(dataclasses.replace(cfg, checkpoint=str(tmp_path / "dinov2_pretrain.pth")), 2).eval()
    assert torch.equal(loaded.trunk.pos_embed, state["pos_embed"])  # kept at its stored size
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.forward_normalized(x), source.eval().forward_normalized(x))


def test_every_kind_names_its_blocks_as_fsdp_units():
    from sphinx_x.model import SphinxX
    from sphinx_x.train.distributed import shard_units

    model = SphinxX(tiny_accessory_config("sphinx-1k"))
    units = shard_units(model)
    ex = model.visual.experts
    expected = [*model.llm.get_decoder().layers, *ex["qformer"].trunk.vision_model.encoder.layers,
                *ex["qformer"].trunk.qformer.encoder.layer, *ex["clip"].trunk.transformer.resblocks,
                *ex["clip_convnext"].trunk.stages, *ex["dinov2"].trunk.blocks]
    assert [id(u) for u in units] == [id(u) for u in expected]
    assert len(units) == 2 + (2 + 2) + 2 + 4 + 2
