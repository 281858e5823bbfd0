"""Official LLaMA2-Accessory vision-side key names -> this model's state dict (sphinx_x.accessory_keys).

The official names are produced by the libraries the official code builds its experts with (an open_clip
CLIP, a transformers Blip2Model, a timm ConvNeXt trunk, a DINOv2 ViT) around tiny stand-in sizes."""

from __future__ import annotations

import pytest
import torch
from _helpers.accessory import tiny_accessory_config

from sphinx_x.accessory_keys import PRESET_BY_LLAMA_TYPE, fill_missing, is_llm_key, vision_key, vision_tensor
from sphinx_x.config import PRESETS
from sphinx_x.model import SphinxX


def official_vision_state(model: SphinxX, four_experts: bool) -> dict[str, torch.Tensor]:
    """A state dict named as the official `llma.` model names its vision side."""
    import open_clip
    from transformers import Blip2Config, Blip2Model, OPTConfig

    ex = model.visual.experts
    d = model.image_start.shape[0]
    state = {f"llma.openclip_convnext_xxl.{k}": v for k, v in ex["clip_convnext"].trunk.state_dict().items()}
    state |= {f"llma.dinov2_vitg14.{k}": v for k, v in ex["dinov2"].trunk.state_dict().items()}
    state["llma.dinov2_vitg14.mask_token"] = torch.zeros(1, 24)
    state |= {f"llma.visual_proj.{k}": v for k, v in model.visual.projector.state_dict().items()}
    state["llma.start_img"] = torch.rand(1, 1, d)
    state["llma.end_img"] = torch.rand(1, 1, d)
    if four_experts:
        clip_cfg = next(e for e in model.config.vision.experts if e.kind == "clip_vit").arch_kwargs
        clip = open_clip.CLIP(embed_dim=16, vision_cfg=clip_cfg["vision_cfg"],
                              text_cfg=dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1))
        clip.transformer = None  # as the official code does
        state |= {f"llma.clip.{k}": v for k, v in clip.state_dict().items()}
        q_cfg = next(e for e in model.config.vision.experts if e.kind == "blip2_qformer").arch_kwargs
        text = OPTConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2)
        blip2 = Blip2Model(Blip2Config(vision_config=q_cfg["vision_config"], qformer_config=q_cfg["qformer_config"],
                                       text_config=text.to_dict(), num_query_tokens=q_cfg["num_query_tokens"]))
        blip2.language_projection = None
        blip2.language_model = None
        state |= {f"llma.qformer.{k}": v for k, v in blip2.state_dict().items()}
        # transformers 4.x (what the released checkpoints were saved with) also has a text FFN per layer
        state["llma.qformer.qformer.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 32)
        state["llma.qformer.qformer.encoder.layer.1.output.LayerNorm.bias"] = torch.zeros(32)
        state |= {f"llma.qformer_proj.{k}": v for k, v in model.visual.own_projectors["qformer"].state_dict().items()}
    return state


@pytest.mark.parametrize("llama_type", list(PRESET_BY_LLAMA_TYPE))
def test_every_official_vision_key_lands_on_a_model_key(llama_type):
    preset = PRESET_BY_LLAMA_TYPE[llama_type]
    assert preset in PRESETS
    model = SphinxX(tiny_accessory_config(preset))
    official = official_vision_state(model, four_experts="light" not in llama_type)
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    mapped = {}
    for key, tensor in official.items():
        assert not is_llm_key(key), key
        target = vision_key(llama_type, key)
        if target is None:
            continue
        assert target in ours, (key, target)
        assert target not in mapped, f"{key} and another key both map to {target}"
        mapped[target] = vision_tensor(llama_type, key, tensor)
        assert mapped[target].shape == ours[target].shape, key
    missing = set(ours) - set(mapped)
    assert missing == {"skip_token"}
    mapped["skip_token"] = fill_missing(llama_type, "skip_token", ours["skip_token"].shape)
    assert not mapped["skip_token"].any()
    model.load_state_dict(mapped, strict=False)  # the LLM side is the converter's
    assert torch.equal(model.image_start, official["llma.start_img"].reshape(-1))


def test_specific_names():
    assert vision_key("llama_ens", "llma.dinov2_vitg14.blocks.3.mlp.w12.weight") == (
        "visual.experts.dinov2.trunk.blocks.3.mlp.fc1.weight")
    assert vision_key("llama_ens", "dinov2_vitg14.blocks.3.mlp.w3.bias") == (
        "visual.experts.dinov2.trunk.blocks.3.mlp.fc2.bias")
    assert vision_key("llama_ens", "llma.dinov2_vitg14.pos_embed") == "visual.experts.dinov2.trunk.pos_embed"
    assert vision_key("llama_ens", "llma.dinov2_vitg14.mask_token") is None
    assert vision_key("llama_ens", "llma.clip.logit_scale") is None
    assert vision_key("llama_ens", "llma.clip.visual.proj") == "visual.experts.clip.trunk.proj"
    assert vision_key("mixtral_sparse_ens5", "llma.qformer.query_tokens") == "visual.experts.qformer.trunk.query_tokens"
    assert vision_key("llama_ens5", "llma.qformer_proj.1.bias") == "visual.own_projectors.qformer.1.bias"
    assert vision_key("llama_ens_light", "llma.visual_proj.0.weight") == "visual.projector.0.weight"
    assert is_llm_key("llma.layers.0.attention.wq.weight") and is_llm_key("llma.norm.weight")
    assert not is_llm_key("llma.dinov2_vitg14.norm.weight")


def test_unknown_keys_and_types_raise():
    with pytest.raises(KeyError, match="llma.mystery.weight: not a known key of llama_type 'llama_ens'"):
        vision_key("llama_ens", "llma.mystery.weight")
    with pytest.raises(KeyError, match="clip.visual.conv1.weight: not a known key of llama_type 'llama_ens_light'"):
        vision_key("llama_ens_light", "llma.clip.visual.conv1.weight")  # the light models have no CLIP
    with pytest.raises(KeyError, match="unknown llama_type 'llama_ens9'; known: llama_ens"):
        vision_key("llama_ens9", "llma.start_img")
    with pytest.raises(KeyError, match="not a known key"):
        vision_key("llama_ens", "llma.qformer.other.weight")
