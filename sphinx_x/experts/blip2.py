"""`blip2_qformer`: the BLIP-2 vision model + Q-Former (transformers' Blip2 classes), as in SPHINX.

The released SPHINX models keep from `Blip2Model` only what `get_qformer_features` uses: the vision model,
the learned query tokens and the Q-Former; its tokens are the Q-Former's last hidden state for the queries
(`num_query_tokens` of them, 32 for blip2-opt-2.7b). They are not a summary + grid, so this kind always
has its own projector and its own token block (`own_projector: true`).

Config: `arch_kwargs` = {"vision_config": {...}, "qformer_config": {...}, "num_query_tokens": 32} with
transformers' `Blip2VisionConfig` / `Blip2QFormerConfig` fields (their defaults are blip2-opt-2.7b's).
Weights: `checkpoint_format: hf`, a local transformers BLIP-2 directory (config.json + model.safetensors,
sharded or not, or pytorch_model.bin) or one weights file of it; the language model is ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from sphinx_x.config import ConfigError, VisionExpertConfig
from sphinx_x.experts.base import CheckpointError, VisionExpert, check_state_keys, read_expert_state, register_expert

_ARCH_KEYS = {"vision_config", "qformer_config", "num_query_tokens"}
# Saved by transformers 4.x: a text-side FFN per Q-Former layer that queries never use (gone in 5.x).
_TEXT_FFN = re.compile(r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.")


def _configs(cfg: VisionExpertConfig):
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    unknown = set(cfg.arch_kwargs) - _ARCH_KEYS
    if unknown:
        raise ConfigError(
            f"vision expert {cfg.name!r}: unknown arch_kwargs {sorted(unknown)}; valid: {sorted(_ARCH_KEYS)}"
        )
    vision = Blip2VisionConfig(**cfg.arch_kwargs.get("vision_config", {}))
    qformer = Blip2QFormerConfig(**cfg.arch_kwargs.get("qformer_config", {}))
    if qformer.encoder_hidden_size != vision.hidden_size:
        raise ConfigError(f"vision expert {cfg.name!r}: qformer_config.encoder_hidden_size "
                          f"{qformer.encoder_hidden_size} != vision_config.hidden_size {vision.hidden_size}")
    return vision, qformer, int(cfg.arch_kwargs.get("num_query_tokens", 32))


class Blip2QFormerTrunk(nn.Module):
    """The parts of `Blip2Model` that `get_qformer_features` runs, under the same attribute names."""

    def __init__(self, cfg: VisionExpertConfig) -> None:
        super().__init__()
        from transformers import Blip2QFormerModel, Blip2VisionModel

        vision, qformer, num_queries = _configs(cfg)
        self.vision_model = Blip2VisionModel(vision)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, qformer.hidden_size))
        self.qformer = Blip2QFormerModel(qformer)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        # get_qformer_features passes an all-ones image mask, which masks nothing; without it the math is the
        # same and the model also runs on the meta device (FLOP counting), where the mask check cannot.
        out = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, return_dict=True)
        return out.last_hidden_state


@register_expert("blip2_qformer")
class Blip2QFormerExpert(VisionExpert):
    checkpoint_formats = ("hf",)
    grid_tokens = False

    @classmethod
    def built_view_size(cls, cfg: VisionExpertConfig) -> int:
        return _configs(cfg)[0].image_size  # vision_config.image_size

    @classmethod
    def num_tokens(cls, cfg: VisionExpertConfig, feature_grid: int) -> int:
        return int(cfg.arch_kwargs.get("num_query_tokens", 32))

    def build_trunk(self) -> tuple[nn.Module, int]:
        trunk = Blip2QFormerTrunk(self.cfg)
        return trunk, trunk.query_tokens.shape[-1]

    def shard_units(self) -> list[nn.Module]:
        return [*self.trunk.vision_model.encoder.layers, *self.trunk.qformer.encoder.layer]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def load_checkpoint(self, path: str | Path, fmt: str) -> None:
        path = Path(path)
        if fmt != "hf":
            raise CheckpointError(f"{path}: kind 'blip2_qformer' reads checkpoint_format 'hf', got {fmt!r}")
        state = read_expert_state(path)  # a transformers directory or one weights file of it

        def ignored(key: str) -> bool:
            return key.startswith(("language_model.", "language_projection.")) or bool(_TEXT_FFN.match(key))

        check_state_keys(path, state, self.trunk, "the BLIP-2 vision model + Q-Former", ignore=ignored)
        self.trunk.load_state_dict({k: state[k] for k in self.trunk.state_dict()}, strict=True)
