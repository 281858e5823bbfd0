"""Names of the released LLaMA2-Accessory SPHINX checkpoints' vision side in this model's state dict.

The released checkpoints store `{"model": state_dict}` with every key under `llma.`; the language model
(`tok_embeddings`, `layers.N.*`, `norm`, `output`) is renamed by the converter (sphinx_x.convert), which
also merges model-parallel shards and permutes rotary rows. This module owns everything else: the four
vision experts, the two projectors and the image tags, for every released `llama_type`.

    PRESET_BY_LLAMA_TYPE["llama_ens5"]                     -> "sphinx-1k"
    vision_key("llama_ens5", "llma.dinov2_vitg14.blocks.0.mlp.w12.weight")
                                                           -> "visual.experts.dinov2.trunk.blocks.0.mlp.fc1.weight"
    vision_tensor(llama_type, official_key, tensor)        -> the tensor in our layout (image tags flattened)
    fill_missing(llama_type, our_key, shape)               -> a value for keys with no official source
"""

from __future__ import annotations

import re

import torch

# llama_type (meta.json) -> preset. SPHINX-1k and SPHINX-v2-1k share `llama_ens5`; the converter picks
# the 1k preset (same architecture and dims; the release name is the only difference).
PRESET_BY_LLAMA_TYPE: dict[str, str] = {
    "llama_ens": "sphinx",
    "llama_ens5": "sphinx-1k",
    "llama_ens_light": "sphinx-tiny",
    "llama_ens5_light": "sphinx-tiny-1k",
    "mixtral_sparse_ens": "sphinx-moe",
    "mixtral_sparse_ens5": "sphinx-moe-1k",
}
# Which official expert modules each architecture has (light = ConvNeXt + DINOv2 only).
_LIGHT = ("llama_ens_light", "llama_ens5_light")

# official module prefix (after `llma.`) -> our expert name (the preset's `vision.experts[*].name`)
_EXPERT_PREFIX = {
    "openclip_convnext_xxl.": "clip_convnext",
    "dinov2_vitg14.": "dinov2",
    "clip.visual.": "clip",
    "qformer.": "qformer",
}

# The BLIP-2 Q-Former as saved by transformers 4.x has a text-side FFN (`intermediate`, `output`) in every
# layer; queries never use it and transformers 5 no longer builds it.
_QFORMER_TEXT_FFN = re.compile(r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.")
# torch.hub DINOv2 -> timm ViT names (SwiGLU packed: w12 -> fc1, w3 -> fc2).
_DINOV2_RENAMES = ((".mlp.w12.", ".mlp.fc1."), (".mlp.w3.", ".mlp.fc2."))


def _check_type(llama_type: str) -> None:
    if llama_type not in PRESET_BY_LLAMA_TYPE:
        raise KeyError(f"unknown llama_type {llama_type!r}; known: {', '.join(PRESET_BY_LLAMA_TYPE)}")


def is_llm_key(official_key: str) -> bool:
    """True for the language-model keys the converter maps itself."""
    key = official_key.removeprefix("llma.")
    return key.startswith(("layers.", "tok_embeddings.", "output.")) or key == "norm.weight"


def vision_key(llama_type: str, official_key: str) -> str | None:
    """Our state-dict key for an official non-LLM key, None for keys deliberately dropped; KeyError if unknown."""
    _check_type(llama_type)
    key = official_key.removeprefix("llma.")
    light = llama_type in _LIGHT
    if key in ("start_img", "end_img"):
        return "image_start" if key == "start_img" else "image_end"
    if key.startswith("visual_proj."):
        return "visual.projector." + key[len("visual_proj.") :]
    if key.startswith("qformer_proj.") and not light:
        return "visual.own_projectors.qformer." + key[len("qformer_proj.") :]
    if key.startswith("clip.") and not key.startswith("clip.visual.") and not light:
        return None  # the CLIP text tower's leftovers (token_embedding, ln_final, ...): never used
    for prefix, name in _EXPERT_PREFIX.items():
        if not key.startswith(prefix) or (light and name in ("clip", "qformer")):
            continue
        rest = key[len(prefix) :]
        if name == "dinov2":
            if rest == "mask_token":
                return None  # masked-image training only
            for old, new in _DINOV2_RENAMES:
                rest = rest.replace(old, new)
        elif name == "clip_convnext" and rest.startswith("head.fc."):
            return None  # the trunk's classifier (Identity in open_clip); never used
        elif name == "qformer":
            if _QFORMER_TEXT_FFN.match(rest) or rest.startswith(("language_projection.", "language_model.")):
                return None
            if not rest.startswith(("vision_model.", "qformer.")) and rest != "query_tokens":
                break
        return f"visual.experts.{name}.trunk.{rest}"
    raise KeyError(f"{official_key}: not a known key of llama_type {llama_type!r}")


def vision_tensor(llama_type: str, official_key: str, tensor: torch.Tensor) -> torch.Tensor:
    """An official tensor in our layout: the image tags (1, 1, d) become (d,); everything else is unchanged."""
    _check_type(llama_type)
    if official_key.removeprefix("llma.") in ("start_img", "end_img"):
        return tensor.reshape(-1)
    return tensor


def fill_missing(llama_type: str, our_key: str, shape: tuple[int, ...] | torch.Size) -> torch.Tensor | None:
    """A value for our keys that no official key provides: the skip token (these presets never skip a cell)."""
    _check_type(llama_type)
    if our_key == "skip_token":
        return torch.zeros(tuple(shape))
    return None
