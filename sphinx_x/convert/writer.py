"""Write tensors one at a time into size-bounded safetensors shards plus a transformers-style index.

Only the current shard is ever held in memory: a shard is written (safetensors writes straight from the
tensors' memory) and dropped as soon as the next tensor would take it past `max_shard_bytes`. File
names follow transformers (`model-00001-of-00003.safetensors` + `model.safetensors.index.json`, or a
single `model.safetensors`), which `sphinx_x.model_io.load_weights` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from sphinx_x.model_io import INDEX_NAME, WEIGHTS_NAME


class ShardedSafetensorsWriter:
    def __init__(self, directory: Path, max_shard_bytes: int = 2 * 2**30):
        if max_shard_bytes <= 0:
            raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._files: list[tuple[str, list[str]]] = []  # (temporary file name, tensor names) per shard
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in names for _, names in self._files):
            raise ValueError(f"tensor {name!r} written twice")
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        filename = f"shard-{len(self._files):05d}.safetensors.part"
        save_file(self._pending, str(self.directory / filename), metadata={"format": "pt"})
        self._files.append((filename, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, give every shard its final name and write the index; returns the file names."""
        if self._pending or not self._files:
            self._flush()
        count = len(self._files)
        if count == 1:
            os.replace(self.directory / self._files[0][0], self.directory / WEIGHTS_NAME)
            return [WEIGHTS_NAME]
        weight_map: dict[str, str] = {}
        final_names = []
        for i, (filename, names) in enumerate(self._files):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            os.replace(self.directory / filename, self.directory / final)
            weight_map.update({n: final for n in names})
            final_names.append(final)
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return final_names + [INDEX_NAME]
