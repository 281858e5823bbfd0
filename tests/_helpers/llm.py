"""Tiny LLM checkpoints in their real on-disk formats, for tests of sphinx_x.llm.

`write_internlm2_checkpoint` writes what an InternLM2 hub directory holds: a config.json with InternLM2's
own keys and weights named as its modeling code names them (packed `attention.wqkv` in the grouped
layout, `feed_forward.w1/w3/w2`, `tok_embeddings`, `output`), as safetensors or a torch .bin, optionally
sharded with an index.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sphinx_x.config import LLMConfig

# head_dim 8, three query heads per kv head: exercises the grouped wqkv layout.
TINY_INTERNLM2 = dict(
    vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
    intermediate_size=80, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=256,
)


def tiny_llm_config(arch: str, **overrides) -> LLMConfig:
    fields = dict(
        arch=arch, vocab_size=64, hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=80,
        max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
    )
    if arch == "mixtral":
        fields.update(num_experts=4, num_experts_per_tok=2)
    fields.update(overrides)
    return LLMConfig(**fields)


def internlm2_config_json(bias: bool = False, tie: bool = False, **overrides) -> dict:
    """A config.json as InternLM2's hub directories write it (trimmed to what matters, keys as upstream)."""
    config = dict(
        architectures=["InternLM2ForCausalLM"],
        auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                  "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
        model_type="internlm2", bias=bias, hidden_act="silu", initializer_range=0.02, pad_token_id=2,
        bos_token_id=1, eos_token_id=2, rope_scaling=None, tie_word_embeddings=tie, torch_dtype="bfloat16",
        use_cache=True, attn_implementation="eager", **TINY_INTERNLM2,
    )
    config.update(overrides)
    return config


def random_internlm2_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random InternLM2 weights with the native names and shapes (norm weights near 1 but not equal to it)."""
    g = torch.Generator().manual_seed(seed)
    d, heads, kv = config["hidden_size"], config["num_attention_heads"], config["num_key_value_heads"]
    head_dim, inter, vocab = d // heads, config["intermediate_size"], config["vocab_size"]

    def w(*shape, scale=0.15):
        return torch.randn(*shape, generator=g) * scale

    def norm():
        return 1.0 + w(d, scale=0.2)

    state = {"model.tok_embeddings.weight": w(vocab, d, scale=1.0), "model.norm.weight": norm()}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state[p + "attention.wqkv.weight"] = w((heads + 2 * kv) * head_dim, d)
        state[p + "attention.wo.weight"] = w(d, heads * head_dim)
        if config["bias"]:
            state[p + "attention.wqkv.bias"] = w((heads + 2 * kv) * head_dim)
            state[p + "attention.wo.bias"] = w(d)
        state[p + "feed_forward.w1.weight"] = w(inter, d)
        state[p + "feed_forward.w3.weight"] = w(inter, d)
        state[p + "feed_forward.w2.weight"] = w(d, inter)
        state[p + "attention_norm.weight"] = norm()
        state[p + "ffn_norm.weight"] = norm()
    if not config["tie_word_embeddings"]:
        state["output.weight"] = w(vocab, d)
    return state


def write_internlm2_checkpoint(
    directory: Path, config: dict, state: dict[str, torch.Tensor], fmt: str = "safetensors", shards: int = 1
) -> None:
    """Write `state` under `directory` as `fmt` ("safetensors" or "bin"), in `shards` files plus an index."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")

    def save(tensors: dict, name: str) -> None:
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / name))
        else:
            torch.save(tensors, directory / name)

    if shards == 1:
        save(state, f"{stem}.{suffix}")
        return
    keys = list(state)
    weight_map = {}
    for s in range(shards):
        name = f"{stem}-{s + 1:05d}-of-{shards:05d}.{suffix}"
        part = {k: state[k] for k in keys[s::shards]}
        save(part, name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))
