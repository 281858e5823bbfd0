"""LLM levers as patches for `benchmarks/ladder.py --patch benchmarks/binding/levers.py:FUNC` (FUNC(model) is called on
every built SphinxX) and for the binding testbed.

  qknorm        swap nano's LlamaForCausalLM for a Qwen3ForCausalLM of the same dims: Llama plus an RMSNorm on
                every head's queries and keys (QK-norm), which bounds the attention logits at initialisation.
  projector_ln_small
                the shared projector's LayerNorm weight starts at 0.02 instead of 1, so image tokens enter the LLM at
                about the text embeddings' norm (~0.3) instead of ~16 (sqrt of the width).
  embed_scale   multiply the input embeddings by sqrt(hidden_size) (Gemma's convention), so tokens enter the
                residual stream at norm ~16 instead of ~0.3 and the first MLP need not re-embed them.
  projector_fast
                the shared projector's Linear takes 10x larger Adam steps (stored weight / 10, used x 10).
  expert_features_small
                the experts' output tokens x 0.1 (a diagnostic next to the ladder's oracle+experts control).
  projector_grouped
                one Linear + LayerNorm per input group (each expert; on oracle+experts also the oracle's symbols),
                outputs summed: a group's share of the image token no longer shrinks with the others' width/scale.
  projector_token_heads
                projector_grouped plus one more group: each expert's per-token colour/shape probabilities from a
                frozen read-out (benchmarks/binding/fit_token_heads.py writes DIR/token_heads.pt).

Measured (docs/experiments.md, 2026-12-02): QK-norm softens the layer-0 attention collapse but nano still answers
with the bag of colours after 300 steps of batch 32 on the text testbed. projector_ln_small made a learnt projector
bind in the pseudo-image testbed (jointbind.py, batch 32, 2 seeds) where the default scale did not, but gave no
binding on ladder rung 3 in 300 steps of batch 32 (1 seed). embed_scale is not measured yet.
"""
from __future__ import annotations

import math


def qwen3_like(llama):
    """A Qwen3ForCausalLM (random init under the current torch seed) with `llama`'s dims and settings."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    c = llama.config
    q3 = Qwen3Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.hidden_size // c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=c.rope_parameters, tie_word_embeddings=c.tie_word_embeddings, hidden_act=c.hidden_act,
        attention_bias=False, initializer_range=c.initializer_range,
    )
    q3._attn_implementation = c._attn_implementation
    return Qwen3ForCausalLM._from_config(q3).to(next(llama.parameters()).device)


def qknorm(model) -> None:
    """SphinxX patch: the LLM becomes the same-dims Qwen3 (QK-norm)."""
    model.llm = qwen3_like(model.llm)


def embed_scale(model) -> None:
    """SphinxX patch: text embeddings enter at sqrt(d) times their size (image tokens are left as they are)."""
    emb = model.llm.get_input_embeddings()
    scale = math.sqrt(model.llm.config.hidden_size)
    emb.register_forward_hook(lambda module, args, out: out * scale)



def projector_ln_small(model) -> None:
    """SphinxX patch: image tokens start at the text embeddings' scale (LayerNorm weight 0.02, norm ~0.3 not ~16)."""
    import torch

    torch.nn.init.constant_(model.visual.projector[1].weight, 0.02)


def projector_fast(model, factor: float = 10.0) -> None:
    """SphinxX patch: the shared projector's Linear learns `factor` x faster under Adam (its weight is stored
    divided by `factor` and multiplied back in the forward: Adam's steps are the same size in the stored units, so
    10x larger in the used ones). Asks whether the projector is too slow to find the few useful directions among
    the experts' channels."""
    import torch

    linear = model.visual.projector[0]
    with torch.no_grad():
        linear.weight.div_(factor)
        linear.bias.div_(factor)
    forward = linear.forward
    linear.forward = lambda x: factor * forward(x)


def expert_features_small(model, factor: float = 0.1) -> None:
    """SphinxX patch (a diagnostic for the `oracle+experts` ladder control): every vision expert's output tokens
    are multiplied by `factor`, so next to the oracle's 0/1 symbols the experts' channels carry less of the
    projector input's variation. Asks whether their scale, rather than their number, hides the symbols."""
    for expert in model.visual.experts.values():
        expert.register_forward_hook(lambda module, args, out: out * factor)


def freeze_llm(model) -> None:
    """SphinxX patch: the LLM's weights stay as loaded (--init-llm); only the projector and tags learn, as in
    LLaVA's alignment stage, so a pretrained stand-in's circuits are not overwritten while the projector is
    still producing noise."""
    for p in model.llm.parameters():
        p.requires_grad_(False)


def _grouped_projector_class():
    import torch
    from torch import nn

    class Grouped(nn.Module):
        """Linear + LayerNorm per group of input channels (the oracle's symbols, each expert), outputs summed:
        each group enters the LLM at the same norm whatever the others' width, scale or growth under training."""

        def __init__(self, sizes: list[int], d: int, norm_weight: torch.Tensor) -> None:
            super().__init__()
            self.sizes = list(sizes)
            self.groups = nn.ModuleList(nn.Sequential(nn.Linear(s, d), nn.LayerNorm(d)) for s in sizes)
            with torch.no_grad():
                for g in self.groups:
                    g[1].weight.copy_(norm_weight)

        def __getitem__(self, i: int) -> nn.Module:  # callers read projector[0].weight for its dtype and device
            return self.groups[0][i]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            parts = torch.split(x, self.sizes, dim=-1)
            return sum(g(p) for g, p in zip(self.groups, parts))

    return Grouped


def projector_grouped(model) -> None:
    """SphinxX patch: the shared projector becomes one Linear + LayerNorm per input group, summed. Groups: on the
    ladder's oracle+experts control, the oracle's symbols and then each expert; on the real model, each expert.
    The LayerNorm weights start as the replaced projector's (so apply after projector_ln_small)."""
    visual = model.visual
    norm_weight = visual.projector[1].weight.detach()
    d = norm_weight.shape[0]
    sizes = [e.channels for e in model.config.vision.experts if not e.own_projector]
    if hasattr(visual, "batch_symbols") and hasattr(visual, "experts"):  # ladder oracle+experts
        sizes = [visual.projector[0].in_features - sum(sizes), *sizes]
    if sum(sizes) != visual.projector[0].in_features:
        raise ValueError(f"projector_grouped: groups {sizes} do not cover {visual.projector[0].in_features} inputs")
    visual.projector = _grouped_projector_class()(sizes, d, norm_weight)


def projector_token_heads(model) -> None:
    """SphinxX patch (real experts, e.g. the ladder's frozen-pre control with experts from `pretrain-experts
    --token-weight 1`): each expert's frozen per-token read-out (DIR/token_heads.pt beside the experts' weights,
    written by benchmarks/binding/fit_token_heads.py) turns every token into colour and shape probabilities; these
    enter as one more projector group (its own Linear + LayerNorm) beside one group per expert (projector_grouped),
    all summed: the real-model form of the ladder's oracle+experts control, with the experts' own soft symbols in
    place of the oracle's exact ones."""
    from pathlib import Path

    import torch
    from torch import nn

    visual = model.visual
    experts = [e for e in model.config.vision.experts if not e.own_projector]
    path = Path(experts[0].checkpoint).parent / "token_heads.pt"
    if not path.is_file():
        raise FileNotFoundError(f"projector_token_heads: no {path} (run benchmarks/binding/fit_token_heads.py)")
    heads = torch.load(path, weights_only=True)
    readout = nn.Module()
    for e in experts:
        for k, v in heads[e.name].items():
            readout.register_buffer(f"{e.name}__{k.replace('.', '_')}", v.float(), persistent=False)
    sizes = [sum(heads[e.name]["colour.bias"].numel() + heads[e.name]["shape.bias"].numel() for e in experts),
             *[e.channels for e in experts]]
    norm_weight = visual.projector[1].weight.detach()
    d = norm_weight.shape[0]
    visual.readout = readout
    visual.projector = _grouped_projector_class()(sizes, d, norm_weight)

    def forward(images):
        inputs = visual.expert_inputs(images)
        feats, probs = [], []
        for e in experts:
            x, expert = inputs[e.name], visual.experts[e.name]
            f = (expert(x) if x.dtype == torch.uint8 else expert.forward_normalized(x)).float()
            b = {k: getattr(readout, f"{e.name}__{k}") for k in
                 ("mean", "std", "colour_weight", "colour_bias", "shape_weight", "shape_bias")}
            z = (f - b["mean"]) / b["std"]
            probs += [torch.softmax(z @ b["colour_weight"].T + b["colour_bias"], -1),
                      torch.softmax(z @ b["shape_weight"].T + b["shape_bias"], -1)]
            feats.append(f)
        return visual.projector(torch.cat([*probs, *feats], dim=-1))

    visual.forward = forward
