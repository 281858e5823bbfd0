"""`clip_vit`: an OpenCLIP vision transformer (OpenAI CLIP ViT-L/14 in the released SPHINX models).

Tokens as the public SPHINX code takes them: patch convolution, class token prepended, position
embeddings added, `ln_pre`, the transformer, then `ln_post` on every token (the projection `proj` is not
applied). The CLS token is the summary; the patch tokens form the grid.

Config: `arch` names an open_clip model config ("ViT-L-14"); `arch_kwargs` may hold `vision_cfg`
(overrides of that config's vision tower, e.g. tiny sizes for tests), `embed_dim` and `quick_gelu`
(default false: the released models build the tower with `pretrained=None`, i.e. open_clip's GELU).
Weights: `checkpoint_format: open_clip`, a CLIP state dict (safetensors or .bin) whose tower is under `visual.`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sphinx_x.config import ConfigError, VisionExpertConfig
from sphinx_x.experts.base import (
    CheckpointError,
    VisionExpert,
    check_state_keys,
    read_expert_state,
    register_expert,
    summary_and_grid,
)
from sphinx_x.extras import require_extra

_ARCH_KEYS = {"vision_cfg", "embed_dim", "quick_gelu"}


def _tower_config(cfg: VisionExpertConfig) -> tuple[int, dict, bool]:
    open_clip = require_extra("clip", "open_clip", "the clip_vit vision expert (the released SPHINX models)")

    unknown = set(cfg.arch_kwargs) - _ARCH_KEYS
    if unknown:
        raise ConfigError(
            f"vision expert {cfg.name!r}: unknown arch_kwargs {sorted(unknown)}; valid: {sorted(_ARCH_KEYS)}"
        )
    model_cfg = open_clip.get_model_config(cfg.arch) if cfg.arch else None
    if model_cfg is None:
        raise ConfigError(f"vision expert {cfg.name!r}: arch {cfg.arch!r} is not an open_clip model config "
                          "(e.g. 'ViT-L-14')")
    vision_cfg = {**model_cfg["vision_cfg"], **cfg.arch_kwargs.get("vision_cfg", {})}
    if "timm_model_name" in vision_cfg:
        raise ConfigError(f"vision expert {cfg.name!r}: {cfg.arch!r} has a timm trunk; use kind 'convnext'/'dinov2'")
    embed_dim = int(cfg.arch_kwargs.get("embed_dim", model_cfg["embed_dim"]))
    return embed_dim, vision_cfg, bool(cfg.arch_kwargs.get("quick_gelu", False))


@register_expert("clip_vit")
class ClipViTExpert(VisionExpert):
    checkpoint_formats = ("open_clip",)

    @classmethod
    def built_view_size(cls, cfg: VisionExpertConfig) -> int:
        return _tower_config(cfg)[1].get("image_size", 224)

    def build_trunk(self) -> tuple[nn.Module, int]:
        embed_dim, vision_cfg, quick_gelu = _tower_config(self.cfg)  # first: names the extra if open_clip is missing
        from open_clip.model import _build_vision_tower

        tower = _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)
        return tower, tower.conv1.out_channels

    def shard_units(self) -> list[nn.Module]:
        return list(self.trunk.transformer.resblocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        v = self.trunk
        x = v.conv1(x)  # (V, width, g, g)
        n, width, g = x.shape[0], x.shape[1], x.shape[-1]
        x = x.reshape(n, width, -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype) + torch.zeros(n, 1, width, dtype=x.dtype, device=x.device)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        if getattr(v.transformer, "batch_first", False):
            x = v.transformer(x)
        else:  # open_clip < 2.24 runs its transformer sequence-first
            x = v.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        x = v.ln_post(x)  # every token, as the public SPHINX code keeps them all
        return summary_and_grid(x[:, 0], x[:, 1:].transpose(1, 2).reshape(n, width, g, g), self.feature_grid)

    def load_checkpoint(self, path: str | Path, fmt: str) -> None:
        """A CLIP state dict (open_clip_pytorch_model.bin / open_clip_model.safetensors): the tower under
        `visual.`; the text tower, logit scale and anything else is ignored."""
        path = Path(path)
        if fmt != "open_clip":
            raise CheckpointError(f"{path}: kind 'clip_vit' reads checkpoint_format 'open_clip', got {fmt!r}")
        state = read_expert_state(path)
        tower = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        if not tower:
            raise CheckpointError(f"{path}: no keys under 'visual.'; is this an OpenCLIP CLIP checkpoint? "
                                  f"keys: {', '.join(sorted(state)[:5])}")
        check_state_keys(path, tower, self.trunk, f"open_clip {self.cfg.arch} vision tower")
        self.trunk.load_state_dict(tower, strict=True)
