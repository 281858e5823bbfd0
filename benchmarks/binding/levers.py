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
