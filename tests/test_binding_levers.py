"""Projector levers of benchmarks/binding/levers.py: one Linear + LayerNorm per input group, summed
(`projector_grouped`), and the experts' per-token read-outs as one more group (`projector_token_heads`)."""

from __future__ import annotations

import dataclasses
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "binding"))

import levers  # noqa: E402
from ladder import oracle  # noqa: E402
from ladder.tasks import TASKS  # noqa: E402

from sphinx_x.canvas import collate_images, prepare_image  # noqa: E402
from sphinx_x.config import SphinxXConfig  # noqa: E402
from sphinx_x.vision import MixtureOfVisualExperts  # noqa: E402

D = 32


def _batch(vision):
    item = TASKS[3].make(random.Random(1))
    views = prepare_image(item.image, vision)
    oracle.register(views, vision.experts[0].name, item.objects)
    return collate_images([views], vision)


def _by_hand(groups, x):
    out, start = 0, 0
    for g in groups:
        lin, ln = g
        n = lin.in_features
        out = out + ln(lin(x[..., start : start + n]))
        start += n
    return out


def test_grouped_projector_sums_one_normed_linear_per_expert():
    torch.manual_seed(0)
    vision = SphinxXConfig.from_name("nano").vision
    model = SimpleNamespace(config=SimpleNamespace(vision=vision), visual=MixtureOfVisualExperts(vision, D))
    levers.projector_ln_small(model)
    levers.projector_grouped(model)
    proj = model.visual.projector
    assert proj.sizes == [e.channels for e in vision.experts]
    assert all(torch.equal(g[1].weight.detach(), torch.full((D,), 0.02)) for g in proj.groups)
    batch = _batch(vision)
    with torch.no_grad():
        out = model.visual(batch)
        feats = torch.cat([model.visual.experts[e.name](batch.views[e.name]) for e in vision.experts], -1)
        expected = _by_hand(proj.groups, feats)
    assert out.shape == (5, 1 + vision.feature_grid ** 2, D)
    torch.testing.assert_close(out, expected)
    # each group's LayerNorm output has norm 0.02 * sqrt(D) per token, whatever its input's scale
    with torch.no_grad():
        first = proj.groups[0][1](proj.groups[0][0](feats[..., : proj.sizes[0]] * 100))
    torch.testing.assert_close(first.norm(dim=-1), torch.full(first.shape[:-1], 0.02 * D ** 0.5), rtol=1e-3, atol=0)


def test_grouped_projector_on_oracle_with_experts_gives_the_symbols_their_own_group():
    torch.manual_seed(0)
    vision = SphinxXConfig.from_name("nano").vision
    experts = MixtureOfVisualExperts(vision, D).experts
    model = SimpleNamespace(config=SimpleNamespace(vision=vision),
                            visual=oracle.OracleWithExpertsVisual(vision, D, experts))
    levers.projector_grouped(model)
    assert model.visual.projector.sizes == [oracle.FEATURES, *[e.channels for e in vision.experts]]
    assert model.visual(_batch(vision)).shape == (5, 1 + vision.feature_grid ** 2, D)


def test_token_heads_enter_as_probabilities_in_their_own_group(tmp_path):
    torch.manual_seed(0)
    base = SphinxXConfig.from_name("nano").vision
    heads = {}
    for e in base.experts:
        heads[e.name] = {"mean": torch.randn(e.channels), "std": torch.rand(e.channels) + 0.5,
                         "colour.weight": torch.randn(7, e.channels), "colour.bias": torch.randn(7),
                         "shape.weight": torch.randn(5, e.channels), "shape.bias": torch.randn(5)}
    torch.save(heads, tmp_path / "token_heads.pt")
    visual = MixtureOfVisualExperts(base, D)
    experts = [dataclasses.replace(e, checkpoint=str(tmp_path / f"{e.name}.safetensors")) for e in base.experts]
    model = SimpleNamespace(config=SimpleNamespace(vision=SimpleNamespace(experts=experts)), visual=visual)
    levers.projector_token_heads(model)
    proj = visual.projector
    assert proj.sizes == [2 * (7 + 5), *[e.channels for e in base.experts]]
    batch = _batch(base)
    with torch.no_grad():
        out = visual(batch)
        feats = [visual.experts[e.name](batch.views[e.name]) for e in base.experts]
        probs = []
        for e, f in zip(base.experts, feats):
            h = heads[e.name]
            z = (f - h["mean"]) / h["std"]
            probs += [torch.softmax(z @ h["colour.weight"].T + h["colour.bias"], -1),
                      torch.softmax(z @ h["shape.weight"].T + h["shape.bias"], -1)]
        expected = _by_hand(proj.groups, torch.cat([*probs, *feats], -1))
    torch.testing.assert_close(out, expected)
