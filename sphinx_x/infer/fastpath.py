"""A lean LLM step for generation: the LLM's own weights and rotary embedding, without the model-level wrappers.

At the sizes SPHINX-X runs on a CPU, a decode step's matmuls are small and most of its time is Python and
dispatch around them: `LlamaForCausalLM.forward`'s decorators (argument merging, output capturing,
deprecation checks), building a 4-D causal mask through `create_causal_mask` every step, the
gradient-checkpointing wrapper of every layer, `LlamaRMSNorm`'s five tensor ops, and `DynamicCache`, which
concatenates every layer's whole K and V with the new column at every step. This step runs the same
computation on the LLM's own weights (read once per generation into `_LayerWeights`: no `Module.__call__`
or attribute lookups per step) and its own rotary embedding module, and does the rest itself:

- the KV cache (`StaticKV`): one (B, kv_heads, capacity, head_dim) buffer per layer for K and V, allocated
  once for the prompt plus the answer budget; a step writes its columns in place;
- attention: `F.scaled_dot_product_attention` with `enable_gqa` (no repeated K/V heads); the mask is None
  when no row is padded (SDPA's causal kernel for the prefill, everything visible for a one-token step),
  else the boolean "real key" mask of the step (`step_mask`);
- a left-padded prefill is packed: the projections and the MLP run over the real tokens only (one (1, N, d)
  sequence, no padding rows), attention runs per row with SDPA's causal kernel, and the rows' K and V are
  written into the cache left padded (zeros in the padding columns, which the mask hides) for the cached
  steps. Padding is the difference of the prompts' lengths: mixed images (95 and 59 visual tokens in nano)
  give a batch of eight about 15% of padding;
- the RMS norms: `torch.nn.functional.rms_norm` in float32 (one kernel) times the weight, as
  `LlamaRMSNorm` computes it; rotary: transformers' `q * cos + rotate_half(q) * sin` as
  `q * cos + roll(q, half) * signed_sin`, the same products and sums in half the ops;
- the LM head on each row's last position only.

Only a plain Llama LLM with SDPA attention and no module hooks takes this path (`LeanLLM.supports`);
anything else (Mixtral, InternLM2 loaded through other classes, hooks such as FSDP's, a forward replaced by
`compile_for_generation`) runs through `SphinxX.forward` as before. tests/test_infer_fastpath.py checks
that both paths give the same logits (1e-5) and the same greedy answers, batched, padded and packed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaRMSNorm


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


class StaticKV:
    """Every layer's keys and values, (B, kv_heads, capacity, head_dim) each, valid up to `length` columns."""

    def __init__(self, layers: int, batch: int, kv_heads: int, capacity: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, capacity, head_dim)
        # zeros: the padding columns of a packed prefill are never written (and hidden by the mask)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]


@dataclass(frozen=True)
class _LayerWeights:
    """One decoder layer's tensors, read once per generation (module attribute lookups and `Module.__call__`
    are a visible share of a nano decode step)."""

    input_norm: torch.Tensor
    post_norm: torch.Tensor
    eps: float
    q: tuple[torch.Tensor, torch.Tensor | None]  # (weight, bias) of each projection
    k: tuple[torch.Tensor, torch.Tensor | None]
    v: tuple[torch.Tensor, torch.Tensor | None]
    o: tuple[torch.Tensor, torch.Tensor | None]
    gate: tuple[torch.Tensor, torch.Tensor | None]
    up: tuple[torch.Tensor, torch.Tensor | None]
    down: tuple[torch.Tensor, torch.Tensor | None]

    @classmethod
    def of(cls, layer: LlamaDecoderLayer) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp

        def wb(linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
            return linear.weight, linear.bias

        return cls(layer.input_layernorm.weight, layer.post_attention_layernorm.weight,
                   layer.input_layernorm.variance_epsilon, wb(attn.q_proj), wb(attn.k_proj), wb(attn.v_proj),
                   wb(attn.o_proj), wb(mlp.gate_proj), wb(mlp.up_proj), wb(mlp.down_proj))


def _norm(weight: torch.Tensor, eps: float, x: torch.Tensor) -> torch.Tensor:
    """`LlamaRMSNorm.forward` in one float32 kernel: weight * normalised(x).to(x.dtype)."""
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


class LeanLLM:
    """One generation step of a Llama LLM: embeddings in, each row's last logits out, K and V into a `StaticKV`."""

    def __init__(self, llm: LlamaForCausalLM):
        self.llm = llm
        self.decoder = llm.get_decoder()
        attn = self.decoder.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.scaling = attn.scaling
        self.kv_heads = llm.config.num_key_value_heads
        self.layers = [_LayerWeights.of(layer) for layer in self.decoder.layers]

    @staticmethod
    def supports(llm: Any) -> bool:
        """A plain Llama (SiLU MLP) with SDPA attention, no hooks, and its forward not replaced (torch.compile)."""
        if type(llm) is not LlamaForCausalLM or "forward" in vars(llm):
            return False
        if getattr(llm.config, "_attn_implementation", None) != "sdpa" or llm.config.hidden_act != "silu":
            return False
        decoder = llm.get_decoder()
        layers = list(decoder.layers)
        if "forward" in vars(decoder) or type(decoder.norm) is not LlamaRMSNorm or _has_hooks(decoder):
            return False
        if type(llm.lm_head) is not torch.nn.Linear:
            return False
        for layer in layers:
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if type(layer) is not LlamaDecoderLayer or any(_has_hooks(m) for m in layer.modules()):
                return False
            if any(type(norm) is not LlamaRMSNorm for norm in norms):
                return False
            # The step reads each projection's weight and calls F.linear on it: a module that replaced nn.Linear
            # (int8 dynamic quantization, LoRA wrappers) computes something else and keeps its forward.
            a, m = layer.self_attn, layer.mlp
            projections = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)
            if any(type(p) is not torch.nn.Linear for p in projections):
                return False
        return len(layers) == llm.config.num_hidden_layers

    def new_cache(self, batch: int, capacity: int) -> StaticKV:
        p = self.llm.lm_head.weight
        return StaticKV(len(self.layers), batch, self.kv_heads, capacity, self.head_dim, p.dtype, p.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids)

    def _rotary(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LLM's rotary embedding as (cos, signed sin), (B, 1, q, head_dim) each: `_rotate` then computes
        transformers' `q * cos + rotate_half(q) * sin` as `q * cos + roll(q, half) * signed_sin` (the same
        products and sums, so the same values) in four ops instead of eight."""
        cos, sin = self.decoder.rotary_emb(x, position_ids=position_ids)
        half = self.head_dim // 2
        signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        return cos[:, None], signed[:, None]

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        return x * cos + torch.roll(x, self.head_dim // 2, dims=-1) * signed_sin

    def __call__(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: StaticKV,
                 keys: torch.Tensor | None) -> torch.Tensor:
        """`embeds` (B, q, d) at `position_ids` (B, q) after the `cache.length` cached positions; `keys` (B, K)
        booleans over every position so far including these q (None: no padding). Returns logits (B, 1, vocab).
        A prefill (empty cache) with padding is packed (`_packed_prefill`)."""
        q = embeds.shape[1]
        if cache.length + q > cache.capacity:
            raise ValueError(f"KV cache of {cache.capacity} positions cannot take {cache.length} + {q}")
        if cache.length == 0 and q > 1 and keys is not None and not bool(keys.all()):
            return self._packed_prefill(embeds, position_ids, cache, keys)
        start, end = cache.length, cache.length + q
        if keys is None and q > 1 and start > 0:  # several new positions after cached ones: causal with an offset
            keys = torch.ones((embeds.shape[0], end), dtype=torch.bool, device=embeds.device)
        mask = step_mask(keys, q)
        rotary = self._rotary(embeds, position_ids)
        h = embeds
        for i, w in enumerate(self.layers):
            qs, ks, vs = self._qkv(w, h, rotary)
            cache.keys[i][:, :, start:end] = ks
            cache.values[i][:, :, start:end] = vs
            out = F.scaled_dot_product_attention(
                qs, cache.keys[i][:, :, :end], cache.values[i][:, :, :end], attn_mask=mask,
                is_causal=mask is None and q > 1 and start == 0, scale=self.scaling, enable_gqa=True)
            h = self._finish_layer(w, h, out)
        cache.length = end
        return self._logits(h[:, -1:])

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        norm = self.decoder.norm
        return self.llm.lm_head(_norm(norm.weight, norm.variance_epsilon, h))

    def _qkv(self, w: _LayerWeights, h: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]):
        """Queries, keys, values (B, heads, q, head_dim) of hidden states h (B, q, d): normalised, projected,
        rotated."""
        x = _norm(w.input_norm, w.eps, h)
        shape = (*x.shape[:-1], -1, self.head_dim)
        qs = F.linear(x, *w.q).view(shape).transpose(1, 2)
        ks = F.linear(x, *w.k).view(shape).transpose(1, 2)
        vs = F.linear(x, *w.v).view(shape).transpose(1, 2)
        return self._rotate(qs, *rotary), self._rotate(ks, *rotary), vs

    def _finish_layer(self, w: _LayerWeights, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual adds around the attention output (B, heads, q, head_dim) and the SiLU MLP."""
        h = h + F.linear(attn_out.transpose(1, 2).reshape(*h.shape[:-1], -1), *w.o)
        x = _norm(w.post_norm, w.eps, h)
        return h + F.linear(F.silu(F.linear(x, *w.gate)) * F.linear(x, *w.up), *w.down)

    def _packed_prefill(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: StaticKV,
                        keys: torch.Tensor) -> torch.Tensor:
        """A left-padded prefill over the real tokens only. The rows are packed into one (1, N, d) sequence
        for the projections and the MLP; attention runs row by row (causal, no mask); each row's K and V go
        into the cache's last `n_i` of the first `width` columns, as the padded layout has them."""
        width = embeds.shape[1]
        real = keys[:, :width]
        lengths = real.sum(1).tolist()
        h = embeds[real][None]  # (1, N, d), row 0's tokens first
        rotary = self._rotary(h, position_ids[real][None])
        bounds = [0]
        for n in lengths:
            bounds.append(bounds[-1] + n)
        for i, w in enumerate(self.layers):
            qs, ks, vs = self._qkv(w, h, rotary)
            outs = []
            for row, (a, b) in enumerate(zip(bounds, bounds[1:])):
                cache.keys[i][row, :, width - (b - a):width] = ks[0, :, a:b]
                cache.values[i][row, :, width - (b - a):width] = vs[0, :, a:b]
                outs.append(F.scaled_dot_product_attention(qs[:, :, a:b], ks[:, :, a:b], vs[:, :, a:b],
                                                           is_causal=True, scale=self.scaling, enable_gqa=True))
            h = self._finish_layer(w, h, torch.cat(outs, dim=2))
        cache.length = width
        last = torch.tensor(bounds[1:], device=h.device) - 1
        return self._logits(h[0, last][:, None])
