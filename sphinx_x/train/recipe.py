"""nano's one-stage training recipe (configs/nano.yaml without its paths) and the TrainConfig built from it: what
`sphinx-x quickstart` trains and what the stand-in LLM's lookup warm-up (sphinx_x/standins/lookup_warmup.py) trains
with. tests/test_quickstart.py checks that RECIPE and configs/nano.yaml agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

RECIPE: dict[str, Any] = {
    "model": {"preset": "nano"},
    "data": {"max_len": 512, "num_workers": 1},
    "optim": {"lr": 1.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_ratio": 0.03, "grad_clip": 8.0,
              "name": "muon", "loss_reduction": "turn"},
    "train": {"max_steps": 5000, "global_batch": 8, "micro_batch": 8, "precision": "fp32", "seed": 0,
              "device": "cpu", "cpu_threads": 2},
}


def train_config(out: Path, mix: Path, steps: int, seed: int, progress: bool, model_config: Path | None = None):
    """RECIPE plus this run's paths, seed and planned steps; `model_config`
    (e.g. nano with the stand-in experts and LLM) replaces the bare preset."""
    from sphinx_x.config import deep_merge
    from sphinx_x.train.config import TrainConfig

    data = deep_merge(RECIPE, {
        **({"model": {"preset": str(model_config)}} if model_config is not None else {}),
        "data": {"mix": str(mix)},
        "train": {"seed": seed, "max_steps": steps},
        "output": {"dir": str(out), "save_every": 0, "keep_last": 1, "resume": False, "tensorboard": False,
                   "progress": progress, "log_every": 10},
    })
    return TrainConfig.from_dict(data)
