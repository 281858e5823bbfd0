"""Training checkpoints: `OUT/ckpt/step-XXXXXX/` = a model directory + `trainer_state.pt`.

The model part is exactly what `SphinxX.from_pretrained` reads (config.json, safetensors, tokenizer),
so any checkpoint is also a usable model. `trainer_state.pt` holds the optimizer state (keyed by
parameter name, unsharded), the LR scheduler, the data sampler position, every rank's RNG states and
the step; it holds only tensors and plain containers and is read back with `weights_only=True`.

Atomicity: everything is written into `ckpt/.tmp-step-XXXXXX`, flushed to disk, then renamed to
`step-XXXXXX` in one `os.replace`. A process killed at any moment leaves either the complete new
checkpoint or none (plus a stale temporary directory, removed on the next save), and the previous
checkpoints untouched. Only then are checkpoints beyond `keep_last` deleted, oldest first.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sphinx_x.model_io import CONFIG_NAME, FORMAT_VERSION, save_state_dict

TRAINER_STATE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d{6,})$")
# Test hook: SIGKILL this process after a checkpoint's files are written, before its rename,
# when saving this step (proves a crash mid-save keeps the previous checkpoint usable).
FAULT_ENV = "SPHINX_X_KILL_BEFORE_CKPT_RENAME"


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
        if m and (child / TRAINER_STATE).is_file() and (child / CONFIG_NAME).is_file():
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


# ---- model directories ---------------------------------------------------------------------------
def drop_tied(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Tied output embeddings are stored once (as the input embeddings), as `model_io` does."""
    if config.llm.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "llm.lm_head.weight"}
    return state


def write_model_files(directory: Path, config, state: dict[str, torch.Tensor], tokenizer: Any = None,
                      max_shard_bytes: int = 5 * 2**30) -> None:
    """config.json + safetensors (+ tokenizer) into an existing directory: the `from_pretrained` layout."""
    data = config.to_dict()
    data["format_version"] = FORMAT_VERSION
    if tokenizer is not None:
        data["tokenizer"] = None  # the tokenizer now lives in this directory
    (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in drop_tied(state, config).items()}
    save_state_dict(state, directory, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def _fsync_tree(directory: Path) -> None:
    for f in directory.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_directory_write(final: Path, write, fault_check=None) -> None:
    """Run `write(tmp_dir)`, flush, then rename the temporary directory to `final` (replacing it)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if fault_check is not None:
        fault_check()
    if final.exists():  # move the old copy aside first, so a crash keeps one complete copy
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- checkpoints ---------------------------------------------------------------------------------
def save_checkpoint(ckpt_root: Path, step: int, config, model_state: dict[str, torch.Tensor],
                    trainer_state: dict[str, Any], tokenizer: Any = None, keep_last: int = 3) -> Path:
    """Write `ckpt_root/step-XXXXXX` atomically and prune old checkpoints (call on rank 0 only)."""
    final = ckpt_root / step_dir_name(step)

    def write(tmp: Path) -> None:
        write_model_files(tmp, config, model_state, tokenizer)
        torch.save(trainer_state, tmp / TRAINER_STATE)

    def fault_check() -> None:
        if os.environ.get(FAULT_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)

    for stale in ckpt_root.glob(".tmp-step-*") if ckpt_root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    atomic_directory_write(final, write, fault_check)
    for _, old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    path = Path(checkpoint) / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint}: not a training checkpoint (no {TRAINER_STATE})")
    return torch.load(path, map_location="cpu", weights_only=True)
