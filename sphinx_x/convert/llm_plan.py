"""The language model of an Accessory checkpoint: its dims, and how each of our LLM tensors is built.

Official names (Meta's LLaMA layout under `llma.`) map onto transformers' `LlamaForCausalLM` /
`MixtralForCausalLM` under our model's `llm.` prefix. wq / wk rows are permuted from Meta's
interleaved rotary layout to transformers' rotate-half (see rotary.py). The sparse MoE of
`mixtral_sparse_ens*.py` stores per layer `w1`, `w2`, `w3` as `(num_experts * hidden, dim)` and computes
`silu(x @ w1_e.T) * (x @ w3_e.T) @ w2_e`; transformers 5.x fuses the experts as
`gate_up_proj (E, 2 * hidden, dim) = [w1_e; w3_e]` and `down_proj (E, dim, hidden) = w2_e.T`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sphinx_x.config import LLMConfig
from sphinx_x.convert.rotary import interleaved_to_rotate_half
from sphinx_x.convert.shards import ConversionError, ShardSet

Build = Callable[[ShardSet, torch.dtype], torch.Tensor]

# ModelArgs defaults of the official model files, used for fields a config.json leaves out.
LLAMA_ARG_DEFAULTS: dict[str, Any] = dict(
    dim=5120, n_layers=40, n_heads=40, n_kv_heads=None, norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
)
MIXTRAL_ARG_DEFAULTS: dict[str, Any] = dict(
    dim=4096, n_layers=32, n_heads=32, n_kv_heads=None, norm_eps=1e-5, rope_theta=1000000.0, rope_scaling=None,
    moe={"num_experts_per_tok": 2, "num_experts": 8},
)  # load_balancing_weight defaults to the preset's router_aux_loss_coef (0.1 or 0.01 by model file)


@dataclass
class Output:
    """One tensor of our state dict: its name, the official keys it reads, its shape, how to build it."""

    name: str
    sources: tuple[str, ...]
    build: Build
    shape: tuple[int, ...] | None = None  # filled in once the sources are known to exist


def keep_float(dtype: torch.dtype, source: torch.dtype) -> torch.dtype:
    """Floating tensors take the requested dtype; integer buffers keep theirs."""
    return dtype if source.is_floating_point else source


def copied(key: str) -> Build:
    return lambda shards, dtype: shards.merged(key, keep_float(dtype, shards.infos[key][0].dtype))


def permuted(key: str, heads: int) -> Build:
    return lambda shards, dtype: interleaved_to_rotate_half(shards.merged(key, dtype), heads)


def fused_gate_up(w1: str, w3: str) -> Build:
    def build(shards: ShardSet, dtype: torch.dtype) -> torch.Tensor:
        experts, hidden, dim = shards.merged_shape(w1)
        out = torch.empty(experts, 2 * hidden, dim, dtype=dtype)
        shards.merge_into(w1, out[:, :hidden])
        shards.merge_into(w3, out[:, hidden:])
        return out

    return build


def transposed_down(w2: str) -> Build:
    def build(shards: ShardSet, dtype: torch.dtype) -> torch.Tensor:
        experts, hidden, dim = shards.merged_shape(w2)
        out = torch.empty(experts, dim, hidden, dtype=dtype)
        shards.merge_into(w2, out.transpose(1, 2))  # written through the view: no extra copy
        return out

    return build


def is_llm_key(key: str) -> bool:
    return key.startswith("llma.layers.") or key in ("llma.tok_embeddings.weight", "llma.norm.weight",
                                                        "llma.output.weight")


# ---- dims ----------------------------------------------------------------------------------------
def _arg(params: dict, defaults: dict, name: str, file: Path) -> Any:
    value = params.get(name, defaults.get(name))
    if value is None and name not in ("n_kv_heads", "rope_scaling"):
        raise ConversionError(f"{file}: missing {name!r}")
    return value


def llm_config_from_checkpoint(
    params: dict, arch: str, shards: ShardSet, file: Path, base: LLMConfig
) -> LLMConfig:
    """Our LLMConfig from the official config.json (ModelArgs fields) checked against the tensor shapes.

    The FFN width is read from the tensors (the official code derives it from dim, multiple_of and
    ffn_dim_multiplier for Llama, or takes `hidden_dim` for Mixtral). `base` supplies what the checkpoint
    does not say (max_position_embeddings)."""
    defaults = MIXTRAL_ARG_DEFAULTS if arch == "mixtral" else LLAMA_ARG_DEFAULTS
    if _arg(params, defaults, "rope_scaling", file) is not None:
        raise ConversionError(f"{file}: rope_scaling={params['rope_scaling']} is not supported (only unscaled RoPE)")
    dim = int(_arg(params, defaults, "dim", file))
    layers = int(_arg(params, defaults, "n_layers", file))
    heads = int(_arg(params, defaults, "n_heads", file))
    kv_heads = int(_arg(params, defaults, "n_kv_heads", file) or heads)
    if dim % heads or heads % kv_heads:
        raise ConversionError(f"{file}: dim={dim}, n_heads={heads}, n_kv_heads={kv_heads} do not divide evenly")
    emb = _required_shape(shards, "llma.tok_embeddings.weight")
    if emb[1] != dim:
        raise ConversionError(f"{file}: dim={dim} but llma.tok_embeddings.weight is {emb} in the shards")
    present = {int(k.split(".")[2]) for k in shards.keys() if k.startswith("llma.layers.")}
    if present != set(range(layers)):
        extra = sorted(present - set(range(layers)))
        lacking = sorted(set(range(layers)) - present)
        raise ConversionError(
            f"{file}: n_layers={layers} but the shards hold layers {_ranges(present)}"
            + (f" (missing {lacking[:8]})" if lacking else "") + (f" (beyond: {extra[:8]})" if extra else "")
        )
    num_experts, per_tok, coef = 0, base.num_experts_per_tok, base.router_aux_loss_coef
    if arch == "mixtral":
        moe = {**defaults["moe"], **(params.get("moe") or {})}
        num_experts, per_tok = int(moe["num_experts"]), int(moe["num_experts_per_tok"])
        coef = float(params.get("load_balancing_weight", base.router_aux_loss_coef))
        gate = _required_shape(shards, "llma.layers.0.feed_forward.gate.weight")
        if gate[0] != num_experts:
            raise ConversionError(f"{file}: moe.num_experts={num_experts} but the router has {gate[0]} outputs")
        hidden = _required_shape(shards, "llma.layers.0.feed_forward.w1")[1]
        if "hidden_dim" in params and int(params["hidden_dim"]) != hidden:
            raise ConversionError(f"{file}: hidden_dim={params['hidden_dim']} but the experts are {hidden} wide")
    else:
        hidden = _required_shape(shards, "llma.layers.0.feed_forward.w1.weight")[0]
    return LLMConfig(
        arch=arch, vocab_size=emb[0], hidden_size=dim, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
        intermediate_size=hidden, max_position_embeddings=base.max_position_embeddings,
        rope_theta=float(_arg(params, defaults, "rope_theta", file)),
        rms_norm_eps=float(_arg(params, defaults, "norm_eps", file)), tie_word_embeddings=False,
        num_experts=num_experts, num_experts_per_tok=per_tok, router_aux_loss_coef=coef,
    )


def _required_shape(shards: ShardSet, key: str) -> tuple[int, ...]:
    if key not in shards.infos:
        raise ConversionError(f"{shards.paths[0]}: missing key {key}")
    return shards.merged_shape(key)


def _ranges(values: set[int]) -> str:
    return f"{min(values)}..{max(values)}" if values else "none"


# ---- the plan ------------------------------------------------------------------------------------
def llm_outputs(cfg: LLMConfig) -> list[Output]:
    """Every LLM tensor of our model, in file order (embeddings, layers, final norm, head)."""
    outs = [Output("llm.model.embed_tokens.weight", ("llma.tok_embeddings.weight",),
                   copied("llma.tok_embeddings.weight"))]
    for i in range(cfg.num_layers):
        src, dst = f"llma.layers.{i}.", f"llm.model.layers.{i}."
        attn = [
            ("self_attn.q_proj.weight", "attention.wq.weight", cfg.num_heads),
            ("self_attn.k_proj.weight", "attention.wk.weight", cfg.num_kv_heads),
            ("self_attn.v_proj.weight", "attention.wv.weight", None),
            ("self_attn.o_proj.weight", "attention.wo.weight", None),
            ("input_layernorm.weight", "attention_norm.weight", None),
            ("post_attention_layernorm.weight", "ffn_norm.weight", None),
        ]
        for ours, theirs, heads in attn:
            build = permuted(src + theirs, heads) if heads else copied(src + theirs)
            outs.append(Output(dst + ours, (src + theirs,), build))
        ff = src + "feed_forward."
        if cfg.arch == "mixtral":
            outs += [
                Output(dst + "mlp.gate.weight", (ff + "gate.weight",), copied(ff + "gate.weight")),
                Output(dst + "mlp.experts.gate_up_proj", (ff + "w1", ff + "w3"), fused_gate_up(ff + "w1", ff + "w3")),
                Output(dst + "mlp.experts.down_proj", (ff + "w2",), transposed_down(ff + "w2")),
            ]
        else:
            for ours, theirs in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                key = f"{ff}{theirs}.weight"
                outs.append(Output(f"{dst}mlp.{ours}.weight", (key,), copied(key)))
    outs.append(Output("llm.model.norm.weight", ("llma.norm.weight",), copied("llma.norm.weight")))
    outs.append(Output("llm.lm_head.weight", ("llma.output.weight",), copied("llma.output.weight")))
    return outs


def output_shape(out: Output, shards: ShardSet) -> tuple[int, ...]:
    """The shape `out.build` will produce, computed from the merged source shapes (nothing read)."""
    if out.name.endswith("mlp.experts.gate_up_proj"):
        experts, hidden, dim = shards.merged_shape(out.sources[0])
        if shards.merged_shape(out.sources[1]) != (experts, hidden, dim):
            raise ConversionError(
                f"{shards.paths[0]}: {out.sources[1]} merges to {shards.merged_shape(out.sources[1])} but "
                f"{out.sources[0]} to {(experts, hidden, dim)}; the two must match"
            )
        return (experts, 2 * hidden, dim)
    if out.name.endswith("mlp.experts.down_proj"):
        experts, hidden, dim = shards.merged_shape(out.sources[0])
        return (experts, dim, hidden)
    return shards.merged_shape(out.sources[0])
