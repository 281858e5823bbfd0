"""The trainer in one process: config errors, the schedule, loss going down, frozen experts, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from _helpers.train import NANO_YAML, REPO, fast_overrides

from sphinx_x.cli import main as cli_main
from sphinx_x.config import ConfigError
from sphinx_x.train.config import TrainConfig, load_train_config
from sphinx_x.train.schedule import WarmupCosine, warmup_steps


# ---- config ----------------------------------------------------------------------------------------
def test_unknown_keys_name_the_key_and_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key train\.micro_bach; valid keys in train: .*micro_batch"):
        load_train_config(NANO_YAML, ["--train.micro_bach=4"])
    with pytest.raises(ConfigError, match=r"unknown config key trian; valid keys in the config: model, data"):
        load_train_config(NANO_YAML, ["--trian.seed=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"optim": {"lr": 1e-3, "betaz": [0.9, 0.95]}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key optim\.betaz; valid keys: lr, betas"):
        load_train_config(bad)


def test_overrides_are_typed_and_shortcuts_map_to_keys():
    from sphinx_x.cli import build_parser
    from sphinx_x.commands.train import build_config

    cfg = load_train_config(NANO_YAML, ["--optim.lr=3e-4", "--optim.betas=[0.8,0.9]", "--output.resume=auto"])
    assert cfg.optim.lr == 3e-4 and tuple(cfg.optim.betas) == (0.8, 0.9) and cfg.output.resume == "auto"
    for argv in (
        ["train", str(NANO_YAML), "--max-steps", "7", "--train.seed", "5", "--resume", "--data", "m.yaml"],
        ["train", "--max-steps", "7", "--resume", str(NANO_YAML), "--train.seed=5", "--data=m.yaml"],
    ):
        cfg = build_config(build_parser().parse_args(argv))
        assert cfg.train.max_steps == 7 and cfg.train.seed == 5 and cfg.output.resume is True
        assert cfg.data.mix == "m.yaml"


def test_fp16_is_refused_and_global_batch_must_divide():
    with pytest.raises(ConfigError, match="fp16 is not supported"):
        load_train_config(NANO_YAML, ["--train.precision=fp16"])
    cfg = load_train_config(NANO_YAML, ["--train.global_batch=12", "--train.micro_batch=4"])
    assert cfg.check_world(1) == 3
    with pytest.raises(ConfigError, match=r"train\.global_batch \(12\) must be divisible by train\.micro_batch "
                                          r"\(4\) x world size \(2\) = 8"):
        cfg.check_world(2)


def test_cli_errors_for_indivisible_batch_and_short_max_len(corpus, tmp_path, capsys):
    base = ["train", str(NANO_YAML), *fast_overrides(corpus, tmp_path / "o")]
    assert cli_main(base + ["--train.global_batch=5"]) == 2
    err = capsys.readouterr().err
    assert "train.global_batch (5) must be divisible by train.micro_batch (2) x world size (1)" in err
    assert cli_main(base + ["--data.max_len=64"]) == 2
    err = capsys.readouterr().err
    # nano: (1 global + 4 cells) x (17 tokens + 2 tags) = 95 visual tokens for an image without skipped cells
    assert "data.max_len 64 is shorter than one image's visual tokens" in err and "takes 95 tokens" in err
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


# ---- schedule --------------------------------------------------------------------------------------
def test_warmup_then_cosine_to_zero():
    assert warmup_steps(1000, 0.01) == 10 and warmup_steps(50, 0.01) == 1 and warmup_steps(10, 0.0) == 0
    f = WarmupCosine(110, 10)
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == 1.0 and f(10) == 1.0
    assert f(60) == pytest.approx(0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_decay_ratio_holds_the_peak_then_decays_over_the_last_share():
    f = WarmupCosine(110, 10, decay_ratio=0.2)  # the cosine spans the last 20 of the 100 steps after warm-up
    assert [f(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert [f(s) for s in (10, 50, 90)] == [1.0, 1.0, 1.0]
    assert f(100) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    cosine, full = WarmupCosine(110, 10), WarmupCosine(110, 10, decay_ratio=1.0)
    assert [cosine(s) for s in range(120)] == [full(s) for s in range(120)]
    with pytest.raises(ValueError, match="decay_ratio"):
        WarmupCosine(110, 10, decay_ratio=0.0)


# ---- training --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_nano_loss_falls_and_outputs_are_written(corpus, tmp_path):
    from sphinx_x.model import SphinxX
    from sphinx_x.train import train

    out = tmp_path / "run"
    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, out, **{
        "train.max_steps": 20, "train.micro_batch": 4, "train.global_batch": 8, "output.save_every": 10}))
    final = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 21))
    for key in ("loss", "lr", "tokens_per_s", "text_tokens_per_s", "visual_tokens_per_s", "mfu", "grad_norm"):
        assert all(math.isfinite(r[key]) for r in records), key
    loss = [r["loss"] for r in records]
    first, last = sum(loss[:5]) / 5, sum(loss[-5:]) / 5
    assert last < 0.75 * first, (first, last, loss)
    assert records[0]["lr"] == pytest.approx(2e-3) and records[-1]["lr"] < 1e-4  # warm-up 1 step, cosine
    assert (out / "loss_lr.png").stat().st_size > 1000
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step-000010", "step-000020"]
    model = SphinxX.from_pretrained(final)
    assert model.tokenizer is not None and model.config.name == "nano"


def test_frozen_experts_get_no_gradient_and_no_optimizer_state(corpus, tmp_path):
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "f", **{"model.frozen_experts": True}))
    trainer = Trainer(cfg, DistInfo())
    model = trainer.model
    expert_params = {n for n, _ in model.named_parameters() if n.startswith("visual.experts.")}
    assert expert_params and all(not p.requires_grad for n, p in model.named_parameters() if n in expert_params)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert not any(id(named[n]) in optimized for n in expert_params)
    assert len(optimized) == sum(1 for n in named if n not in expert_params)

    # One global batch that holds images with skipped cells: gradients reach tags, skip token, projector only.
    stream = trainer._micro_batches()
    micro = next(b for b in stream if b["images"] is not None and bool(b["images"].skipped.any()))
    before = {n: p.detach().clone() for n, p in named.items()}
    trainer._forward_backward([micro])
    for n in expert_params:
        assert named[n].grad is None, n
    for n in ("skip_token", "image_start", "image_end", "visual.projector.0.weight", "visual.projector.1.weight"):
        assert named[n].grad is not None and named[n].grad.abs().sum() > 0, n
    trainer.optimizer.step()
    state = trainer.optimizer.state
    assert not any(named[n] in state for n in expert_params)
    assert all(named[n] in state for n in ("skip_token", "image_start", "visual.projector.0.weight"))
    assert all(torch.equal(before[n], named[n]) for n in expert_params)
    assert not torch.equal(before["skip_token"], named["skip_token"])
    # The frozen setting is recorded in the saved model config.
    assert all(e.frozen for e in trainer.model_config.vision.experts)


def first_update_with(corpus, out, overrides: dict):
    """A Trainer with `overrides` (no warm-up) after one optimizer step on a batch with images, and how far each
    parameter moved (max |change|)."""
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, out, **overrides, **{"optim.warmup_ratio": 0}))
    trainer = Trainer(cfg, DistInfo())
    named = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    micro = next(b for b in trainer._micro_batches() if b["images"] is not None)
    trainer._forward_backward([micro])
    trainer.optimizer.step()
    return trainer, {n: (named[n].detach() - before[n]).abs().max() for n in named}


def test_vision_lr_scale_multiplies_only_the_experts_updates(corpus, tmp_path):
    """AdamW's first update is lr * sign(grad), so with the same data and init the experts move exactly
    `vision_lr_scale` times as far while the LLM and projector move the same."""

    def first_update(scale: float):
        return first_update_with(corpus, tmp_path / str(scale), {"optim.vision_lr_scale": scale})

    plain, base = first_update(1.0)
    scaled, more = first_update(4.0)
    assert len(plain.optimizer.param_groups) == 1
    groups = scaled.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(2e-3), pytest.approx(8e-3)]
    experts = {id(p) for n, p in scaled.model.named_parameters() if n.startswith("visual.experts.")}
    assert {id(p) for p in groups[1]["params"]} == experts
    for name in ("visual.experts.clip_convnext.trunk.stem.0.weight",
                 "visual.experts.dinov2.trunk.patch_embed.proj.weight"):
        assert more[name] / base[name] == pytest.approx(4.0, rel=1e-3), name
    for name in ("visual.projector.0.weight", "llm.model.layers.0.mlp.up_proj.weight"):
        assert more[name] / base[name] == pytest.approx(1.0, rel=1e-3), name
    with pytest.raises(ConfigError, match="optim.vision_lr_scale must be > 0"):
        load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad", **{"optim.vision_lr_scale": 0}))


def test_llm_lr_scale_multiplies_only_the_llms_updates(corpus, tmp_path):
    """As above for `llm_lr_scale`: the LLM's weights move that many times as far as with 1, the projector and
    the (trainable, from-scratch) experts the same; the projector's group is the first (the logged rate)."""
    def first_update(scale: float):
        return first_update_with(corpus, tmp_path / f"llm{scale}", {"optim.llm_lr_scale": scale})

    _, base = first_update(1.0)
    scaled, less = first_update(0.25)
    groups = scaled.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(2e-3), pytest.approx(5e-4)]
    llm = {id(p) for n, p in scaled.model.named_parameters() if n.startswith("llm.")}
    assert {id(p) for p in groups[1]["params"]} == llm and llm
    assert "visual.projector.0.weight" in {n for n, p in scaled.model.named_parameters()
                                            if any(p is q for q in groups[0]["params"])}
    for name in ("llm.model.layers.0.mlp.up_proj.weight", "llm.model.embed_tokens.weight"):
        assert less[name] / base[name] == pytest.approx(0.25, rel=1e-3), name
    for name in ("visual.projector.0.weight", "visual.experts.clip_convnext.trunk.stem.0.weight"):
        assert less[name] / base[name] == pytest.approx(1.0, rel=1e-3), name
    with pytest.raises(ConfigError, match="optim.llm_lr_scale must be > 0"):
        load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad2", **{"optim.llm_lr_scale": -1}))


def test_trainer_schedule_follows_optim_decay_ratio(corpus, tmp_path):
    """`optim.decay_ratio` reaches the Trainer's schedule: the rate holds its peak until the last share of the
    steps; it is config-checked."""
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    cfg = load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "wsd", **{
        "train.max_steps": 100, "optim.warmup_ratio": 0, "optim.decay_ratio": 0.25}))
    shape = Trainer(cfg, DistInfo()).scheduler.lr_lambdas[0]
    assert [shape(s) for s in (0, 74, 75)] == [1.0, 1.0, 1.0] and 0 < shape(80) < 1 and shape(100) == 0.0
    with pytest.raises(ConfigError, match=r"optim.decay_ratio must be in \(0, 1\], got 1.5"):
        load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / "bad", **{"optim.decay_ratio": 1.5}))


def test_checkpoint_write_is_atomic_and_keeps_last_n(tmp_path, monkeypatch):
    from sphinx_x.config import SphinxXConfig
    from sphinx_x.model import SphinxX
    from sphinx_x.train import checkpoint as ckpt

    torch.manual_seed(0)
    model = SphinxX(SphinxXConfig.from_name("nano"))
    state = {k: v for k, v in model.state_dict().items()}
    root = tmp_path / "ckpt"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(root, step, model.config, state, {"step": step}, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 3]

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)  # the trainer state write fails after the model files
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(root, 4, model.config, state, {"step": 4}, keep_last=2)
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(root).name == "step-000003"
    assert ckpt.load_trainer_state(root / "step-000003") == {"step": 3}
    loaded = SphinxX.from_pretrained(root / "step-000003")
    assert torch.equal(loaded.skip_token, model.skip_token)


def test_train_config_round_trips():
    cfg = load_train_config(NANO_YAML)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.0 and cfg.model.preset == "nano"


def test_every_preset_has_a_config_that_loads():
    from sphinx_x.config import PRESETS
    from sphinx_x.train.build import check_max_len, model_config

    # The released SPHINX presets have no from-components recipe: they are fine-tuned from a converted
    # directory (README "Run the released SPHINX models"), so only the SPHINX-X family needs a config here.
    released = {p for p in PRESETS if p.startswith("sphinx")}
    assert released == {"sphinx", "sphinx-1k", "sphinx-v2-1k", "sphinx-tiny", "sphinx-tiny-1k", "sphinx-moe",
                        "sphinx-moe-1k"}
    for name in sorted(set(PRESETS) - released):
        cfg = load_train_config(REPO / "configs" / f"{name}.yaml")
        model = model_config(cfg)
        check_max_len(cfg, model)
        assert model.name == name
        assert cfg.optim.lr == (5e-6 if name == "moe" else 1e-3 if name == "nano" else 2e-5), name
        if name != "nano":  # local component weights are merged into the preset, expert by expert
            assert model.llm.path and all(e.checkpoint for e in model.vision.experts)
            assert model.vision.experts[0].checkpoint_format == "open_clip"


def test_activation_checkpointing_and_bf16_autocast(corpus, tmp_path):
    """Recomputing decoder layers gives the same gradients; bf16 autocast gives a close loss."""
    from sphinx_x.train.distributed import DistInfo
    from sphinx_x.train.loop import Trainer

    results = {}
    for name, extra in (("plain", {}), ("ckpt", {"train.activation_checkpointing": True}),
                        ("bf16", {"train.precision": "bf16"})):
        trainer = Trainer(load_train_config(NANO_YAML, fast_overrides(corpus, tmp_path / name, **extra)), DistInfo())
        micro = [next(trainer._micro_batches()) for _ in range(1)]
        calls = []
        mlp = trainer.model.llm.get_decoder().layers[0].mlp  # runs inside the checkpointed layer forward
        forward = mlp.forward
        mlp.forward = lambda x, calls=calls, forward=forward: calls.append(1) or forward(x)  # hooks don't re-run
        stats = trainer._forward_backward(micro)
        assert len(calls) == (2 if name == "ckpt" else 1)  # checkpointed layers run again in the backward
        grads = {n: p.grad.clone() for n, p in trainer.named_params if p.grad is not None}
        results[name] = (stats["loss"], grads)
    loss, grads = results["plain"]
    loss_ckpt, grads_ckpt = results["ckpt"]
    assert loss_ckpt == loss and grads.keys() == grads_ckpt.keys()
    assert all(torch.allclose(grads[n], grads_ckpt[n], rtol=1e-5, atol=1e-7) for n in grads)
    assert results["bf16"][0] == pytest.approx(loss, rel=0.02) and results["bf16"][0] != loss
