"""The tiny synthetic corpus and CPU overrides shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NANO_YAML = REPO / "configs" / "nano.yaml"


def make_corpus(root: Path, n: int = 48, seed: int = 0) -> Path:
    """A small synthetic mix (images of varied aspect ratios + text-only dialogues); returns its train.yaml."""
    from sphinx_x.data.synth import generate_corpus

    generate_corpus(root, n, 0, 0, seed=seed, progress=False)
    return root / "train.yaml"


def fast_overrides(mix: Path, out: Path, **extra) -> list[str]:
    """Tiny, deterministic CPU settings shared by the training tests."""
    values = {
        "data.mix": str(mix), "output.dir": str(out), "data.num_workers": 0,
        "train.micro_batch": 2, "train.global_batch": 4, "train.cpu_threads": 1,
        "train.precision": "fp32", "train.peak_flops": 1e10, "optim.lr": 2e-3,
        "output.progress": False, "output.resume": False, "output.save_every": 0,
        # configs/nano.yaml trains with Muon; these tests check AdamW's mechanics (LoRA, FSDP and the LR scales
        # take AdamW), and tests/test_train_optim.py passes optim.name=muon where it tests Muon
        "optim.name": "adamw",
    }  # fmt: skip
    values.update(extra)
    return [f"--{k}={v}" for k, v in values.items()]


def losses(out: Path) -> list[float]:
    """The training losses a run logged to OUT/metrics.jsonl, in order."""
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
