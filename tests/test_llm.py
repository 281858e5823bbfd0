"""LLM backbones: preset sizes, offline loading of Llama / Mixtral / InternLM2 checkpoints (MoE loss: own file)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from _helpers.llm import (
    internlm2_config_json,
    random_internlm2_state,
    tiny_llm_config,
    write_internlm2_checkpoint,
)
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM, MixtralForCausalLM

from sphinx_x.config import ConfigError, LLMConfig, SphinxXConfig
from sphinx_x.llm import (
    CheckpointError,
    build_llm,
    count_llm_params,
    llm_config_from_pretrained,
    llm_hf_config,
    split_internlm2_wqkv,
    with_path,
)


# ---- preset sizes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, published",
    [("tiny", 1.10e9), ("intern2", 7.74e9), ("plus", 13.0e9), ("plus-2k", 13.0e9), ("moe", 46.7e9)],
)
def test_preset_llm_parameter_counts_match_published(preset, published):
    count = count_llm_params(SphinxXConfig.from_name(preset).llm)
    assert abs(count - published) / published < 0.01, f"{preset}: {count / 1e9:.3f}B vs {published / 1e9}B"


def test_meta_build_allocates_nothing():
    model = build_llm(SphinxXConfig.from_name("moe").llm, device="meta")
    assert isinstance(model, MixtralForCausalLM)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.config.num_local_experts == 8 and model.config.num_experts_per_tok == 2


def test_hf_config_carries_the_dims():
    cfg = tiny_llm_config("mixtral", rope_theta=5e5, router_aux_loss_coef=0.02, tie_word_embeddings=True)
    hf = llm_hf_config(cfg)
    assert (hf.model_type, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads) == ("mixtral", 2, 6, 2)
    assert hf.rope_parameters["rope_theta"] == 5e5
    assert (hf.num_local_experts, hf.num_experts_per_tok, hf.router_aux_loss_coef) == (4, 2, 0.02)
    assert hf.tie_word_embeddings and hf._attn_implementation == "sdpa"
    assert llm_hf_config(tiny_llm_config("internlm2")).model_type == "llama"  # InternLM2 runs on Llama


@pytest.mark.parametrize(
    "overrides, field",
    [({"num_heads": 5}, "num_heads"), ({"num_kv_heads": 4}, "num_kv_heads"), ({"num_experts": 0}, "num_experts")],
)
def test_bad_dims_are_errors_naming_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field):
        llm_hf_config(tiny_llm_config("mixtral", **overrides))


# ---- transformers directories --------------------------------------------------------------------
@pytest.mark.parametrize("arch, cls", [("llama", LlamaForCausalLM), ("mixtral", MixtralForCausalLM)])
def test_saved_transformers_directory_loads_offline_with_identical_logits(tmp_path, arch, cls):
    torch.manual_seed(0)
    cfg = tiny_llm_config(arch, tie_word_embeddings=(arch == "llama"))
    original = build_llm(cfg).eval()
    original.save_pretrained(tmp_path)
    if arch == "mixtral":  # the real hub layout: one w1/w2/w3 per expert
        with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
            assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in set(f.keys())

    loaded = build_llm(LLMConfig(path=str(tmp_path))).eval()  # default arch "llama": the directory decides
    assert isinstance(loaded, cls)
    ids = torch.randint(0, cfg.vocab_size, (2, 11))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, original(input_ids=ids).logits)

    read = llm_config_from_pretrained(tmp_path)
    assert (read.arch, read.hidden_size, read.num_layers, read.num_heads, read.num_kv_heads) == (arch, 48, 2, 6, 2)
    assert read.num_experts == (4 if arch == "mixtral" else 0) and read.tie_word_embeddings == (arch == "llama")
    assert count_llm_params(read) == sum(p.numel() for p in loaded.parameters())
    assert build_llm(LLMConfig(path=str(tmp_path)), device="meta").device.type == "meta"


def test_loading_in_bfloat16(tmp_path):
    build_llm(tiny_llm_config("llama")).save_pretrained(tmp_path)
    assert build_llm(LLMConfig(path=str(tmp_path)), dtype=torch.bfloat16).dtype == torch.bfloat16


# ---- InternLM2: an independent forward from the packed layout ------------------------------------
def _rms_norm(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rotate(x, positions, theta):
    # InternLM2's rotary embedding: frequencies duplicated over the two halves, rotate_half convention.
    dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions[:, None].double() * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos().float(), torch.cat([angles, angles], -1).sin().float()
    half = torch.cat([-x[..., dim // 2:], x[..., : dim // 2]], -1)
    return x * cos[:, None] + half * sin[:, None]  # x: (seq, heads, dim)


def reference_internlm2_logits(state, config, ids, naive_qkv_split=False):
    """InternLM2's forward for one sequence, written from its modeling code, reading the packed wqkv.

    `naive_qkv_split` reads wqkv as [all q | all k | all v] instead: a wrong layout, to show the
    comparison can tell them apart.
    """
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d, eps, theta = config["hidden_size"], config["rms_norm_eps"], config["rope_theta"]
    head_dim, groups = d // heads, heads // kv
    seq = ids.shape[0]
    pos = torch.arange(seq)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    x = state["model.tok_embeddings.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms_norm(x, state[p + "attention_norm.weight"], eps)
        qkv = h @ state[p + "attention.wqkv.weight"].T
        if config["bias"]:
            qkv = qkv + state[p + "attention.wqkv.bias"]
        if naive_qkv_split:
            q, k, v = qkv.split([heads * head_dim, kv * head_dim, kv * head_dim], -1)
            q, k, v = q.view(seq, heads, head_dim), k.view(seq, kv, head_dim), v.view(seq, kv, head_dim)
        else:  # "b q (h gs d) -> b q h gs d" with gs = groups + 2: per kv head, its queries, then k, then v
            packed = qkv.view(seq, kv, groups + 2, head_dim)
            q = packed[:, :, :groups].reshape(seq, heads, head_dim)
            k, v = packed[:, :, groups], packed[:, :, groups + 1]
        q, k = _rotate(q, pos, theta), _rotate(k, pos, theta)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # query head j -> kv j//groups
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        attn = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        out = torch.einsum("hqk,khd->qhd", attn, v).reshape(seq, heads * head_dim) @ state[p + "attention.wo.weight"].T
        if config["bias"]:
            out = out + state[p + "attention.wo.bias"]
        x = x + out
        h = _rms_norm(x, state[p + "ffn_norm.weight"], eps)
        gate, up = h @ state[p + "feed_forward.w1.weight"].T, h @ state[p + "feed_forward.w3.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ state[p + "feed_forward.w2.weight"].T
    x = _rms_norm(x, state["model.norm.weight"], eps)
    head = state["model.tok_embeddings.weight"] if config["tie_word_embeddings"] else state["output.weight"]
    return x @ head.T


@pytest.mark.parametrize(
    "fmt, shards, bias, tie",
    [
        ("safetensors", 1, False, False),
        ("safetensors", 3, True, False),
        ("bin", 1, False, True),
        ("bin", 2, False, False),
    ],
)
def test_internlm2_native_checkpoint_matches_independent_forward(tmp_path, fmt, shards, bias, tie):
    config = internlm2_config_json(bias=bias, tie=tie)
    state = random_internlm2_state(config, seed=shards)
    write_internlm2_checkpoint(tmp_path, config, state, fmt=fmt, shards=shards)

    model = build_llm(LLMConfig(arch="internlm2", path=str(tmp_path))).eval()
    assert isinstance(model, LlamaForCausalLM) and model.config.attention_bias == bias

    ids = torch.randint(0, config["vocab_size"], (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        for b in range(ids.shape[0]):
            expected = reference_internlm2_logits(state, config, ids[b])
            torch.testing.assert_close(logits[b], expected, atol=2e-4, rtol=1e-4)
            wrong = reference_internlm2_logits(state, config, ids[b], naive_qkv_split=True)
            assert (logits[b] - wrong).abs().max() > 1e-2  # the comparison separates the layouts

    read = llm_config_from_pretrained(tmp_path)
    assert (read.arch, read.num_heads, read.num_kv_heads, read.rope_theta) == ("internlm2", 6, 2, 1e6)
    assert count_llm_params(read) == sum(p.numel() for p in model.parameters())


def test_internlm2_with_right_padding_matches_on_real_tokens(tmp_path):
    config = internlm2_config_json()
    state = random_internlm2_state(config)
    write_internlm2_checkpoint(tmp_path, config, state)
    model = build_llm(llm_config_from_pretrained(tmp_path)).eval()
    ids = torch.randint(0, config["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = reference_internlm2_logits(state, config, ids[1, :5])
    torch.testing.assert_close(logits[1, :5], expected, atol=2e-4, rtol=1e-4)


def test_internlm2_rope_scaling_is_carried_over(tmp_path):
    config = internlm2_config_json(rope_scaling={"type": "dynamic", "factor": 2.0})
    state = random_internlm2_state(config)
    write_internlm2_checkpoint(tmp_path / "dynamic", config, state)
    model = build_llm(LLMConfig(path=str(tmp_path / "dynamic"))).eval()
    assert model.config.rope_parameters == {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}
    ids = torch.arange(10)  # within max_position_embeddings dynamic NTK leaves the frequencies alone
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(logits, reference_internlm2_logits(state, config, ids), atol=2e-4, rtol=1e-4)

    config["rope_scaling"] = {"type": "yarn", "factor": 2.0}
    write_internlm2_checkpoint(tmp_path / "yarn", config, state)
    with pytest.raises(CheckpointError, match="config.json: unsupported rope_scaling"):
        build_llm(LLMConfig(path=str(tmp_path / "yarn")))


def test_with_path_takes_dims_from_the_directory_and_keeps_training_settings(tmp_path):
    config = internlm2_config_json()
    write_internlm2_checkpoint(tmp_path, config, random_internlm2_state(config))
    preset = SphinxXConfig.from_name("intern2").llm
    cfg = with_path(dataclasses.replace(preset, router_aux_loss_coef=0.05), tmp_path)
    assert (cfg.arch, cfg.vocab_size, cfg.hidden_size, cfg.path) == ("internlm2", 64, 48, str(tmp_path))
    assert cfg.router_aux_loss_coef == 0.05


def test_split_wqkv_grouped_layout_by_labels():
    # Rows labelled by (kv head, slot, dim): slot < groups is a query head of that group, then k, then v.
    heads, kv, head_dim = 6, 2, 2
    groups = heads // kv
    labels = torch.tensor([[g, s, e] for g in range(kv) for s in range(groups + 2) for e in range(head_dim)])
    q, k, v = split_internlm2_wqkv(labels, heads, kv, head_dim)
    assert q[:, :2].tolist() == [[h // groups, h % groups] for h in range(heads) for _ in range(head_dim)]
    assert k[:, :2].tolist() == [[g, groups] for g in range(kv) for _ in range(head_dim)]
    assert v[:, :2].tolist() == [[g, groups + 1] for g in range(kv) for _ in range(head_dim)]


# ---- errors name the file ------------------------------------------------------------------------
def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="nope"):
        build_llm(LLMConfig(path=str(tmp_path / "nope")))


def test_missing_and_invalid_config_json(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: missing"):
        llm_config_from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        build_llm(LLMConfig(path=str(tmp_path)))


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"config.json: unsupported model_type 'gpt2'"):
        build_llm(LLMConfig(path=str(tmp_path)))


def test_internlm2_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(internlm2_config_json()))
    with pytest.raises(CheckpointError, match="no weights found"):
        build_llm(LLMConfig(path=str(tmp_path)))


def test_internlm2_unknown_and_missing_tensors(tmp_path):
    config = internlm2_config_json()
    state = random_internlm2_state(config)
    extra = {**state, "model.layers.0.attention.wq.weight": state["output.weight"].clone()}
    write_internlm2_checkpoint(tmp_path / "extra", config, extra)
    with pytest.raises(CheckpointError, match=r"unexpected InternLM2 tensor 'model.layers.0.attention.wq.weight'"):
        build_llm(LLMConfig(path=str(tmp_path / "extra")))
    del state["model.layers.1.ffn_norm.weight"]
    write_internlm2_checkpoint(tmp_path / "short", config, state)
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.post_attention_layernorm.weight'"):
        build_llm(LLMConfig(path=str(tmp_path / "short")))


def test_transformers_directory_with_missing_tensor_or_no_weights(tmp_path):
    build_llm(tiny_llm_config("llama")).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        build_llm(LLMConfig(path=str(tmp_path)))
    weights.unlink()
    with pytest.raises(CheckpointError, match="cannot load LlamaForCausalLM"):
        build_llm(LLMConfig(path=str(tmp_path)))


def test_truncated_weights_file(tmp_path):
    config = internlm2_config_json()
    write_internlm2_checkpoint(tmp_path, config, random_internlm2_state(config))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors file"):
        build_llm(LLMConfig(path=str(tmp_path)))
