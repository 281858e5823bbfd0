"""`Trainer.train_step`: the public optimizer step equals the loop's, and its loss and gradients are the
standard ones (a plain transformers step on the same weights and batch)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from _helpers.train import NANO_YAML, fast_overrides, make_corpus

from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.train import distributed as D
from sphinx_x.train.config import load_train_config
from sphinx_x.train.loop import Trainer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("synth"), n=24)


def _cfg(corpus, out, **extra):
    over = fast_overrides(corpus, out, **{"train.max_steps": 2, "output.tensorboard": False, **extra})
    return load_train_config(NANO_YAML, over)


def test_train_step_on_a_given_model_equals_the_loop(corpus, tmp_path):
    torch.manual_seed(0)
    looped = Trainer(_cfg(corpus, tmp_path / "loop"), D.DistInfo())
    start = copy.deepcopy(looped.model)
    batches = []
    stream = looped._micro_batches()

    def recording():
        while True:
            b = next(stream)
            batches.append(b)
            yield b

    rec = recording()
    want = [looped._train_step(rec) for _ in range(2)]

    mine = Trainer(_cfg(corpus, tmp_path / "api", **{"data.mix": "null"}), model=start)
    assert mine.loader is None and mine.total_steps == 2
    got = [mine.train_step(batches[i * mine.accum:(i + 1) * mine.accum]) for i in range(2)]
    for w, g in zip(want, got):
        assert g["loss"] == w["loss"] and g["grad_norm"] == w["grad_norm"] and g["lr"] == w["lr"]
        assert g["supervised_tokens"] == w["supervised_tokens"] and g["mfu"] > 0
    a, b = looped.model.state_dict(), mine.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_text_step_matches_a_plain_transformers_step(corpus, tmp_path):
    """Loss and gradients of our step on a text-only batch are those of `LlamaForCausalLM(labels=...)`."""
    cfg = _cfg(corpus, tmp_path / "api", **{"data.mix": "null", "optim.grad_clip": 0})
    torch.manual_seed(0)
    from sphinx_x.model import SphinxX
    from sphinx_x.train.build import model_config

    model = SphinxX(model_config(cfg)).train()
    plain = copy.deepcopy(model.llm)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, model.config.llm.vocab_size, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :10] = IGNORE_INDEX
    attention = torch.ones_like(ids)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": attention, "images": None,
             "num_text_tokens": ids.numel(), "num_visual_tokens": 0}
    trainer = Trainer(cfg, model=model)
    grads = {}
    trainer.optimizer.register_step_pre_hook(lambda *_: grads.update(  # the gradients AdamW is about to apply
        {n: p.grad.clone() for n, p in trainer.model.llm.named_parameters() if p.grad is not None}))
    record = trainer.train_step([batch])
    loss = plain(input_ids=ids, attention_mask=attention, labels=labels).loss
    loss.backward()
    assert record["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    for name, p in plain.named_parameters():
        assert torch.allclose(grads[name], p.grad, rtol=1e-4, atol=1e-7), name


def test_run_without_data_is_a_clear_error(tmp_path, corpus):
    from sphinx_x.config import ConfigError
    from sphinx_x.model import SphinxX
    from sphinx_x.train.build import model_config

    cfg = _cfg(corpus, tmp_path / "x", **{"data.mix": "null"})
    trainer = Trainer(cfg, model=SphinxX(model_config(cfg)))
    with pytest.raises(ConfigError, match="needs data"):
        trainer.run()


def test_metrics_log_mfu_against_the_peak(corpus, tmp_path):
    from sphinx_x.train.loop import train

    out = tmp_path / "run"
    train(_cfg(corpus, out, **{"train.peak_flops": 2e10}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["mfu"] == pytest.approx(r["model_tflops"] * 1e12 / r["step_time_s"] / 2e10)


def _image_batch(config, rows: int = 2, text: int = 12) -> dict:
    """`rows` samples of [BOS] one 2:1 image, then `text` tokens (the last half supervised)."""
    from PIL import Image

    from sphinx_x.canvas import collate_images, prepare_image
    from sphinx_x.constants import IMAGE_TOKEN_ID
    from sphinx_x.image_tokens import visual_token_count

    g = torch.Generator().manual_seed(2)
    side = 2 * config.vision.experts[0].view_size
    img = Image.fromarray(torch.randint(0, 255, (side // 2, side, 3), generator=g, dtype=torch.uint8).numpy())
    n_img = visual_token_count(img.width, img.height, config.vision)
    words = torch.randint(4, config.llm.vocab_size, (rows, text), generator=g)
    ids = torch.cat([torch.ones(rows, 1, dtype=torch.long), torch.full((rows, n_img), IMAGE_TOKEN_ID), words], 1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -text // 2:] = words[:, -text // 2:]
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
            "images": collate_images([prepare_image(img, config.vision) for _ in range(rows)], config.vision),
            "num_text_tokens": rows * (1 + text), "num_visual_tokens": rows * n_img}


@pytest.mark.parametrize("frozen", [True, False])
def test_step_on_a_one_rank_fsdp_model_equals_the_plain_step(corpus, tmp_path, frozen):
    """`Trainer(cfg, model=...)` with a model sharded by FSDP2 over one rank (what benchmarks/bench_train.py
    --fsdp runs on one GPU) takes the same step as on the plain module on an image batch: loss, gradient
    norm, new weights. Frozen experts are FSDP units of their own, gathered through their forward."""
    import torch.distributed as dist

    from sphinx_x.model import SphinxX
    from sphinx_x.train.build import model_config, train_mode

    cfg = _cfg(corpus, tmp_path / "api", **{"data.mix": "null", "optim.lr": 1e-2,
                                             "model.frozen_experts": frozen})
    torch.manual_seed(0)
    model = train_mode(SphinxX(model_config(cfg)), cfg)
    sharded = copy.deepcopy(model)
    start = copy.deepcopy(model.state_dict())
    batch = _image_batch(model.config)
    want = Trainer(cfg, model=model).train_step([batch])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        info = D.DistInfo()
        D.apply_fsdp(sharded, info, bf16=False)
        trainer = Trainer(cfg, info, model=sharded)
        assert D.is_sharded(trainer.model) and trainer.sharded
        got = trainer.train_step([batch])
        state = D.full_state_dict(trainer.model, info)
    finally:
        dist.destroy_process_group()
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    plain = model.state_dict()
    assert sorted(state) == sorted(plain)
    for name, value in plain.items():
        assert torch.allclose(state[name], value, rtol=1e-5, atol=1e-6), name
    changed = {n for n, v in plain.items() if not torch.equal(v, start[n])}
    assert "llm.model.layers.0.mlp.up_proj.weight" in changed  # the step moved the weights (same on both)
    expert = "visual.experts.dinov2.trunk.blocks.0.mlp.fc1.weight"
    assert (expert in changed) != frozen  # a frozen expert does not move
