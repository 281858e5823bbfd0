"""Mixture of visual experts (README "How an image becomes tokens"): per-view tokens, blocks, projectors.

The experts themselves are registered kinds in sphinx_x.experts (ConvNeXt, DINOv2, CLIP ViT, BLIP-2
Q-Former). Per view, experts without `own_projector` give `1 + G*G` tokens each; their tokens are
concatenated along channels and projected to the LLM width by `Linear + LayerNorm` (the shared block).
An expert with `own_projector` (the Q-Former) is projected by its own `Linear + LayerNorm`; its block comes
first. A view is therefore `[own blocks in expert order] + [shared block]`, as in the released SPHINX
models (32 Q-Former tokens, then 257 ensemble tokens).

With `canvas.preprocess: accessory` the batch carries uint8 canvases instead of per-expert views; each
expert's views are cut from the normalised canvas here, on the experts' device (sphinx_x.canvas).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from sphinx_x.canvas import ImageBatch, accessory_views, normalize_canvas, renormalize
from sphinx_x.config import ConfigError, VisionConfig
from sphinx_x.experts import (  # noqa: F401 - re-exported: the vision API predates the experts package
    CheckpointError,
    VisionExpert,
    load_expert_checkpoint,
    read_state_dict,
    resample_grid,
)


def _projector(channels: int, d: int, norm_init: float = 1.0) -> nn.Sequential:
    proj = nn.Sequential(nn.Linear(channels, d), nn.LayerNorm(d))
    nn.init.constant_(proj[1].weight, norm_init)  # VisionConfig.projector_norm_init
    return proj


class MixtureOfVisualExperts(nn.Module):
    """All experts + projectors: an `ImageBatch` -> (total_views, tokens_per_view, d), in the batch's view order."""

    def __init__(self, cfg: VisionConfig, d: int) -> None:
        super().__init__()
        if not cfg.experts:
            raise ConfigError("vision.experts is empty; at least one vision expert is needed")
        names = [e.name for e in cfg.experts]
        if len(set(names)) != len(names):
            raise ConfigError(f"vision.experts: duplicate expert names {names}")
        self.cfg = cfg
        self.experts = nn.ModuleDict({e.name: VisionExpert(e, cfg.feature_grid) for e in cfg.experts})
        self.projector = _projector(cfg.channels, d, cfg.projector_norm_init)  # the shared block
        # Empty for SPHINX-X's own presets, so their state dicts have no key here.
        self.own_projectors = nn.ModuleDict({e.name: _projector(e.channels, d, cfg.projector_norm_init)
                                              for e in cfg.experts if e.own_projector})

    @property
    def tokens_per_view(self) -> int:
        return self.cfg.tokens_per_view

    def expert_inputs(self, images: ImageBatch) -> dict[str, torch.Tensor]:
        """Per expert: uint8 views (SPHINX-X preprocessing) or normalised float views (accessory)."""
        if images.canvas is not None:
            device = next(self.parameters()).device
            x = normalize_canvas(images.canvas.to(device, non_blocking=True), self.cfg.canvas)
            views: dict[int, torch.Tensor] = {}  # experts with the same view size share the resized views
            for e in self.cfg.experts:
                if e.view_size not in views:
                    views[e.view_size] = accessory_views(x, e.view_size, self.cfg.canvas.grid)
            return {e.name: renormalize(views[e.view_size], self.cfg.canvas, e) for e in self.cfg.experts}
        for name in self.experts:
            if name not in images.views:
                raise KeyError(f"image batch has no views for vision expert {name!r} (has {list(images.views)})")
        return {name: images.views[name] for name in self.experts}

    def forward(self, images: ImageBatch) -> torch.Tensor:
        inputs = self.expert_inputs(images)
        own, shared = [], []
        num_views = None
        for name, expert in self.experts.items():
            views = inputs[name]
            if num_views is not None and views.shape[0] != num_views:
                raise ValueError(f"vision expert {name!r} got {views.shape[0]} views, others {num_views}")
            num_views = views.shape[0]
            # all views of the whole batch in one call
            feats = expert(views) if views.dtype == torch.uint8 else expert.forward_normalized(views)
            if name in self.own_projectors:
                proj = self.own_projectors[name]
                own.append(proj(feats.to(proj[0].weight.dtype)))
            else:
                shared.append(feats)
        proj_dtype = self.projector[0].weight.dtype
        tokens = torch.cat([f.to(proj_dtype) for f in shared], dim=-1)  # channel concat per token
        return torch.cat([*own, self.projector(tokens)], dim=1) if own else self.projector(tokens)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def count_vision_params(cfg: VisionConfig) -> dict[str, int]:
    """Parameters per vision expert trunk, built on the meta device (nothing allocated, no weights read)."""
    with torch.device("meta"):
        experts = {e.name: VisionExpert(e, cfg.feature_grid) for e in cfg.experts}
    return {name: sum(p.numel() for p in ex.parameters()) for name, ex in experts.items()}
