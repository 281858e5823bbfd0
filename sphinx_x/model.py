"""The SPHINX-X model: mixture of visual experts + image tags + skip token spliced into a causal LLM.

Inputs follow one contract (see sphinx_x.data): `input_ids` hold, for each image, a run of
`visual_token_count(...)` positions equal to IMAGE_TOKEN_ID; `images` is the batch's ImageBatch in order
of appearance. The model builds, per image, the slots of sphinx_x/image_tokens.py (`[start] global [end]`
then for every grid cell in raster order `[start] cell [end]` or `[skip]`), and scatters those embeddings
into the image positions. A view's
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
from sphinx_x.image_tokens import SKIP, image_slots
from sphinx_x.llm import build_llm, router_aux_loss, with_path
from sphinx_x.losses import loss_weights
from sphinx_x.vision import MixtureOfVisualExperts


@dataclass
class SphinxXOutput:
    """What `SphinxX.forward` returns: the loss fields when `labels` were given, else `logits` (and `cache`)."""

    loss: torch.Tensor | None = None  # loss_sum / loss_norm (+ weighted router loss for MoE)
    loss_sum: torch.Tensor | None = None  # summed (weighted) token cross-entropy, for global-batch normalisation
    num_tokens: int = 0  # supervised tokens in this batch
    loss_norm: float = 0.0  # what loss_sum is averaged over: supervised tokens, or answer turns (losses.py)
    aux_loss: torch.Tensor | None = None  # MoE load-balancing loss, unweighted (llm.router_aux_loss: 1 = balanced)
    logits: torch.Tensor | None = None  # (B, T, V) when labels are not given
    cache: Any = None  # the LLM's KV cache (transformers Cache) when use_cache=True


class SphinxX(nn.Module):
    """The SPHINX-X multimodal LLM: a mixture of visual experts (`self.visual`), the learnable image tags
    `image_start` / `image_end` / `skip_token`, and a causal LLM (`self.llm`) that reads the visual tokens
    spliced into its input embeddings.

    Build one from a config (`SphinxX(SphinxXConfig.from_name("nano"))`, randomly initialised except for
    component checkpoints the config names) or load a model directory with `from_pretrained`. Inference:
    `generate`, `chat`, `stream_generate`, `stream_chat`; training: `forward` with `labels`."""

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
        if config.connector is not None:  # the projector and tags of an earlier run (sphinx_x/connector.py)
            from sphinx_x.connector import load_connector

            load_connector(self, config.connector)
        self.tokenizer = None  # attached by from_pretrained when the directory holds tokenizer files

    def reset_tag_parameters(self) -> None:
        """Re-draw the image tags (start, end, skip) from N(0, 0.02)."""
        for p in (self.image_start, self.image_end, self.skip_token):
            nn.init.normal_(p, std=0.02)

    # ---- images -> embeddings -------------------------------------------------------------------
    def image_embeddings(self, images: ImageBatch) -> torch.Tensor:
        """All images' token sequences concatenated, slot by slot (sphinx_x/image_tokens.py):
        (sum of visual_token_count, d)."""
        views = self.visual(images)  # (total_views, tokens_per_view, d)
        dtype = views.dtype
        start, end, skip = (t.to(dtype)[None] for t in (self.image_start, self.image_end, self.skip_token))
        parts: list[torch.Tensor] = []
        v = 0
        for skipped in images.skipped.tolist():
            for slot in image_slots(skipped):
                if slot == SKIP:
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
        """One pass of the LLM over text and image tokens.

        Inputs (B = batch, T = sequence length):
        - `input_ids` (B, T) long: token ids where each image occupies a run of `visual_token_count(w, h,
          config.vision)` positions equal to IMAGE_TOKEN_ID (`sphinx_x.image_tokens`), in order of appearance;
          `sphinx_x.data.encode.DialogueEncoder` and `sphinx_x.infer.prompts.PromptEncoder` build such ids.
        - `images`: the batch's `ImageBatch` (`sphinx_x.canvas.collate_images`), its images in the same order
          as their runs in `input_ids`; None for text-only batches. A mismatch in counts is a ValueError.
        - `attention_mask` (B, T): 1 for real tokens, 0 for padding; `position_ids` (B, T) optional.
        - `labels` (B, T) long: the target id at every position the loss covers, IGNORE_INDEX (-100)
          elsewhere (prompts, images, padding). They are aligned with `input_ids` and shifted inside: the
          logits at position t are scored against `labels[:, t + 1]`.
        - `loss_reduction`: "token" averages over supervised tokens, "turn" gives each answer turn equal
          weight (`sphinx_x.losses`).
        - `cache`, `use_cache`: the LLM's KV cache for incremental decoding; `inputs_embeds` replaces the
          embedding of `input_ids` (then `images` is not read).
        - `logits_to_keep=k` (no labels) computes logits at the last k positions only (0 = all): generation
          needs the last position's, and the LM head over the whole prompt would cost a vocabulary
          projection per prompt token.

        Returns a `SphinxXOutput`. With `labels`: `loss` (mean cross-entropy plus, for a Mixtral LLM, the
        weighted router load-balancing loss), `loss_sum`, `num_tokens`, `loss_norm`, `aux_loss`; the LM head
        runs only at supervised positions, so no logits. Without: `logits` (B, T or k, vocab) and `cache`."""
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
        """Parameter counts by part: "llm", "vision_experts" (per expert), "projector", "image_tags", "total"."""

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
        """Write a model directory (config.json, sharded safetensors of at most `max_shard_bytes` each,
        tokenizer files when a tokenizer is given or attached) that `from_pretrained` reads back."""
        from sphinx_x.model_io import save_model_dir

        if getattr(self, "quantization", None):  # set by sphinx_x/infer/quantize.py
            raise ValueError(f"a model quantized to {self.quantization} cannot be saved; save the full-precision one")
        save_model_dir(self, directory, tokenizer=tokenizer or self.tokenizer, max_shard_bytes=max_shard_bytes)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
        quantize: str | None = None,
    ) -> SphinxX:
        """Load a model directory written by `save_pretrained` (or `sphinx-x init` / training), one tensor at a
        time onto `device`. `dtype`: None loads floating weights as float32, a torch dtype casts them to it,
        "auto" keeps the stored dtypes. The directory's tokenizer, if any, is attached as `model.tokenizer`.
        `quantize`: "int8", "nf4", ... (sphinx_x/infer/quantize.py, docs/quantization.md); the weights are
        then loaded on the CPU and quantized layer by layer as they move to `device`."""
        from sphinx_x.model_io import load_model_dir

        if quantize in (None, "none"):
            return load_model_dir(cls, directory, device=device, dtype=dtype)
        from sphinx_x.infer.quantize import check_method, quantize_model

        check_method(quantize, torch.device(device))  # before loading: a bad option fails fast
        return quantize_model(load_model_dir(cls, directory, device="cpu", dtype=dtype), quantize, device=device)

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
    config.connector = None
    for expert in config.vision.experts:
        expert.checkpoint = None
    return config


def _current_device() -> torch.device:
    return torch.empty(0).device  # honours an enclosing `with torch.device(...)` context
