"""Experimental levers for `benchmarks/ladder.py --patch benchmarks/ladder/levers.py:NAME`.

Each function changes a built SphinxX in place, so a lever can be judged on the ladder before it is made
part of the project's model code.
"""

from __future__ import annotations

from torch import nn

from sphinx_x.llm import llm_hf_config


def qknorm(model: nn.Module) -> None:
    """Replace the Llama LLM with a freshly initialised Qwen3 of the same dims: Llama plus a per-head
    RMSNorm on queries and keys (QK-norm), which bounds the attention logits' scale."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = model.config.llm
    hf = llm_hf_config(cfg).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
            "tie_word_embeddings", "hidden_act")
    q3 = Qwen3Config(**{k: hf[k] for k in keep if k in hf}, head_dim=cfg.hidden_size // cfg.num_heads,
                     attention_bias=False, initializer_range=hf.get("initializer_range", 0.02))
    model.llm = Qwen3ForCausalLM._from_config(q3)
