"""The SPHINX-X model: mixture of visual experts + image tags + skip token spliced into a causal LLM.

Inputs follow one contract (see sphinx_x.data): `input_ids` hold, for each image, a run of
`visual_token_count(...)` positions equal to IMAGE_TOKEN_ID; `images` is the batch's ImageBatch in order
of appearance. The model builds, per image, `[start] global [end]` then for every grid cell in raster
order `[start] cell [end]` or `[skip]`, and scatters those embeddings into the image positions. A view's
tokens are the vision module's blocks (sphinx_x.vision): the released SPHINX models' 32 Q-Former tokens
then 257 ensemble tokens, SPHINX-X's 257.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sphinx_x.canvas import ImageBatch
from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
from sphinx_x.llm import build_llm, router_aux_loss, with_path
from sphinx_x.losses import loss_weights
from sphinx_x.vision import MixtureOfVisualExperts


@dataclass
class SphinxXOutput:
    loss: torch.Tensor | None = None  # loss_sum / loss_norm (+ weighted router loss for MoE)
    loss_sum: torch.Tensor | None = None  # summed (weighted) token cross-entropy, for global-batch normalisation
    num_tokens: int = 0  # supervised tokens in this batch
    loss_norm: float = 0.0  # what loss_sum is averaged over: supervised tokens, or answer turns (losses.py)
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, unweighted (llm.router_aux_loss: 1 = balanced)
    logits: torch.Tensor | None = None  # (B, T, V) when labels are not given
    cache: Any = None  # the LLM's KV cache (transformers Cache) when use_cache=True


class SphinxX(nn.Module):
    def __init__(self, config: SphinxXConfig):
        super().__init__()
        if config.llm.path is not None:  # local weights decide the LLM's dims; keep the config truthful
            config = copy.deepcopy(config)
            config.llm = with_path(config.llm, config.llm.path)
        self.config = config
        self.llm = build_llm(config.llm, device=_current_device())
        d = self.llm.config.hidden_size
        self.visual = MixtureOfVisualExperts(config.vision, d)
        # Learnable image tags shared by every view (README "How an image becomes tokens").
        self.image_start = nn.Parameter(torch.empty(d))
        self.image_end = nn.Parameter(torch.empty(d))
        self.skip_token = nn.Parameter(torch.empty(d))
        self.reset_tag_parameters()
        self.tokenizer = None  # attached by from_pretrained when the directory holds tokenizer files

    def reset_tag_parameters(self) -> None:
        for p in (self.image_start, self.image_end, self.skip_token):
            nn.init.normal_(p, std=0.02)

    # ---- images -> embeddings -------------------------------------------------------------------
    def image_embeddings(self, images: ImageBatch) -> torch.Tensor:
        """All images' token sequences concatenated: (sum of visual_token_count, d)."""
        views = self.visual(images)  # (total_views, tokens_per_view, d)
        dtype = views.dtype
        start, end, skip = (t.to(dtype)[None] for t in (self.image_start, self.image_end, self.skip_token))
        parts: list[torch.Tensor] = []
        v = 0
        for skipped in images.skipped.tolist():
            parts += [start, views[v], end]
            v += 1
            for cell_skipped in skipped:
                if cell_skipped:
                    parts.append(skip)
                else:
                    parts += [start, views[v], end]
                    v += 1
        if v != views.shape[0]:
            raise ValueError(f"images carry {views.shape[0]} views but their skip masks account for {v}")
        return torch.cat(parts)

    def embed_inputs(self, input_ids: torch.Tensor, images: ImageBatch | None) -> torch.Tensor:
        """Token embeddings with every IMAGE_TOKEN_ID position replaced by visual embeddings."""
        is_image = input_ids == IMAGE_TOKEN_ID
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(is_image, 0))
        n_positions = int(is_image.sum())
        if images is None or images.num_images == 0:
            if n_positions:
                raise ValueError(f"input_ids hold {n_positions} image positions but no images were given")
            return embeds
        visual = self.image_embeddings(images)
        if visual.shape[0] != n_positions:
            raise ValueError(
                f"images produce {visual.shape[0]} visual tokens but input_ids hold {n_positions} image "
                "positions (were the ids built with the same vision config?)"
            )
        return embeds.masked_scatter(is_image.unsqueeze(-1), visual.to(embeds.dtype))

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        images: ImageBatch | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        inputs_embeds: torch.Tensor | None = None,
        loss_reduction: str = "token",
        logits_to_keep: int = 0,
    ) -> SphinxXOutput:
        """`logits_to_keep=k` (no labels) computes logits at the last k positions only (0 = all): generation
        needs the last position's, and the LM head over the whole prompt would cost a vocabulary projection
        per prompt token."""
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, images)
        moe = self.config.llm.arch == "mixtral"
        kwargs: dict[str, Any] = dict(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
        )
        if moe and labels is not None:
            kwargs["output_router_logits"] = True
        if labels is None:
            out = self.llm(**kwargs, logits_to_keep=logits_to_keep)
            return SphinxXOutput(logits=out.logits, cache=out.cache)

        # Training: run the decoder, then the LM head only where a label exists (most positions are
        # images, prompts or padding, so this saves most of the vocabulary projection).
        base = self.llm.get_decoder()
        out = base(**kwargs)
        hidden = out.last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.llm.get_output_embeddings()(hidden[keep]).float()
        weights, n = loss_weights(targets, loss_reduction)  # n: supervised tokens, or answer turns
        if weights is None:
            loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        else:
            loss_sum = (F.cross_entropy(logits, targets[keep], reduction="none") * weights).sum()
        loss = loss_sum / max(n, 1)
        aux = None
        if moe:
            aux = router_aux_loss(out, self.config.llm, attention_mask)
            if aux is not None:
                loss = loss + self.config.llm.router_aux_loss_coef * aux
        return SphinxXOutput(loss=loss, loss_sum=loss_sum, num_tokens=int(keep.sum()), loss_norm=n, aux_loss=aux)

    # ---- parameters -----------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, Any]:
        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        experts = {name: count(m) for name, m in self.visual.experts.items()}
        llm = count(self.llm)
        projector = count(self.visual.projector) + count(self.visual.own_projectors)
        tags = sum(p.numel() for p in (self.image_start, self.image_end, self.skip_token))
        return {
            "llm": llm,
            "vision_experts": experts,
            "projector": projector,
            "image_tags": tags,
            "total": llm + sum(experts.values()) + projector + tags,
        }

    # ---- model directories ----------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer: Any = None, max_shard_bytes: int = 5 * 2**30) -> None:
        from sphinx_x.model_io import save_model_dir

        save_model_dir(self, directory, tokenizer=tokenizer or self.tokenizer, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> SphinxX:
        from sphinx_x.model_io import load_model_dir

        return load_model_dir(cls, directory, device=device, dtype=dtype)

    @classmethod
    def from_config_without_weights(cls, config: SphinxXConfig) -> SphinxX:
        """Build on the meta device (no memory) with local weight paths ignored: for counting and loading."""
        config = detach_weight_paths(config)
        with torch.device("meta"):
            return cls(config)

    # ---- inference (delegates to sphinx_x.infer) --------------------------------------------------
    def chat(self, images: Any, question: str, history: Any = None, **gen: Any) -> tuple[str, list]:
        """Answer `question` about `images` (this turn's) after `history`; returns (answer, new history)."""
        from sphinx_x.infer.chat import chat

        return chat(self, images, question, history, **gen)

    def stream_chat(self, images: Any, question: str, history: Any = None, **gen: Any):
        """Like `chat`, yielding text pieces as they are generated."""
        from sphinx_x.infer.chat import stream_chat

        return stream_chat(self, images, question, history, **gen)

    def stream_generate(self, prompts: Any, config: Any = None, **gen: Any):
        """Like `generate`, streaming: yields (prompt index, text piece, Generation on its last item or None)
        per token; `config` may be one GenerationConfig per prompt."""
        from sphinx_x.infer.chat import stream_generate

        return stream_generate(self, prompts, config, **gen)

    def generate(self, prompts: Any, **gen: Any) -> list:
        """Answer a batch of prompts (strings, {"question", "images", "history"} dicts or turn lists)."""
        from sphinx_x.infer.chat import generate

        return generate(self, prompts, **gen)


def detach_weight_paths(config: SphinxXConfig) -> SphinxXConfig:
    """A copy of `config` that builds from dims only (component checkpoints not read)."""
    config = copy.deepcopy(config)
    config.llm.path = None
    for expert in config.vision.experts:
        expert.checkpoint = None
    return config


def _current_device() -> torch.device:
    return torch.empty(0).device  # honours an enclosing `with torch.device(...)` context
