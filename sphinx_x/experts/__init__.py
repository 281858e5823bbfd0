"""Vision experts: a registry of kinds (`register_expert`), each one small unit with its own token extraction.

Registered kinds: "convnext", "dinov2" (timm), "clip_vit" (open_clip), "blip2_qformer" (transformers).
A new kind subclasses `VisionExpert`, implements `build_trunk`, `encode` and `load_checkpoint`, and is
decorated with `@register_expert("name")`; configs then use it by name.
"""

# Importing the kind modules registers them (open_clip / transformers are imported only when built).
from sphinx_x.experts import blip2, clip_vit, timm_experts
from sphinx_x.experts.base import (
    CheckpointError,
    VisionExpert,
    expert_class,
    register_expert,
    registered_kinds,
    resample_grid,
)
from sphinx_x.experts.timm_experts import load_expert_checkpoint
from sphinx_x.fileio import read_state_dict

__all__ = [
    "CheckpointError",
    "VisionExpert",
    "blip2",
    "clip_vit",
    "expert_class",
    "load_expert_checkpoint",
    "read_state_dict",
    "register_expert",
    "registered_kinds",
    "resample_grid",
    "timm_experts",
]
