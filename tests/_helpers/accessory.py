"""Tiny stand-ins of the released SPHINX presets: the same structure (experts, order, canvas, views, float16
resizes, re-normalisation formula, run-time DINOv2 table) with every size divided by 8 and tiny dims.

Real -> tiny: canvas 224/448/512/1024 -> 28/56/64/128 px; 224 px views (16 x 16 patches of 14) -> 28 px
(2 x 2); ConvNeXt 512 px views (16 x 16 map) -> 64 px (2 x 2, stride 32); its 224 -> 256 input resize ->
28 -> 32 (a 1 x 1 map repeated to 2 x 2, like 8 x 8 -> 16 x 16); DINOv2's 37 x 37 table -> 5 x 5;
feature grid 16 -> 2; 32 Q-Former queries -> 4.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sphinx_x.config import PRESETS, SphinxXConfig

RELEASED = ["sphinx", "sphinx-1k", "sphinx-v2-1k", "sphinx-tiny", "sphinx-tiny-1k", "sphinx-moe", "sphinx-moe-1k"]
TINY_QUERIES = 4

_TINY_EXPERTS = {
    "blip2_qformer": dict(
        channels=32,
        arch_kwargs={
            "vision_config": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=28, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True),
            "qformer_config": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   cross_attention_frequency=2, encoder_hidden_size=24, layer_norm_eps=1e-12),
            "num_query_tokens": TINY_QUERIES,
        },
    ),
    "clip_vit": dict(
        channels=32,
        arch_kwargs={"quick_gelu": False, "embed_dim": 16,
                     "vision_cfg": {"width": 32, "layers": 2, "head_width": 16, "patch_size": 14, "image_size": 28}},
    ),
    "convnext": dict(channels=32, timm_model="convnext_atto",
                     timm_kwargs={"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}),
    "dinov2": dict(channels=24, timm_model="vit_small_patch14_dinov2",
                   timm_kwargs={"img_size": 70, "embed_dim": 24, "depth": 2, "num_heads": 2, "init_values": 1.0}),
}

TINY_LLAMA = dict(arch="llama", vocab_size=96, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                  intermediate_size=64, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5)
TINY_MIXTRAL = dict(TINY_LLAMA, arch="mixtral", num_experts=4, num_experts_per_tok=2, rope_theta=1000000.0)


def tiny_accessory_config(preset: str) -> SphinxXConfig:
    data = copy.deepcopy(PRESETS[preset])
    vision = data["vision"]
    vision["feature_grid"] = 2
    vision["canvas"]["size"] //= 8
    for e in vision["experts"]:
        e["view_size"] //= 8
        e["input_resize"] = e.get("input_resize", 0) // 8
        e.update(copy.deepcopy(_TINY_EXPERTS[e["kind"]]))
    arch = data["llm"]["arch"]
    data["llm"] = dict(TINY_MIXTRAL if arch == "mixtral" else TINY_LLAMA,
                       router_aux_loss_coef=data["llm"].get("router_aux_loss_coef", 0.01))
    return SphinxXConfig.from_dict(data)


def perturb_(module: nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Move every parameter away from its init (unit norms, tiny layer scales, zero queries)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
