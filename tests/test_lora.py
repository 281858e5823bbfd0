"""LoRA with peft on nano: only the adapters (and the projector when asked) train, the loss falls, adapter
directories in peft's format load and merge to the same logits, resume continues exactly, bad configs fail."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from _helpers.train import NANO_YAML, fast_overrides
from safetensors.torch import load_file

from sphinx_x.cli import main as cli_main
from sphinx_x.config import ConfigError, SphinxXConfig
from sphinx_x.model import SphinxX
from sphinx_x.train import distributed as D
from sphinx_x.train.build import build_loader
from sphinx_x.train.config import LoraSection, load_train_config
from sphinx_x.train.loop import Trainer
from sphinx_x.train.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    EXTRA_WEIGHTS,
    QLORA_NEEDS,
    apply_lora,
    is_extra_trainable,
    is_lora_model,
    load_lora,
    merge_lora,
)

pytest.importorskip("peft", reason="LoRA tests need peft (the [test] extra installs it)")

TARGETS = ["q_proj", "v_proj", "down_proj"]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS}


def _cfg(mix, out, lora=None, **extra):
    values = {"train.max_steps": 4, "output.tensorboard": False, "optim.lr": 1e-2, "optim.warmup_ratio": 0,
              "train.lora": json.dumps(lora or LORA), **extra}
    return load_train_config(NANO_YAML, fast_overrides(mix, out, **values))


def _nano(seed: int = 0) -> SphinxX:
    torch.manual_seed(seed)
    return SphinxX(SphinxXConfig.from_name("nano"))


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     images=batch["images"]).logits


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def batches(corpus, tmp_path_factory):
    """Micro-batches of two samples: [with images, text only]."""
    from sphinx_x.tokenizer import load_tokenizer

    cfg = _cfg(corpus, tmp_path_factory.mktemp("unused"))
    config = SphinxXConfig.from_name("nano")
    loader = build_loader(cfg, config, load_tokenizer(config.tokenizer), 0, 1)
    loader.batch_sampler.set_epoch(0)
    found = {}
    for b in loader:  # the sampler keeps each batch to one data type
        found.setdefault(b["images"] is not None and b["images"].num_images > 0, b)
        if len(found) == 2:
            return [found[True], found[False]]
    raise AssertionError("the corpus has no image batch and text batch")


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    """A LoRA run from the nano preset with the projector trained: 3 steps, checkpoints at 2 and 3."""
    out = tmp_path_factory.mktemp("lora_run")
    cfg = _cfg(corpus, out, {**LORA, "dropout": 0.1, "train_projector": True},
               **{"train.max_steps": 3, "output.save_every": 2})
    trainer = Trainer(cfg, D.DistInfo())
    trainer.run()
    return trainer, out


# ---- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("--train.lora.r=0", r"train\.lora\.r must be an integer >= 1, got 0"),
    ("--train.lora.alpha=0", r"train\.lora\.alpha must be > 0"),
    ("--train.lora.dropout=1", r"train\.lora\.dropout must be in \[0, 1\), got 1"),
    ("--train.lora.target_modules=[]", r"train\.lora\.target_modules must be a non-empty list"),
    ("--train.lora.quantize=int3", r"train\.lora\.quantize must be null or one of nf4, got 'int3'"),
    ("--train.lora.rank=8", r"unknown config key train\.lora\.rank; valid keys in train\.lora: r, alpha"),
    ("--train.lora={rank: 8}", r"unknown key train\.lora\.rank; valid keys: r, alpha"),
    ("--train.lora.quantize=nf4", r"train\.lora\.quantize nf4: QLoRA needs a CUDA GPU and bitsandbytes "
                                  r"\(train\.device is cpu\)"),
    ("--model.frozen_experts=false", r"model\.frozen_experts: false contradicts train\.lora"),
])
def test_bad_lora_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(NANO_YAML, ["--train.lora={}", override])


def test_lora_is_off_by_default_and_on_with_an_empty_mapping():
    assert load_train_config(NANO_YAML).train.lora is None
    cfg = load_train_config(NANO_YAML, ["--train.lora={}", "--train.lora.r=16"])
    assert cfg.train.lora == LoraSection(r=16) and cfg.to_dict()["train"]["lora"]["r"] == 16


def test_unknown_targets_qlora_on_cpu_and_missing_peft_are_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"no module named 'qkv' in the LLM; its linear layers are: down_proj, "
                                          r"gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"):
        apply_lora(_nano(), LoraSection(target_modules=["q_proj", "qkv"]))
    with pytest.raises(ConfigError, match=f"{QLORA_NEEDS} \\(the model is on cpu\\)"):
        apply_lora(_nano(), LoraSection(quantize="nf4"))
    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"needs peft, which is not installed: pip install 'sphinx-x\[lora\]'"):
        apply_lora(_nano(), LoraSection())


def test_nf4_base_keeps_only_the_adapters_trainable(batches):
    """QLoRA's wiring, on bitsandbytes' CPU backend (the training path itself needs CUDA; docs/lora.md)."""
    bnb = pytest.importorskip("bitsandbytes", reason="the NF4 base needs bitsandbytes (installed with the quant extra)")
    from sphinx_x.infer.quantize import _bnb_4bit  # the swap quantize_model("nf4") makes, without its CUDA check

    model = _nano().eval()
    batch = batches[1]
    want = _logits(model, batch)
    _bnb_4bit(model.llm.get_decoder(), "nf4", torch.float32, torch.device("cpu"))
    layer = model.llm.get_decoder().layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) and layer.mlp.down_proj.weight.dtype == torch.uint8
    apply_lora(model, LoraSection(r=4, target_modules=TARGETS))
    got = _logits(model, batch)
    cosine = torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert not torch.equal(got, want) and cosine > 0.9, cosine  # the 4-bit weights' error, not another model
    out = model.train()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == {
        n for n, _ in model.named_parameters() if "lora_" in n}


# ---- what trains -----------------------------------------------------------------------------------
@pytest.mark.parametrize("train_projector", [False, True])
def test_only_adapters_get_gradients_and_optimizer_state(batches, tmp_path, train_projector):
    model = _nano()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(None, tmp_path, {**LORA, "train_projector": train_projector}, **{"data.mix": "null"})
    trainer = Trainer(cfg, model=model)
    named = dict(trainer.model.named_parameters())
    lora = {n for n in named if "lora_" in n}
    extra = {n for n in named if is_extra_trainable(n)} if train_projector else set()
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == lora | extra and lora and (extra or not train_projector)
    # r x (in + out) per adapted linear layer of every decoder layer
    c = model.config.llm
    kv = c.num_kv_heads * c.hidden_size // c.num_heads
    per_layer = sum(4 * (a + b) for a, b in [(c.hidden_size, c.hidden_size), (c.hidden_size, kv),
                                            (c.intermediate_size, c.hidden_size)])
    assert sum(named[n].numel() for n in lora) == c.num_layers * per_layer

    trainer._forward_backward([batches[0]])  # holds images: the projector and tags take part
    assert {n for n, p in named.items() if p.grad is not None} == trainable
    trainer.optimizer.step()
    state = {id(p) for p in trainer.optimizer.state}
    assert state == {id(named[n]) for n in trainable}
    for n, p in named.items():
        if "lora_B" in n:
            assert p.abs().sum() > 0, n  # peft starts it at zero
        elif "lora_A" not in n:  # the projector and tags moved when trained; the LLM and experts did not
            unchanged = torch.equal(p, before[n.replace("llm.base_model.model.", "llm.").replace(".base_layer", "")])
            assert unchanged == (n not in trainable), n


def test_loss_falls_on_a_repeated_batch(batches, tmp_path):
    trainer = Trainer(_cfg(None, tmp_path, **{"data.mix": "null", "train.max_steps": 20}), model=_nano())
    losses = [trainer.train_step([batches[0]])["loss"] for _ in range(20)]
    assert losses[-1] < 0.8 * losses[0], losses


# ---- adapter directories, merge, resume -------------------------------------------------------------
def test_run_writes_peft_adapters_that_load_and_merge_to_the_same_logits(run, batches, tmp_path):
    trainer, out = run
    final, base = out / "final", out / "base"
    for d in (final, out / "ckpt" / "step-000002", out / "ckpt" / "step-000003"):
        names = {p.name for p in d.iterdir()}
        assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXTRA_WEIGHTS} <= names and "model.safetensors" not in names, d
    config = json.loads((final / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and sorted(config["target_modules"]) == sorted(TARGETS)
    assert config["base_model_name_or_path"] == str(base.resolve())
    stored = load_file(str(final / ADAPTER_WEIGHTS))
    assert all(k.startswith("base_model.model.model.layers.") and ".lora_" in k for k in stored)
    assert set(load_file(str(final / EXTRA_WEIGHTS))) == {n for n, _ in trainer.model.named_parameters()
                                                          if is_extra_trainable(n)}

    batch = batches[0]
    want = _logits(trainer.model.eval(), batch)
    assert not torch.allclose(want, _logits(SphinxX.from_pretrained(base), batch), atol=1e-3)  # it learned
    loaded = load_lora(SphinxX.from_pretrained(base), final)
    torch.testing.assert_close(_logits(loaded, batch), want, atol=1e-5, rtol=0)
    merged = merge_lora(loaded)
    assert not is_lora_model(merged) and not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), want, atol=1e-4, rtol=0)

    assert cli_main(["lora", "merge", str(base), str(final), "--out", str(tmp_path / "merged")]) == 0
    from_dir = SphinxX.from_pretrained(tmp_path / "merged")
    assert from_dir.tokenizer is not None and not (tmp_path / "merged" / ADAPTER_CONFIG).exists()
    torch.testing.assert_close(_logits(from_dir, batch), want, atol=1e-4, rtol=0)

    # A peft user loads the LLM's adapter with peft alone (text only: the projector is ours).
    from peft import PeftModel

    plain = SphinxX.from_pretrained(base)
    plain.llm = PeftModel.from_pretrained(plain.llm, str(final))
    text = {"input_ids": batches[-1]["input_ids"], "attention_mask": batches[-1]["attention_mask"], "images": None}
    torch.testing.assert_close(_logits(plain.eval(), text), _logits(trainer.model, text), atol=1e-5, rtol=0)


def test_merge_errors_name_the_directory(run, tmp_path, capsys):
    _, out = run
    assert cli_main(["lora", "merge", str(out / "base"), str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert f"{tmp_path}: not a LoRA adapter directory (no {ADAPTER_CONFIG})" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_resume_gives_the_same_next_step_as_an_uninterrupted_run(corpus, tmp_path):
    lora = {**LORA, "dropout": 0.1, "train_projector": True}  # dropout: the RNG state must resume too
    whole = Trainer(_cfg(corpus, tmp_path / "whole", lora), D.DistInfo())
    stream = whole._micro_batches()
    want = [whole._train_step(stream) for _ in range(3)]

    first = Trainer(_cfg(corpus, tmp_path / "cut", lora), D.DistInfo())
    stream = first._micro_batches()
    for _ in range(2):
        first._train_step(stream)
    first.save()
    resumed = Trainer(_cfg(corpus, tmp_path / "cut", lora, **{"output.resume": True}), D.DistInfo())
    saved, loaded = (D.full_optimizer_state(t.model, t.optimizer, D.DistInfo())["state"] for t in (first, resumed))
    assert resumed.step == 2 and saved.keys() == loaded.keys() and any("lora_" in k for k in saved)
    assert all(torch.equal(saved[k]["exp_avg_sq"], loaded[k]["exp_avg_sq"]) for k in saved)
    got = resumed._train_step(resumed._micro_batches())
    assert (got["loss"], got["grad_norm"], got["lr"]) == (want[2]["loss"], want[2]["grad_norm"], want[2]["lr"])
    a, b = _lora_weights(whole.model), _lora_weights(resumed.model)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(whole.model.skip_token, resumed.model.skip_token)
