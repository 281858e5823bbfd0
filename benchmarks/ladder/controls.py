"""Controls: each changes one component of the model beside a rung, so a rung's curve can be blamed on a part.

    base          the nano recipe as it is (for rung 8, text only, this is the LLM alone)
    text          no image: the scene written as text before the question (isolates reading from binding)
    global        one global view: no sub-images, image tags zeroed and frozen (19 tokens, not 95)
    one-expert    the ConvNeXt (CLIP stand-in) expert only
    cnn-embed     the same LLM with a plain CNN patch embedding (one strided conv + LayerNorm) for the experts
    frozen-pre    frozen experts from `sphinx-x pretrain-experts` (--experts DIR/model.yaml) instead of scratch
    oracle-embed  the same symbols as the LLM's own word embeddings, E[colour] + E[shape] (no projector)
    oracle        perfect symbolic features (shape and colour under each token) in the real token layout
    oracle+experts  those symbols concatenated with the frozen experts' features (--experts), one projector
    cnn-ceiling   no LLM: a small CNN classifier trained directly on (image, question) -> answer class
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sphinx_x.canvas import ImageBatch
from sphinx_x.config import VisionConfig

IMAGE_RUNGS = (1, 2, 3, 4, 5, 6, 7, 9, 10)


@dataclass(frozen=True)
class Control:
    name: str
    rungs: tuple[int, ...]  # the rungs it applies to
    text_scene: bool = False
    edit_config: Callable[[dict[str, Any]], None] | None = None  # on the model config dict, before building
    patch: Callable[[nn.Module], None] | None = None  # on the built SphinxX
    ceiling: bool = False  # a CNN classifier instead of the multimodal model
    needs_experts: bool = False  # a pretrain-experts model.yaml (--experts)
    oracle: bool = False  # the Encoder registers each image's objects for benchmarks/ladder/oracle.py


def _global_only(data: dict[str, Any]) -> None:
    data["vision"]["canvas"]["grid"] = 1


def _no_tags(model: nn.Module) -> None:
    for p in (model.image_start, model.image_end, model.skip_token):
        p.data.zero_()
        p.requires_grad_(False)


def _convnext_only(data: dict[str, Any]) -> None:
    experts = [e for e in data["vision"]["experts"] if e["kind"] == "convnext"]
    if not experts:
        raise ValueError("one-expert control: the model config has no convnext expert")
    data["vision"]["experts"] = experts[:1]


class PatchEmbedVisual(nn.Module):
    """A plain patch embedding in place of the experts + projector: the first expert's views cut into
    feature_grid x feature_grid patches by one strided conv, a mean token in front (the summary slot),
    then LayerNorm. Same output contract as MixtureOfVisualExperts: (views, 1 + G*G, d)."""

    def __init__(self, vision: VisionConfig, d: int) -> None:
        super().__init__()
        expert = vision.experts[0]
        patch = expert.view_size // vision.feature_grid
        self.name = expert.name
        self.conv = nn.Conv2d(3, d, patch, stride=patch)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("mean", torch.tensor(expert.mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(expert.std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: ImageBatch) -> torch.Tensor:
        x = (images.views[self.name].float() - self.mean) / self.std
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.norm(torch.cat([t.mean(1, keepdim=True), t], dim=1))


def _oracle(model: nn.Module) -> None:
    from .oracle import install

    install(model)


def _oracle_embed(model: nn.Module) -> None:
    from .oracle import install_embed

    install_embed(model)


def _oracle_with_experts(model: nn.Module) -> None:
    from .oracle import install_with_experts

    install_with_experts(model)


def _patch_embed(model: nn.Module) -> None:
    model.visual = PatchEmbedVisual(model.config.vision, model.llm.config.hidden_size)


class CeilingCNN(nn.Module):
    """The ceiling for closed-answer rungs: (image, question one-hot as extra input planes) -> answer class.
    Five stride-2 convs from 128 px to a 4x4 map, mean and max pooled, one linear layer."""

    def __init__(self, n_questions: int, n_answers: int, width: int = 48) -> None:
        super().__init__()
        chans = [3 + n_questions, width, width, 2 * width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GELU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(4 * width, n_answers)
        self.n_questions = n_questions

    def forward(self, pixels: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, 128, 128) float in [0, 1]; question (B,) long."""
        planes = nn.functional.one_hot(question, self.n_questions).float()[:, :, None, None]
        x = torch.cat([(pixels - 0.5) / 0.25, planes.expand(-1, -1, *pixels.shape[2:])], dim=1)
        h = self.body(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1))


CONTROLS: dict[str, Control] = {c.name: c for c in [
    Control("base", IMAGE_RUNGS + (8,)),
    Control("text", (1, 2, 3, 4, 5, 6, 9, 10), text_scene=True),
    Control("global", IMAGE_RUNGS, edit_config=_global_only, patch=_no_tags),
    Control("one-expert", IMAGE_RUNGS, edit_config=_convnext_only),
    Control("cnn-embed", IMAGE_RUNGS, patch=_patch_embed),
    Control("frozen-pre", IMAGE_RUNGS, needs_experts=True),
    Control("oracle", (1, 2, 3, 4, 9, 10), patch=_oracle, oracle=True),
    Control("oracle-embed", (1, 2, 3, 4), patch=_oracle_embed, oracle=True),
    Control("oracle+experts", (1, 2, 3, 4), patch=_oracle_with_experts, oracle=True, needs_experts=True),
    Control("cnn-ceiling", (1, 2, 3, 4), ceiling=True),
]}


def control_by_name(name: str) -> Control:
    if name not in CONTROLS:
        raise ValueError(f"unknown control {name!r}; controls: {', '.join(CONTROLS)}")
    return CONTROLS[name]
