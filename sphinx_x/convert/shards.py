"""Read LLaMA2-Accessory `consolidated.XX-of-YY.model.pth` shards and merge model-parallel tensors.

Each shard is `{"model": state_dict}` saved by one model-parallel rank. The merge rules are the ones the
official loader applies (`accessory/util/tensor_parallel.py`: `_MODEL_PARALLEL_MODULES`, and the
`model_parallel_merge` hook of the sparse MoE in `mixtral_sparse_ens*.py`):

- column-parallel linears (fairscale `ColumnParallelLinear`: wq, wk, wv, w1, w3, output): concatenate on
  dim 0 (output features);
- row-parallel linears (`RowParallelLinear`: wo, w2): concatenate on dim 1 (input features);
- the parallel embedding (`ParallelEmbedding`: tok_embeddings): concatenate on dim 1 (embedding dim);
- sparse MoE experts (`feed_forward.w1/w2/w3` parameters, each `(num_experts * hidden / mp, dim)` per
  rank): every rank holds a slice of every expert's hidden dimension, so each shard is viewed as
  `(num_experts, hidden / mp, dim)` and the shards are concatenated on dim 1;
- everything else (norms, the MoE router, frozen vision encoders, projectors, image tags) is replicated:
  one copy is taken (shard 0's, as the official loader does) and the others are compared with it.

Shards are opened with `torch.load(weights_only=True, mmap=True)`: nothing is read until a tensor is
used. The mappings are dropped (and reopened lazily) after `release_bytes` have been read, so touched
pages of multi-GB files never pile up in the converter's resident memory.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

SHARD_PATTERN = re.compile(r"^consolidated\.(\d{2,})-of-(\d{2,})\.model\.pth$")
DIFF_PATTERN = re.compile(r"^consolidated\.(\d{2,})-of-(\d{2,})\.model-diff\.pth$")
PREFIX = "llma."

COLUMN, ROW, EMBEDDING, EXPERTS, REPLICATED = "column", "row", "embedding", "experts", "replicated"
_CONCAT_DIM = {COLUMN: 0, ROW: 1, EMBEDDING: 1}
_LAYER = r"llma\.layers\.\d+\."
_KIND_PATTERNS = [
    (re.compile(r"llma\.tok_embeddings\.weight"), EMBEDDING),
    (re.compile(r"llma\.output\.weight"), COLUMN),
    (re.compile(_LAYER + r"attention\.w[qkv]\.weight"), COLUMN),
    (re.compile(_LAYER + r"attention\.wo\.weight"), ROW),
    (re.compile(_LAYER + r"feed_forward\.w[13]\.weight"), COLUMN),
    (re.compile(_LAYER + r"feed_forward\.w2\.weight"), ROW),
    (re.compile(_LAYER + r"feed_forward\.w[123]"), EXPERTS),  # sparse MoE: bare parameters, no ".weight"
]


class ConversionError(ValueError):
    """The source checkpoint cannot be converted; the message names the file and the key."""


def parallel_kind(key: str) -> str:
    """How the official loader merges `key` across model-parallel shards."""
    for pattern, kind in _KIND_PATTERNS:
        if pattern.fullmatch(key):
            return kind
    return REPLICATED


def shard_name(rank: int, count: int) -> str:
    return f"consolidated.{rank:02d}-of-{count:02d}.model.pth"


def find_shards(src: Path) -> list[Path]:
    """The shard files of `src` in rank order; refuses mixed counts, gaps and diff checkpoints."""
    names = sorted(p.name for p in src.iterdir() if p.is_file())
    diffs = [n for n in names if DIFF_PATTERN.match(n)]
    if diffs:
        raise ConversionError(
            f"{src}: {diffs[0]} is a *_diff checkpoint (weights relative to a base model); "
            "merge it with its base first, only full consolidated.XX-of-YY.model.pth shards are converted"
        )
    matches = {n: SHARD_PATTERN.match(n) for n in names}
    shards = {n: (int(m.group(1)), int(m.group(2))) for n, m in matches.items() if m}
    if not shards:
        found = ", ".join(names) or "nothing"
        raise ConversionError(f"{src}: no consolidated.XX-of-YY.model.pth weight files (found: {found})")
    counts = sorted({count for _, count in shards.values()})
    if len(counts) > 1:
        by_count = "; ".join(
            f"{', '.join(n for n, (_, c) in shards.items() if c == count)} (of {count})" for count in counts
        )
        raise ConversionError(f"{src}: shard files of different counts: {by_count}")
    count = counts[0]
    ranks = {rank: name for name, (rank, _) in shards.items()}
    beyond = sorted(n for n, (rank, _) in shards.items() if rank >= count)
    if beyond:
        raise ConversionError(f"{src}: {beyond[0]} numbers a shard beyond the count of {count}")
    missing = [shard_name(r, count) for r in range(count) if r not in ranks]
    if missing:
        raise ConversionError(f"{src}: missing shard files {', '.join(missing)} (found {', '.join(sorted(shards))})")
    return [src / ranks[r] for r in range(count)]


def _open_shard(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The shard's state dict, and whether it is memory-mapped (files in torch's legacy, pre-zip format
    cannot be: they are read whole)."""
    mapped = True
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            obj, mapped = torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as e:  # corrupt or truncated files raise many types
        raise ConversionError(f"{path}: cannot read as a torch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # the consolidated format wraps the state dict
    if not isinstance(obj, dict):
        raise ConversionError(f"{path}: expected {{'model': state_dict}}, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: key {key!r} holds a {type(value).__name__}, not a tensor")
    return obj, mapped


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class ShardSet:
    """The model-parallel shards of one checkpoint, merged key by key on demand."""

    def __init__(self, paths: list[Path], num_experts: int | None = None, release_bytes: float = 512 * 2**20,
                 check_replicas: bool = True):
        self.paths = list(paths)
        self.num_experts = num_experts
        self.check_replicas = check_replicas  # compare every replica with shard 0's (reads them all)
        self.release_bytes = release_bytes
        self.unequal_replicas: list[str] = []  # replicated keys whose copies differ between shards
        self._states: list[dict[str, torch.Tensor]] | None = None
        self._read_since_open = 0
        states = self._open()
        self.infos: dict[str, list[TensorInfo]] = {}
        self._check_same_keys(states)
        for key in states[0]:
            self.infos[key] = [TensorInfo(tuple(s[key].shape), s[key].dtype) for s in states]
            self.merged_shape(key)  # every shape problem surfaces before anything is written

    # ---- opening -------------------------------------------------------------------------------
    def _open(self) -> list[dict[str, torch.Tensor]]:
        if self._states is None:
            opened = [_open_shard(p) for p in self.paths]
            self._states = [state for state, _ in opened]
            self._read_since_open = 0
            legacy = [p.name for p, (_, mapped) in zip(self.paths, opened) if not mapped]
            if legacy and self.release_bytes < float("inf"):
                print(f"warning: {', '.join(legacy)} use torch's legacy (pre-zip) format, which cannot be "
                      "memory-mapped: they are read into memory whole", file=sys.stderr)
                self.release_bytes = float("inf")  # re-reading whole files after every release would be quadratic
        return self._states

    def release(self) -> None:
        """Drop the memory maps (their touched pages leave resident memory); reopened on next use."""
        self._states = None

    def _check_same_keys(self, states: list[dict[str, torch.Tensor]]) -> None:
        first = set(states[0])
        for path, state in zip(self.paths[1:], states[1:]):
            missing, extra = sorted(first - set(state)), sorted(set(state) - first)
            if missing or extra:
                parts = [f"lacks {_listed(missing)}" if missing else "", f"has extra {_listed(extra)}" if extra else ""]
                raise ConversionError(
                    f"{path}: keys differ from {self.paths[0].name}: {'; '.join(p for p in parts if p)}"
                )

    def keys(self) -> list[str]:
        return list(self.infos)

    # ---- shapes --------------------------------------------------------------------------------
    def merged_shape(self, key: str) -> tuple[int, ...]:
        """The shape after merging (for experts: (num_experts, hidden, dim))."""
        infos = self.infos[key]
        kind = parallel_kind(key)
        shapes = [i.shape for i in infos]
        if kind == REPLICATED or len(infos) == 1 and kind != EXPERTS:
            self._check_equal_shapes(key, shapes)
            return shapes[0]
        if kind == EXPERTS:
            return self._experts_shape(key, shapes)
        dim = _CONCAT_DIM[kind]
        for path, shape in zip(self.paths, shapes):
            if len(shape) <= dim:
                raise ConversionError(f"{path}: {key} has shape {shape}; a {kind}-parallel tensor needs dim {dim}")
        rest = [s[:dim] + s[dim + 1 :] for s in shapes]
        for path, shape, r in zip(self.paths[1:], shapes[1:], rest[1:]):
            if r != rest[0]:
                raise ConversionError(
                    f"{path}: {key} has shape {shape} but {self.paths[0].name} has {shapes[0]}; "
                    f"{kind}-parallel shards must agree on every dim but {dim}"
                )
        merged = list(shapes[0])
        merged[dim] = sum(s[dim] for s in shapes)
        return tuple(merged)

    def _check_equal_shapes(self, key: str, shapes: list[tuple[int, ...]]) -> None:
        for path, shape in zip(self.paths[1:], shapes[1:]):
            if shape != shapes[0]:
                raise ConversionError(
                    f"{path}: replicated tensor {key} has shape {shape} but {self.paths[0].name} has {shapes[0]}"
                )

    def _experts_shape(self, key: str, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        experts = self.num_experts
        if experts is None:
            raise ConversionError(f"{self.paths[0]}: {key} is a sparse MoE tensor but the number of experts is unknown")
        for path, shape in zip(self.paths, shapes):
            if len(shape) != 2 or shape[0] % experts or shape[1] != shapes[0][1]:
                raise ConversionError(
                    f"{path}: MoE tensor {key} has shape {shape}; expected (num_experts * hidden / shards, dim) "
                    f"with num_experts={experts} and dim={shapes[0][1]}"
                )
        return (experts, sum(s[0] // experts for s in shapes), shapes[0][1])

    # ---- merging -------------------------------------------------------------------------------
    def merge_into(self, key: str, out: torch.Tensor) -> torch.Tensor:
        """Write the merged tensor `key` into `out` (any dtype, may be a strided view); returns `out`.
        Parts are copied straight from the memory-mapped files into `out`: no intermediate full copy."""
        shape = self.merged_shape(key)
        if tuple(out.shape) != shape:
            raise ConversionError(f"{self.paths[0]}: {key} merges to {shape}, not the expected {tuple(out.shape)}")
        parts = [state[key] for state in self._open()]
        kind = parallel_kind(key)
        if kind == REPLICATED or len(parts) == 1 and kind != EXPERTS:
            out.copy_(parts[0])
            if not self.check_replicas:
                parts = parts[:1]  # the other copies are never read
            for path, part in zip(self.paths[1:], parts[1:]):
                if not torch.equal(part, parts[0]):
                    self.unequal_replicas.append(f"{key} ({path.name})")
        elif kind == EXPERTS:
            offset = 0
            for part in parts:
                part = part.view(shape[0], -1, shape[2])
                out.narrow(1, offset, part.shape[1]).copy_(part)
                offset += part.shape[1]
        else:
            dim, offset = _CONCAT_DIM[kind], 0
            for part in parts:
                out.narrow(dim, offset, part.shape[dim]).copy_(part)
                offset += part.shape[dim]
        self._read_since_open += sum(p.numel() * p.element_size() for p in parts)
        if self._read_since_open >= self.release_bytes:
            self.release()
        return out

    def merged(self, key: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A new tensor holding the merged `key` (in `dtype`, default the checkpoint's)."""
        out = torch.empty(self.merged_shape(key), dtype=dtype or self.infos[key][0].dtype)
        return self.merge_into(key, out)


def _listed(keys: list[str], n: int = 8) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
