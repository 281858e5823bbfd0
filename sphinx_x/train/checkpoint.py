"""Training checkpoints: `OUT/ckpt/step-XXXXXX/` = a model directory + `trainer_state.pt`.

The model part is exactly what `SphinxX.from_pretrained` reads (config.json, safetensors, tokenizer),
so any checkpoint is also a usable model. `trainer_state.pt` holds the optimizer state (keyed by
parameter name, unsharded), the LR scheduler, the data sampler position, every rank's RNG states and
the step; it holds only tensors and plain containers and is read back with `weights_only=True`.

Atomicity: everything is written into `ckpt/.tmp-step-XXXXXX.<pid>`, flushed to disk, then renamed to
`step-XXXXXX` in one `os.replace` (`sphinx_x.fileio.atomic_directory`). A process killed at any moment
leaves either the complete new checkpoint or none (plus a stale temporary directory, removed on the next
save), and the previous checkpoints untouched. Only then are checkpoints beyond `keep_last` deleted,
oldest first. The model files are written by `sphinx_x.model_io.write_model_files`, as `save_pretrained`
writes them.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sphinx_x.fileio import atomic_directory
from sphinx_x.model_io import CONFIG_NAME, write_model_files

TRAINER_STATE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d{6,})$")
ADAPTER_CONFIG_NAME = "adapter_config.json"  # a LoRA run's checkpoints hold its adapter (sphinx_x/train/lora.py)


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(ckpt_root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a trainer state) under `ckpt_root`, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = STEP_DIR.match(child.name)
        model_part = (child / CONFIG_NAME).is_file() or (child / ADAPTER_CONFIG_NAME).is_file()
        if m and (child / TRAINER_STATE).is_file() and model_part:
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1][1] if found else None


# ---- RNG -----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain data (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj: Any) -> Any:
    return tuple(_as_tuple(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


# ---- checkpoints ---------------------------------------------------------------------------------
def before_publish(tmp: Path, final: Path) -> None:
    """Called when a checkpoint's files are all written and flushed in `tmp`, just before the rename to
    `final` publishes it. Does nothing; a test replaces it to kill the process at that moment
    (tests/test_train_resume.py: a crash mid-save keeps the previous checkpoint usable)."""


def save_checkpoint(ckpt_root: Path, step: int, config, model_state: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], tokenizer: Any = None, keep_last: int = 3,
                    write_model: Callable[[Path], None] | None = None) -> Path:
    """Write `ckpt_root/step-XXXXXX` atomically and prune old checkpoints (call on rank 0 only).
    `write_model(dir)` replaces the model files (a LoRA run writes only its adapter: sphinx_x/train/lora.py)."""
    final = ckpt_root / step_dir_name(step)
    for stale in ckpt_root.glob(".tmp-step-*") if ckpt_root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_directory(final, before_publish=lambda tmp: before_publish(tmp, final)) as tmp:
        if write_model is None:
            write_model_files(tmp, config, model_state, tokenizer)
        else:
            write_model(tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
    for _, old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a training checkpoint (no {TRAINER_STATE})")
    return torch.load(path, map_location="cpu", weights_only=True)
