"""Reading vision-expert weights files: one flat name -> tensor dict, never unpickling arbitrary objects."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sphinx_x.experts.base import CheckpointError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from `.safetensors` or a `.bin/.pt/.pth` read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vision expert checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    if path.suffix not in (".bin", ".pt", ".pth"):
        raise CheckpointError(f"{path}: unsupported checkpoint suffix {path.suffix!r} (.safetensors, .bin, .pt, .pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def read_weights_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a transformers model directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    directory = Path(directory)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            try:
                files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a weights index ({e})") from e
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(read_state_dict(directory / name))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict(directory / name)
    raise CheckpointError(f"{directory}: no model.safetensors, pytorch_model.bin or weights index in this directory")
