"""Meta's interleaved rotary layout -> transformers' rotate-half layout, for wq / wk rows.

Meta (and LLaMA2-Accessory, which reuses its `apply_rotary_emb`) rotates consecutive pairs of a head's
features, (x0, x1), (x2, x3), ...; transformers' Llama/Mixtral rotate x[i] with x[i + head_dim/2].
Both compute the same attention once the rows of every head of wq and wk are reordered so that the
even features come first, then the odd ones: row 2i of a head goes to row i, row 2i+1 to head_dim/2 + i
(the permutation transformers' own `convert_llama_weights_to_hf` applies). Keys use their own head
count (n_kv_heads under grouped-query attention). wv and wo are untouched: attention scores are
invariant to a permutation applied to q and k alike, and values are never rotated.
"""

from __future__ import annotations

import torch


def interleaved_to_rotate_half(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the rows of a (num_heads * head_dim, in_features) projection; returns a new tensor."""
    rows = weight.shape[0]
    if weight.ndim != 2 or rows % num_heads or (rows // num_heads) % 2:
        raise ValueError(
            f"cannot permute a {tuple(weight.shape)} projection for rotary embeddings over {num_heads} heads: "
            "rows must split into heads of an even size"
        )
    head_dim = rows // num_heads
    return (
        weight.reshape(num_heads, head_dim // 2, 2, weight.shape[1])
        .transpose(1, 2)
        .reshape(rows, weight.shape[1])
        .contiguous()
    )
