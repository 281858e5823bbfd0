"""The language-model backbone of SPHINX-X, built through transformers.

Three families (README "The family"): Llama (TinyLlama, LLaMA2) as `LlamaForCausalLM`, Mixtral as
`MixtralForCausalLM`, and InternLM2, which is run on the Llama architecture: its native checkpoint
(packed `wqkv`, `w1/w2/w3`, `tok_embeddings`, `output`) is converted onto `LlamaForCausalLM` at load time.

Calling the model (what `sphinx_x.model` does):

    llm = build_llm(cfg.llm, device, dtype)
    embeds = llm.get_input_embeddings()(input_ids)       # then splice the visual tokens in
    out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
              cache=cache, use_cache=use_cache,            # transformers 5.x renamed past_key_values -> cache
              output_router_logits=is_moe and training)    # Mixtral only: keep the router logits
    loss = ce(out.logits, labels) + cfg.llm.router_aux_loss_coef * router_aux_loss(out, cfg.llm, mask)

Do not pass `labels` to a Mixtral forward when adding `router_aux_loss` yourself: transformers then
already adds `config.router_aux_loss_coef` times its own pooled balance loss (k times ours) to `out.loss`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PretrainedConfig
from transformers.modeling_utils import PreTrainedModel

from sphinx_x.config import ConfigError, LLMConfig
from sphinx_x.errors import CheckpointError
from sphinx_x.fileio import read_json_object, read_state_dict

ATTN_IMPLEMENTATION = "sdpa"


# ---- configs -------------------------------------------------------------------------------------
def _check_dims(cfg: LLMConfig) -> None:
    if cfg.hidden_size % cfg.num_heads:
        raise ConfigError(f"llm.hidden_size ({cfg.hidden_size}) must be divisible by llm.num_heads ({cfg.num_heads})")
    if cfg.num_heads % cfg.num_kv_heads:
        raise ConfigError(f"llm.num_heads ({cfg.num_heads}) must be divisible by llm.num_kv_heads ({cfg.num_kv_heads})")
    if cfg.arch == "mixtral":
        if cfg.num_experts < 1:
            raise ConfigError(f"llm.num_experts must be >= 1 for arch 'mixtral', got {cfg.num_experts}")
        if not 1 <= cfg.num_experts_per_tok <= cfg.num_experts:
            raise ConfigError(
                f"llm.num_experts_per_tok must be in 1..{cfg.num_experts} (llm.num_experts), "
                f"got {cfg.num_experts_per_tok}"
            )


def llm_hf_config(cfg: LLMConfig) -> PretrainedConfig:
    """The transformers config for `cfg`'s dims: LlamaConfig for llama and internlm2, MixtralConfig for mixtral.

    Router logits are off by default (generation does not need them); a training forward asks for them
    with `output_router_logits=True` so that `router_aux_loss` can be computed.
    """
    _check_dims(cfg)
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_act="silu",
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    if cfg.arch == "mixtral":
        return MixtralConfig(
            **common,
            num_local_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
            output_router_logits=False,
        )
    return LlamaConfig(**common)


def _read_config_json(path: str | Path) -> tuple[Path, dict]:
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"LLM path {root} is not a directory (expected a transformers or InternLM2 checkpoint)")
    file = root / "config.json"
    return file, read_json_object(file, CheckpointError, "an LLM directory needs a config.json")


def _arch_of(file: Path, data: dict) -> str:
    model_type = data.get("model_type")
    architectures = data.get("architectures") or []
    if model_type == "internlm2" or "InternLM2ForCausalLM" in architectures:
        return "internlm2"
    if model_type in ("llama", "mixtral"):
        return model_type
    raise CheckpointError(
        f"{file}: unsupported model_type {model_type!r} (architectures {architectures}); "
        "supported: llama, mixtral, internlm2"
    )


def _field(file: Path, data: dict, key: str, default=None):
    if key in data and data[key] is not None:
        return data[key]
    if default is None:
        raise CheckpointError(f"{file}: missing required key {key!r}")
    return default


def _rope_theta(data: dict) -> float:
    # transformers 5.x writes rope_parameters; older files and InternLM2 write rope_theta at the top level.
    params = data.get("rope_parameters") or {}
    return float(params.get("rope_theta", data.get("rope_theta", 10000.0)))


def llm_config_from_pretrained(path: str | Path) -> LLMConfig:
    """Read an LLMConfig (dims and arch) from a local llama / mixtral / internlm2 directory's config.json.

    `path` is kept, so `build_llm` loads the weights. `router_aux_loss_coef` stays at the SPHINX-MoE
    value (0.01), not the checkpoint's own training value.
    """
    file, data = _read_config_json(path)
    arch = _arch_of(file, data)
    heads = int(_field(file, data, "num_attention_heads"))
    cfg = LLMConfig(
        arch=arch,
        vocab_size=int(_field(file, data, "vocab_size")),
        hidden_size=int(_field(file, data, "hidden_size")),
        num_layers=int(_field(file, data, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(_field(file, data, "num_key_value_heads", heads)),
        intermediate_size=int(_field(file, data, "intermediate_size")),
        max_position_embeddings=int(_field(file, data, "max_position_embeddings", 2048)),
        rope_theta=_rope_theta(data),
        rms_norm_eps=float(_field(file, data, "rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
        num_experts=int(data.get("num_local_experts", 0)) if arch == "mixtral" else 0,
        num_experts_per_tok=int(data.get("num_experts_per_tok", 2)),
        path=str(path),
    )
    try:
        _check_dims(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{file}: {e}") from e
    return cfg


def internlm2_llama_config(path: str | Path) -> LlamaConfig:
    """The LlamaConfig equivalent to an InternLM2 directory's native config.json (bias, rope scaling included)."""
    file, data = _read_config_json(path)
    cfg = llm_config_from_pretrained(path)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    scaling = data.get("rope_scaling")
    if scaling:  # InternLM2 writes {"type": "dynamic" | "linear", "factor": f}; both exist in transformers
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind not in ("dynamic", "linear") or "factor" not in scaling:
            raise CheckpointError(f"{file}: unsupported rope_scaling {scaling!r}; supported types: dynamic, linear")
        rope = {"rope_type": kind, "rope_theta": cfg.rope_theta, "factor": float(scaling["factor"])}
    config = llm_hf_config(cfg)  # the dims, as for any Llama; then what only InternLM2's file says
    config.rope_parameters = rope
    config.attention_bias = bool(data.get("bias", False))  # InternLM2's `bias` covers wqkv and wo, not the MLP
    config.hidden_act = data.get("hidden_act", "silu")
    config.bos_token_id = data.get("bos_token_id", 1)
    config.eos_token_id = data.get("eos_token_id", 2)
    config.pad_token_id = data.get("pad_token_id")
    return config


# ---- InternLM2 native checkpoints -----------------------------------------------------------------
def split_internlm2_wqkv(
    wqkv: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unpack InternLM2's fused qkv weight (or bias) into Llama's q, k, v.

    InternLM2 groups rows per kv head: for each of the `num_kv_heads` groups, its `num_heads / num_kv_heads`
    query heads, then its key head, then its value head, each `head_dim` rows (the modeling code's
    `rearrange(qkv, "b q (h gs d) -> b q h gs d", gs=2 + groups)`). Query head h thus belongs to kv head
    h // groups, which is exactly Llama's `repeat_kv` order, so no head permutation is needed.
    """
    groups = num_heads // num_kv_heads
    rest = wqkv.shape[1:]
    packed = wqkv.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = packed[:, :groups].reshape(num_heads * head_dim, *rest)
    k = packed[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = packed[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return q, k, v


_INTERNLM2_LAYER_RENAMES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_INTERNLM2_TOP_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def internlm2_to_llama_state_dict(
    state: dict[str, torch.Tensor], config: LlamaConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename and unpack an InternLM2 state dict onto LlamaForCausalLM's keys; unknown keys are errors."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in _INTERNLM2_TOP_RENAMES:
            out[_INTERNLM2_TOP_RENAMES[key]] = tensor
            continue
        parts = key.split(".")  # model.layers.{i}.{module...}.{weight|bias}
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a non-persistent buffer some older exports saved; Llama recomputes it
        if len(parts) < 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
            raise CheckpointError(f"{source}: unexpected InternLM2 tensor {key!r}")
        prefix, module, leaf = f"model.layers.{parts[2]}", ".".join(parts[3:-1]), parts[-1]
        if module == "attention.wqkv":
            q, k, v = split_internlm2_wqkv(tensor, heads, kv_heads, head_dim)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{prefix}.self_attn.{name}.{leaf}"] = part.contiguous()
        elif module in _INTERNLM2_LAYER_RENAMES:
            out[f"{prefix}.{_INTERNLM2_LAYER_RENAMES[module]}.{leaf}"] = tensor
        else:
            raise CheckpointError(f"{source}: unexpected InternLM2 tensor {key!r}")
    return out


# ---- building ------------------------------------------------------------------------------------
def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    return MixtralForCausalLM if isinstance(config, MixtralConfig) else LlamaForCausalLM


def _build_from_config(config: PretrainedConfig, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    # Allocating directly on `device` (meta: no memory at all) avoids a CPU copy of large models.
    with torch.device(device):
        return _model_class(config)._from_config(config, dtype=dtype)


def _check_complete(model: PreTrainedModel, info: dict, source: str) -> None:
    missing = [k for k in info.get("missing_keys", ()) if not k.endswith("rotary_emb.inv_freq")]
    unexpected = list(info.get("unexpected_keys", ()))
    mismatched = list(info.get("mismatched_keys", ()))
    if missing or unexpected or mismatched:
        what = (
            f"missing tensor {missing[0]!r}" if missing
            else f"unexpected tensor {unexpected[0]!r}" if unexpected
            else f"tensor with the wrong shape {mismatched[0]}"
        )
        raise CheckpointError(f"{source}: {what} for {type(model).__name__}")


def _load_local(path: str, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    file, data = _read_config_json(path)
    arch = _arch_of(file, data)
    if arch == "internlm2":
        config = internlm2_llama_config(path)
        if device.type == "meta":
            return _build_from_config(config, device, dtype)
        state = internlm2_to_llama_state_dict(read_state_dict(path), config, source=str(path))
        model, info = LlamaForCausalLM.from_pretrained(
            None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
        )
    else:
        cls = MixtralForCausalLM if arch == "mixtral" else LlamaForCausalLM
        if device.type == "meta":
            config = cls.config_class.from_pretrained(path, local_files_only=True)
            config._attn_implementation = ATTN_IMPLEMENTATION
            return _build_from_config(config, device, dtype)
        try:
            model, info = cls.from_pretrained(
                path, local_files_only=True, dtype=dtype, attn_implementation=ATTN_IMPLEMENTATION,
                output_loading_info=True,
            )
        except OSError as e:  # transformers' message for a directory without weights
            raise CheckpointError(f"{path}: cannot load {cls.__name__}: {e}") from e
    _check_complete(model, info, str(path))
    return model.to(device)


def build_llm(
    cfg: LLMConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """A *ForCausalLM for `cfg`: random init from its dims, or the weights under `cfg.path` (offline).

    With `cfg.path` set, the directory's own config.json decides the architecture and dims (the path wins
    over `cfg`'s dims and arch). `device="meta"` builds the structure only, allocating no memory.
    Random init follows transformers' initialisation under the current torch seed.
    """
    device = torch.device(device)
    if cfg.path is not None:
        return _load_local(cfg.path, device, dtype)
    return _build_from_config(llm_hf_config(cfg), device, dtype)


def count_llm_params(cfg: LLMConfig) -> int:
    """Parameters of the LLM `cfg` describes (tied embeddings counted once), built on the meta device."""
    model = build_llm(cfg, device="meta")
    return sum(p.numel() for p in model.parameters())


# ---- Mixtral load balancing ----------------------------------------------------------------------
def router_aux_loss(
    outputs, cfg: LLMConfig | PretrainedConfig, attention_mask: torch.Tensor | None = None
) -> torch.Tensor | None:
    """The raw SPHINX-MoE load-balancing loss of a forward made with `output_router_logits=True`.

    The definition of the public SPHINX-MoE code, one value per MoE layer, then the mean over layers:

        loss_layer = E / (N * k) * sum_e count_e * mean_prob_e

    with E experts, top-k routing, N tokens, `count_e` the number of the N*k top-k slots that went to
    expert e (no gradient) and `mean_prob_e` the router softmax probability of e averaged over the N
    tokens (the gradient path). `attention_mask` (the 2-D mask given to the forward) keeps padding out
    of N and of both statistics; without padding the value is the official one.

    What the value means: 1 when the load is balanced (every expert gets N*k/E slots, or the router's
    probabilities are uniform); it grows toward E/k as the routing collapses onto k experts. It is
    1/k of transformers' `load_balancing_loss_func`, which pools all layers and keeps the factor k
    (2 when balanced). The caller multiplies by `cfg.router_aux_loss_coef`. Returns None for dense
    models. `cfg` may be an LLMConfig or the model's transformers config.
    """
    router_logits = getattr(outputs, "router_logits", None)
    is_moe = getattr(cfg, "arch", None) == "mixtral" or isinstance(cfg, MixtralConfig)
    if not router_logits:
        if is_moe:
            raise ValueError("router_aux_loss: the outputs carry no router_logits; call the model with "
                             "output_router_logits=True")
        return None
    keep = None
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"router_aux_loss: attention_mask must be 2-D (batch, seq), got {tuple(attention_mask.shape)}")
        keep = attention_mask.reshape(-1).bool()
    return torch.stack([_layer_balance_loss(logits, cfg.num_experts_per_tok, keep) for logits in router_logits]).mean()


def _layer_balance_loss(logits: torch.Tensor, top_k: int, keep: torch.Tensor | None) -> torch.Tensor:
    """One layer's E / (N * k) * sum_e count_e * mean_prob_e over its (tokens, E) router logits."""
    if keep is not None:
        if keep.numel() != logits.shape[0]:
            raise ValueError(f"router_aux_loss: attention_mask covers {keep.numel()} positions but the router "
                             f"saw {logits.shape[0]} tokens")
        logits = logits[keep.to(logits.device)]
    num_tokens, num_experts = logits.shape
    if num_tokens == 0:
        return logits.sum() * 0.0  # nothing routed: no balance to measure, keeps the graph
    probs = torch.softmax(logits.float(), dim=-1)  # the router runs its softmax in float32 too
    chosen = probs.topk(top_k, dim=-1).indices.reshape(-1)
    counts = torch.nn.functional.one_hot(chosen, num_experts).sum(dim=0).to(probs.dtype)  # top-k slots per expert
    return num_experts / (num_tokens * top_k) * torch.dot(counts, probs.mean(dim=0))


def with_path(cfg: LLMConfig, path: str | Path) -> LLMConfig:
    """`cfg` pointed at local weights: dims and arch from the directory, training settings kept from `cfg`."""
    loaded = llm_config_from_pretrained(path)
    return dataclasses.replace(loaded, router_aux_loss_coef=cfg.router_aux_loss_coef)
