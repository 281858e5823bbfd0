"""A lean LLM step for generation: the LLM's own transformers layers, called without the model-level wrappers.

At the sizes SPHINX-X runs on a CPU, a decode step's matmuls are small and most of its time is Python and
dispatch around them: `LlamaForCausalLM.forward`'s decorators (argument merging, output capturing,
deprecation checks), building a 4-D causal mask through `create_causal_mask` every step, the
gradient-checkpointing wrapper of every layer, and `LlamaRMSNorm`'s five tensor ops. This step keeps the
library's modules for everything with weights or a cache (rotary embedding, attention, MLP, `DynamicCache`,
the LM head) and does the glue itself:

- the attention mask: None when no row is padded (SDPA's own causal kernel for the prefill, plain attention
  for a one-token step); else one boolean (B, 1, q, keys) tensor, causal and hiding left padding;
- the RMS norms: `torch.nn.functional.rms_norm` in float32 (one kernel) times the weight, as
  `LlamaRMSNorm` computes it;
- the LM head on the last position only.

Only a plain Llama LLM with SDPA attention and no module hooks takes this path (`LeanLLM.supports`);
anything else (Mixtral, InternLM2 loaded through other classes, hooks such as FSDP's, a forward replaced by
`compile_for_generation`) runs through `SphinxX.forward` as before. tests/test_infer_fastpath.py checks
that both paths give the same logits and the same greedy answers, batched and padded.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaRMSNorm


def _rms_norm(norm: LlamaRMSNorm, x: torch.Tensor) -> torch.Tensor:
    """`LlamaRMSNorm.forward` in one float32 kernel: weight * normalised(x).to(x.dtype)."""
    return norm.weight * F.rms_norm(x.float(), norm.weight.shape, eps=norm.variance_epsilon).to(x.dtype)


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def step_mask(keys: torch.Tensor | None, q: int) -> torch.Tensor | None:
    """The attention mask of a step whose `q` queries are the last `q` of `keys.shape[1]` positions.

    `keys` is a (B, K) boolean "real token" mask, or None when nothing is padded (then None: causal by
    SDPA for q > 1, everything visible for q == 1). Otherwise (B, 1, q, K) booleans, True = may attend:
    a real key at or before the query. A padding query (left padding) would see no key at all and give
    NaN; it may see itself instead (its output is never read, and no real query sees it)."""
    if keys is None:
        return None
    if q == 1:
        return keys[:, None, None, :]
    k = keys.shape[1]
    query_pos = torch.arange(k - q, k, device=keys.device)[:, None]
    key_pos = torch.arange(k, device=keys.device)[None, :]
    return (keys[:, None, None, :] & (key_pos <= query_pos)) | (key_pos == query_pos)


class LeanLLM:
    """One generation step of a Llama LLM: embeddings in, the last position's logits and the cache out."""

    def __init__(self, llm: LlamaForCausalLM):
        self.llm = llm
        self.decoder = llm.get_decoder()

    @staticmethod
    def supports(llm: Any) -> bool:
        """A plain Llama with SDPA attention, no hooks, and its forward not replaced (torch.compile)."""
        if type(llm) is not LlamaForCausalLM or "forward" in vars(llm):
            return False
        if getattr(llm.config, "_attn_implementation", None) != "sdpa":
            return False
        decoder = llm.get_decoder()
        layers = list(decoder.layers)
        if "forward" in vars(decoder) or type(decoder.norm) is not LlamaRMSNorm or _has_hooks(decoder):
            return False
        for layer in layers:
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if type(layer) is not LlamaDecoderLayer or any(_has_hooks(m) for m in layer.modules()):
                return False
            if any(type(norm) is not LlamaRMSNorm for norm in norms):
                return False
        return len(layers) == llm.config.num_hidden_layers

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.llm.config)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def __call__(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache,
                 keys: torch.Tensor | None) -> torch.Tensor:
        """`embeds` (B, q, d) at `position_ids` (B, q) after what `cache` holds; `keys` (B, K) booleans over
        every position so far including these q (None: no padding). Returns logits (B, 1, vocab)."""
        mask = step_mask(keys, embeds.shape[1])
        rotary = self.decoder.rotary_emb(embeds, position_ids=position_ids)
        h = embeds
        for layer in self.decoder.layers:
            attn, _ = layer.self_attn(_rms_norm(layer.input_layernorm, h), position_embeddings=rotary,
                                      attention_mask=mask, cache=cache)
            h = h + attn
            h = h + layer.mlp(_rms_norm(layer.post_attention_layernorm, h))
        return self.llm.lm_head(_rms_norm(self.decoder.norm, h[:, -1:]))
