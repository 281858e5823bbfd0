"""Model directories: `config.json` + safetensors (sharded with an index above a size) + tokenizer files.

Writes go to a temporary sibling directory that is renamed into place, so a crash mid-save never
leaves a half-written model where a complete one is expected.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file

from sphinx_x.config import SphinxXConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1


def unique_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied duplicates dropped (safetensors refuses shared storage)."""
    seen: dict[int, str] = {}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr() if tensor.device.type != "meta" else id(tensor)
        if tensor.numel() and key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous()
    return out


def save_state_dict(state: dict[str, torch.Tensor], directory: Path, max_shard_bytes: int) -> None:
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_bytes
    )
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].cpu() for n in names}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_model_dir(model: Any, directory: str | Path, tokenizer: Any = None, max_shard_bytes: int = 5 * 2**30) -> None:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    config = model.config.to_dict()
    config["format_version"] = FORMAT_VERSION
    if tokenizer is not None:
        config["tokenizer"] = None  # the tokenizer now lives in this directory
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_state_dict(unique_state_dict(model), tmp, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    _fsync_dir(tmp)
    if directory.exists():  # replace: move the old one aside first so a crash keeps one complete copy
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def _fsync_dir(directory: Path) -> None:
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def read_config(directory: str | Path) -> SphinxXConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a SPHINX-X model directory (no {CONFIG_NAME})")
    data = json.loads(path.read_text())
    version = data.pop("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this sphinx-x ({FORMAT_VERSION})")
    return SphinxXConfig.from_dict(data)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        state: dict[str, torch.Tensor] = {}
        for filename in sorted(set(weight_map.values())):
            state.update(load_file(str(directory / filename)))
        return state
    single = directory / WEIGHTS_NAME
    if not single.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")
    return load_file(str(single))


def load_model_dir(
    cls: Any, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Any:
    directory = Path(directory)
    config = read_config(directory)
    model = cls.from_config_without_weights(config)  # meta device: no init cost, no memory
    model.config = config
    model.to_empty(device=device)
    state = load_weights(directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = _tied_names(model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{directory}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if hasattr(model.llm, "tie_weights"):
        model.llm.tie_weights()
    _rebuild_non_persistent_buffers(model, device)
    if dtype is not None:
        model.to(dtype)
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        from sphinx_x.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(directory)
    return model.eval()


def _tied_names(model: torch.nn.Module) -> set[str]:
    if getattr(model.llm.config, "tie_word_embeddings", False):
        return {"llm.lm_head.weight"}
    return set()


def _rebuild_non_persistent_buffers(model: torch.nn.Module, device: str | torch.device) -> None:
    """Buffers outside the state dict (rotary inverse frequencies) were built on meta: rebuild them."""
    for name, module in model.named_modules():
        stale = sorted(module._non_persistent_buffers_set)
        if not stale:
            continue
        if not hasattr(module, "config"):
            raise NotImplementedError(f"cannot rebuild non-persistent buffers {stale} of {name}")
        fresh = type(module)(module.config)
        for b in stale:
            setattr(module, b, getattr(fresh, b).to(device))
