"""FSDP2 setup without a full model per rank (torchrun, 2 gloo ranks): the sharded model, gathered
back, equals the single-process one bit for bit, from a model directory (each rank reads its slices)
and from a preset (rank 0 builds, the others receive their shards)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.model import SphinxX

pytestmark = pytest.mark.slow  # two torchrun launches, ~30 s each

WORKER = """
import sys, torch
from safetensors.torch import save_file
from sphinx_x.train import distributed as D
from sphinx_x.train.build import build_training_model
from sphinx_x.train.config import load_train_config

cfg = load_train_config(None, sys.argv[2:])
info = D.init_distributed("cpu")
model, tokenizer = build_training_model(cfg, info)
assert tokenizer is not None
assert not any(p.is_meta for p in model.parameters())
state = D.full_state_dict(model, info)
buffers = {n: b.detach().clone() for n, b in model.named_buffers()}  # incl. the rebuilt rotary frequencies
if info.is_main:
    save_file({k: v.contiguous() for k, v in {**state, **{"buffer." + k: v for k, v in buffers.items()}}.items()},
              sys.argv[1])
D.shutdown_distributed()
"""


def _run(tmp_path: Path, *overrides: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "gathered.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(out), "--train.device=cpu", "--train.cpu_threads=1", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(str(out))


def _expect_equal(got: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    want = {**model.state_dict(), **{"buffer." + n: b for n, b in model.named_buffers()}}
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_sharded_load_from_a_model_directory(tmp_path):
    torch.manual_seed(3)
    model = SphinxX(SphinxXConfig.from_name("nano"))
    model.save_pretrained(tmp_path / "m", max_shard_bytes=2**20)
    got = _run(tmp_path, f"--model.path={tmp_path / 'm'}")
    _expect_equal(got, model)


def test_frozen_experts_are_sharded_in_bf16(tmp_path):
    torch.manual_seed(3)
    model = SphinxX(SphinxXConfig.from_name("nano"))
    model.save_pretrained(tmp_path / "m")
    got = _run(tmp_path, f"--model.path={tmp_path / 'm'}", "--model.frozen_experts=true", "--train.precision=bf16")
    for expert in model.visual.experts.values():
        expert.trunk.to(torch.bfloat16)
    _expect_equal(got, model)
    assert got["visual.experts.dinov2.trunk.blocks.0.attn.qkv.weight"].dtype == torch.bfloat16


def test_sharded_build_from_a_preset_equals_one_process(tmp_path):
    torch.manual_seed(5)  # what build_model does with train.seed=5
    model = SphinxX(SphinxXConfig.from_name("nano"))
    got = _run(tmp_path, "--model.preset=nano", "--train.seed=5")
    _expect_equal(got, model)
