"""`optim.name: muon`: Fp32Muon against torch.optim.Muon, the Muon/AdamW split, state round trips, the Trainer."""

from __future__ import annotations

import copy

import pytest
import torch
from _helpers.train import NANO_YAML, fast_overrides
from test_train import first_update_with

from sphinx_x.config import ConfigError
from sphinx_x.train.config import load_train_config
from sphinx_x.train.optim import Fp32Muon, MuonAdamW, build_optimizer, is_muon_parameter, newton_schulz_fp32


def _matrices(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(24, 40, generator=g)), torch.nn.Parameter(torch.randn(40, 16, generator=g))]


def test_fp32_muon_matches_torch_muon():
    """Same arguments, three steps on the same gradients: Fp32Muon's updates equal torch.optim.Muon's up to torch's
    bf16 orthogonalisation (a few % of the update), and they are not a plain momentum step."""
    ours, theirs, sgd = _matrices(0), _matrices(0), _matrices(0)
    kw = dict(lr=0.02, weight_decay=0.01, momentum=0.95, adjust_lr_fn="match_rms_adamw")
    opts = [Fp32Muon(ours, **kw), torch.optim.Muon(theirs, **kw), torch.optim.SGD(sgd, lr=0.02, momentum=0.95)]
    start = [p.detach().clone() for p in ours]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in ours]
        for params, opt in zip((ours, theirs, sgd), opts):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            opt.step()
    for a, b, c, p0 in zip(ours, theirs, sgd, start):
        da, db, dc = a.detach() - p0, b.detach() - p0, c.detach() - p0
        assert (da - db).norm() / db.norm() < 0.05
        assert (dc - db).norm() / db.norm() > 0.5


class _Toy(torch.nn.Module):
    """Parameter names as in SphinxX: an LLM with decoder layers, an embedding, a norm; a projector."""

    def __init__(self):
        super().__init__()
        layer = torch.nn.ModuleDict({"q_proj": torch.nn.Linear(8, 8, bias=False), "norm": torch.nn.LayerNorm(8)})
        self.llm = torch.nn.ModuleDict({"embed": torch.nn.Embedding(10, 8), "layers": torch.nn.ModuleList([layer])})
        self.projector = torch.nn.Linear(6, 8)

    def forward(self, ids, feats):
        x = self.llm["embed"](ids) + self.projector(feats)
        layer = self.llm["layers"][0]
        return layer["q_proj"](layer["norm"](x)).pow(2).mean()


def _train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randint(0, 10, (4,), generator=g), torch.randn(4, 6, generator=g))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def _muon_adamw(model):
    named = list(model.named_parameters())
    return build_optimizer("muon", named, [{"params": [p for _, p in named], "lr": 0.01}], lr=0.01,
                           betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)


def test_muon_takes_only_the_llm_hidden_matrices_and_resumes_exactly():
    torch.manual_seed(0)
    model = _Toy()
    opt = _muon_adamw(model)
    assert isinstance(opt, MuonAdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [names[id(p)] for g in opt.muon.param_groups for p in g["params"]] == ["llm.layers.0.q_proj.weight"]
    assert len([p for g in opt.adamw.param_groups for p in g["params"]]) == 5  # embed, norm x2, projector x2
    assert opt.param_groups[0] is opt.adamw.param_groups[0]  # AdamW's group first: the logged rate

    # A scheduler's rate reaches both children (they hold the same group dicts).
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.muon.param_groups[0]["lr"] == opt.adamw.param_groups[0]["lr"] == pytest.approx(0.005)
    del sched

    _train(model, opt, 3, seed=1)
    state = copy.deepcopy(opt.state_dict())  # state_dict() holds the live tensors
    assert len(state["state"]) == 6 and "momentum_buffer" in state["state"][5]  # Muon's param is the last
    reference = _Toy()
    reference.load_state_dict(model.state_dict())
    _train(model, opt, 2, seed=2)  # uninterrupted

    fresh = _muon_adamw(reference)
    fresh.load_state_dict(state)
    assert fresh.muon.state is fresh.state and fresh.adamw.param_groups[0] is fresh.param_groups[0]
    _train(reference, fresh, 2, seed=2)  # resumed
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name


def test_muon_needs_llm_matrices_and_the_name_is_checked(corpus, tmp_path):
    proj = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match="no trainable LLM hidden matrices"):
        build_optimizer("muon", list(proj.named_parameters()), [{"params": list(proj.parameters())}], lr=1e-3,
                        betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    layers = torch.nn.ModuleDict({"llm": torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(4, 4)])})})
    with pytest.raises(ValueError, match="does not run under FSDP"):
        build_optimizer("muon", list(layers.named_parameters()), [{"params": list(layers.parameters())}], lr=1e-3,
                        betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, sharded=True)
    assert not is_muon_parameter("llm.model.layers.0.self_attn.q_proj.lora_A.default.weight",
                                 torch.nn.Parameter(torch.zeros(2, 2)))
    with pytest.raises(ConfigError, match="optim.name must be one of adamw, muon, got 'sgd'"):
        load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad", **{"optim.name": "sgd"}))
    with pytest.raises(ConfigError, match="optim.muon_matrices must be one of hidden, attention, got 'mlp'"):
        load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad", **{"optim.muon_matrices": "mlp"}))


def test_muon_matrices_attention_leaves_the_mlp_to_adamw():
    """`optim.muon_matrices: attention`: Muon gets the q/k/v/o projections of the LLM's layers, AdamW the MLP."""
    from sphinx_x.config import LLMConfig
    from sphinx_x.llm import build_llm

    llm = build_llm(LLMConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                              num_kv_heads=2), device=torch.device("cpu"))
    named = [(f"llm.{n}", p) for n, p in llm.named_parameters()]
    chosen = {}
    for matrices in ("hidden", "attention"):
        opt = build_optimizer("muon", named, [{"params": [p for _, p in named], "lr": 1e-3}], lr=1e-3,
                              betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, muon_matrices=matrices)
        ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
        chosen[matrices] = sorted(n.split(".layers.0.")[1] for n, p in named if id(p) in ids and ".layers.0." in n)
    assert chosen["hidden"] == ["mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                "self_attn.k_proj.weight", "self_attn.o_proj.weight", "self_attn.q_proj.weight",
                                "self_attn.v_proj.weight"]
    assert chosen["attention"] == ["self_attn.k_proj.weight", "self_attn.o_proj.weight", "self_attn.q_proj.weight",
                                   "self_attn.v_proj.weight"]


def test_muon_lr_scale_and_ns_steps(corpus, tmp_path):
    """`optim.muon_lr_scale` moves only the Muon matrices' rate (a scheduler keeps the ratio);
    `optim.muon_ns_steps` reaches the Newton-Schulz iteration; both are config-checked."""
    torch.manual_seed(0)
    model = _Toy()
    named = list(model.named_parameters())
    opt = build_optimizer("muon", named, [{"params": [p for _, p in named], "lr": 0.01}], lr=0.01, betas=(0.9, 0.95),
                          eps=1e-8, weight_decay=0.0, muon_lr_scale=3.0, muon_ns_steps=2)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.03) and opt.adamw.param_groups[0]["lr"] == 0.01
    assert opt.muon.param_groups[0]["ns_steps"] == 2
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.015) and opt.adamw.param_groups[0]["lr"] == 0.005

    # Fewer iterations leave the update less orthogonal: its singular values spread more.
    g = torch.randn(32, 48, generator=torch.Generator().manual_seed(3))

    def spread(ns_steps: int) -> float:
        s = torch.linalg.svdvals(newton_schulz_fp32(g, opt.muon.param_groups[0]["ns_coefficients"], ns_steps, 1e-7))
        return float(s.max() / s.min())

    assert spread(1) > 2 * spread(5)

    for field, value, message in (("muon_lr_scale", 0.0, "optim.muon_lr_scale must be > 0, got 0.0"),
                                  ("muon_ns_steps", 0, "optim.muon_ns_steps must be >= 1, got 0")):
        with pytest.raises(ConfigError, match=message):
            load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad", **{f"optim.{field}": value}))


def test_trainer_with_muon_orthogonalises_the_llm_matrices(corpus, tmp_path):
    """nano's first step under `optim.name: muon`: an LLM hidden matrix moves by a near-orthogonal matrix (the
    top 32 singular values within a factor 2: Newton-Schulz's S' in ~[0.5, 1.5]), while under AdamW
    the same matrix moves by lr * sign(grad), whose singular values spread far wider; the projector (AdamW in
    both) moves the same."""
    name = "llm.model.layers.0.self_attn.q_proj.weight"
    after, projector = {}, {}
    for opt_name in ("muon", "adamw"):
        trainer, moved = first_update_with(corpus, tmp_path / opt_name, {"optim.name": opt_name})
        assert isinstance(trainer.optimizer, MuonAdamW) == (opt_name == "muon")
        p = dict(trainer.model.named_parameters())[name]
        # first_update_with reports max |change|; the delta itself is the weight minus its initial value, which
        # the same seed makes identical in both runs: read it from a fresh Trainer's untouched model.
        projector[opt_name] = moved["visual.projector.0.weight"].item()
        after[opt_name] = p.detach().clone()
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "init", **{"optim.warmup_ratio": 0}))
    init = dict(Trainer(cfg, DistInfo()).model.named_parameters())[name].detach()
    spread = {}
    for opt_name, weight in after.items():
        s = torch.linalg.svdvals(weight - init)[:32]  # a first step's gradient has few large directions
        spread[opt_name] = (s.max() / s.min()).item()
    assert spread["muon"] < 2.0
    assert spread["adamw"] > 2 * spread["muon"]
    assert projector["muon"] == pytest.approx(projector["adamw"])

    # The Trainer passes optim.muon_lr_scale / muon_ns_steps to the optimizer.
    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "scaled", **{
        "optim.name": "muon", "optim.warmup_ratio": 0, "optim.muon_lr_scale": 2.0, "optim.muon_ns_steps": 3}))
    opt = Trainer(cfg, DistInfo()).optimizer
    assert {g["ns_steps"] for g in opt.muon.param_groups} == {3}
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(2 * opt.adamw.param_groups[0]["lr"])
