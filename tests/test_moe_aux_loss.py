"""The Mixtral load-balancing loss: the SPHINX-MoE definition (per layer, averaged over layers), its value
on hand-made router logits and on a tiny Mixtral, padding, gradients and errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from _helpers.llm import tiny_llm_config
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from sphinx_x.llm import build_llm, router_aux_loss


def _formula(layers: list[list[list[float]]], top_k: int) -> float:
    """E / (N * k) * sum_e count_e * mean_prob_e per layer, mean over layers; plain Python on logit lists."""
    values = []
    for tokens in layers:
        num_experts = len(tokens[0])
        counts = [0] * num_experts
        prob_sums = [0.0] * num_experts
        for logits in tokens:
            z = sum(math.exp(v) for v in logits)
            probs = [math.exp(v) / z for v in logits]
            for e in sorted(range(num_experts), key=lambda e: -probs[e])[:top_k]:
                counts[e] += 1
            prob_sums = [s + p for s, p in zip(prob_sums, probs)]
        n = len(tokens)
        values.append(num_experts / (n * top_k) * sum(c * s / n for c, s in zip(counts, prob_sums)))
    return sum(values) / len(values)


def _real_rows(layer: torch.Tensor, mask: torch.Tensor) -> list[list[float]]:
    return [row for row, m in zip(layer.tolist(), mask.reshape(-1).tolist()) if m]


# ---- the formula on hand-made router logits ------------------------------------------------------
def test_matches_the_formula_per_layer_averaged_over_layers():
    g = torch.Generator().manual_seed(0)
    cfg = tiny_llm_config("mixtral")  # 4 experts, top-2
    layers = tuple(torch.randn(12, 4, generator=g) * s for s in (0.5, 2.0, 4.0))  # 2 x 6 tokens, 3 layers
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    out = SimpleNamespace(router_logits=layers)
    got = router_aux_loss(out, cfg, mask)
    assert got.item() == pytest.approx(_formula([_real_rows(x, mask) for x in layers], 2), rel=1e-5)
    assert router_aux_loss(out, cfg).item() == pytest.approx(_formula([x.tolist() for x in layers], 2), rel=1e-5)
    # the layers are averaged, not pooled: the pooled statistics give a different value
    pooled = _formula([[row for x in layers for row in _real_rows(x, mask)]], 2)
    assert got.item() != pytest.approx(pooled, rel=1e-3)


def test_balanced_routing_gives_one_and_collapse_gives_up_to_experts_over_k():
    cfg = tiny_llm_config("mixtral")  # E=4, k=2
    shifts = torch.stack([torch.tensor([5.0, 4.0, 0.0, 0.0]).roll(i) for i in range(4)])  # every expert twice
    balanced = router_aux_loss(SimpleNamespace(router_logits=(shifts, shifts.flip(0))), cfg)
    assert balanced.item() == pytest.approx(1.0)
    uniform = router_aux_loss(SimpleNamespace(router_logits=(torch.zeros(7, 4),)), cfg)  # ties: any top-2
    assert uniform.item() == pytest.approx(1.0)
    one_pair = shifts[:1].expand(8, 4)  # every token to experts 0 and 1, in both layers
    collapsed = router_aux_loss(SimpleNamespace(router_logits=(one_pair, one_pair)), cfg)
    p01 = (math.exp(5) + math.exp(4)) / (math.exp(5) + math.exp(4) + 2)
    assert collapsed.item() == pytest.approx(4 / 2 * p01)  # E / k * (p0 + p1) -> E / k = 2 as p01 -> 1


def test_is_transformers_pooled_loss_over_k_for_one_layer():
    """transformers' loss keeps the factor k; for a single layer (nothing to pool) the two differ by exactly k."""
    g = torch.Generator().manual_seed(1)
    for top_k in (1, 2, 3):
        cfg = tiny_llm_config("mixtral", num_experts=5, num_experts_per_tok=top_k)
        logits = torch.randn(20, 5, generator=g) * 3
        ours = router_aux_loss(SimpleNamespace(router_logits=(logits,)), cfg)
        torch.testing.assert_close(ours * top_k, load_balancing_loss_func((logits,), 5, top_k))


# ---- a tiny Mixtral ------------------------------------------------------------------------------
def _gate_inputs(model) -> list[torch.Tensor]:
    """Hooks on every layer's router: the hidden states it scores, in layer order."""
    seen: list[torch.Tensor] = []

    def keep(module, args, output):
        seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(keep)
    return seen


def test_tiny_mixtral_value_is_the_formula_on_its_router_scores_and_trains_the_router():
    torch.manual_seed(0)
    cfg = tiny_llm_config("mixtral", num_layers=3)
    model = build_llm(cfg).eval()
    seen = _gate_inputs(model)
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    out = model(input_ids=ids, attention_mask=mask, output_router_logits=True)
    aux = router_aux_loss(out, cfg, mask)
    with torch.no_grad():  # router logits recomputed from the gate weights, independently of the outputs
        layers = [h @ layer.mlp.gate.weight.T for h, layer in zip(seen, model.model.layers)]
    assert aux.item() == pytest.approx(_formula([_real_rows(x, mask) for x in layers], 2), rel=1e-5)
    assert 1.0 < aux.item() < 2.0  # random routing is slightly unbalanced, at most E / k
    assert aux.item() != pytest.approx(router_aux_loss(out, cfg).item(), rel=1e-4)  # padding is left out
    aux.backward()
    assert all(layer.mlp.gate.weight.grad.abs().sum() > 0 for layer in model.model.layers)


def test_tiny_mixtral_with_uniform_router_gives_exactly_one_where_transformers_gives_k():
    torch.manual_seed(0)
    cfg = tiny_llm_config("mixtral")
    model = build_llm(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.zero_()  # every router probability 1/E
    ids = torch.randint(0, cfg.vocab_size, (2, 9))
    out = model(input_ids=ids, output_router_logits=True)
    assert router_aux_loss(out, cfg).item() == pytest.approx(1.0, abs=1e-6)
    hf = load_balancing_loss_func(tuple(out.router_logits), cfg.num_experts, cfg.num_experts_per_tok)
    assert hf.item() == pytest.approx(cfg.num_experts_per_tok, abs=1e-6)  # the old value: k times ours


# ---- errors --------------------------------------------------------------------------------------
def test_needs_router_logits_and_is_none_for_dense():
    cfg = tiny_llm_config("mixtral")
    model = build_llm(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 5))
    with pytest.raises(ValueError, match="output_router_logits=True"):
        router_aux_loss(model(input_ids=ids), cfg)
    dense = tiny_llm_config("llama")
    assert router_aux_loss(build_llm(dense)(input_ids=ids), dense) is None


def test_mask_of_the_wrong_shape_is_named():
    cfg = tiny_llm_config("mixtral")
    out = SimpleNamespace(router_logits=(torch.zeros(6, 4),))
    with pytest.raises(ValueError, match="2-D"):
        router_aux_loss(out, cfg, torch.ones(6))
    with pytest.raises(ValueError, match="covers 8 positions but the router saw 6 tokens"):
        router_aux_loss(out, cfg, torch.ones(2, 4))
