"""Model directories: `config.json` + safetensors (sharded with an index above a size) + tokenizer files.

One writer, `write_model_files`, lays a directory out for `save_pretrained` (`save_model_dir`), training
checkpoints and the final model (sphinx_x/train/checkpoint.py, `write_model_dir`) alike: tied output
embeddings are stored once and re-tied on load. Writes go to a temporary sibling directory that is
flushed to disk and renamed into place (`sphinx_x.fileio.atomic_directory`), so a crash mid-save never
leaves a half-written model where a complete one is expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sphinx_x.config import SphinxXConfig
from sphinx_x.fileio import atomic_directory

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
FORMAT_VERSION = 1


DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
TIED_OUTPUT_EMBEDDING = "llm.lm_head.weight"  # stored once, as the input embeddings, when tied


def tied_names(config: SphinxXConfig) -> set[str]:
    """State-dict names not stored because `load_model_dir` re-ties them to another tensor."""
    return {TIED_OUTPUT_EMBEDDING} if config.llm.tie_word_embeddings else set()


def storable_state(state: dict[str, torch.Tensor], config: SphinxXConfig) -> dict[str, torch.Tensor]:
    """What a model directory stores of `state`: the tied names dropped, every tensor detached, contiguous and
    on the CPU. Any other tensors sharing storage are stored as separate copies (safetensors refuses shared
    storage, and the loader re-ties only `tied_names`)."""
    drop = tied_names(config)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in state.items():
        if name in drop:
            continue
        tensor = tensor.detach().contiguous().cpu()
        if tensor.numel():
            span = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
            if span in seen:
                tensor = tensor.clone()
            seen.add(span)
        out[name] = tensor
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


def write_config_json(directory: Path, config: SphinxXConfig, tokenizer_inside: bool) -> None:
    """config.json with the format version; `tokenizer_inside`: the tokenizer files are in this directory."""
    data = config.to_dict()
    data["format_version"] = FORMAT_VERSION
    if tokenizer_inside:
        data["tokenizer"] = None  # the tokenizer now lives in this directory
    (directory / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n")


def write_model_files(directory: Path, config: SphinxXConfig, state: dict[str, torch.Tensor], tokenizer: Any = None,
                      max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """config.json + safetensors (+ tokenizer) into an existing directory: the layout `load_model_dir` reads.
    Not atomic by itself: callers write into `sphinx_x.fileio.atomic_directory`'s temporary directory."""
    write_config_json(directory, config, tokenizer is not None)
    save_state_dict(storable_state(state, config), directory, max_shard_bytes)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def write_model_dir(directory: str | Path, config: SphinxXConfig, state: dict[str, torch.Tensor], tokenizer: Any = None,
                    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """A complete model directory at `directory`, atomically (an existing one is replaced)."""
    with atomic_directory(directory) as tmp:
        write_model_files(tmp, config, state, tokenizer, max_shard_bytes)


def save_model_dir(model: Any, directory: str | Path, tokenizer: Any = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> None:
    """`model` (its `config` and state dict) as a model directory at `directory`, atomically."""
    write_model_dir(directory, model.config, model.state_dict(), tokenizer, max_shard_bytes)


def read_config(directory: str | Path) -> SphinxXConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a SPHINX-X model directory (no {CONFIG_NAME})")
    data = json.loads(path.read_text())
    version = data.pop("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this sphinx-x ({FORMAT_VERSION})")
    return SphinxXConfig.from_dict(data)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (the shards of its index, or the single file)."""
    index = directory / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / WEIGHTS_NAME
    if not single.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} or {INDEX_NAME}")
    return [single]


def iter_weights(directory: Path, device: str | torch.device = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every stored tensor, read one at a time: only one tensor is in memory here."""
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def weight_index(directory: Path) -> dict[str, Path]:
    """Stored tensor name -> the file that holds it."""
    out: dict[str, Path] = {}
    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as f:
            out.update((name, path) for name in f.keys())
    return out


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every stored tensor at once (for inspection and tests; loading a model uses `iter_weights`)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        state.update(load_file(str(path)))
    return state


def load_model_dir(
    cls: Any, directory: str | Path, device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> Any:
    """Build `cls` on the meta device and move each stored tensor into it, one at a time.

    Peak memory is about the loaded model plus one tensor (the weight files are never all in memory,
    and no fp32 copy is made first). `dtype`: None loads floating tensors as fp32 (the training
    default), a torch dtype casts them to it, "auto" keeps each tensor's stored dtype."""
    directory = Path(directory)
    config = read_config(directory)
    model = cls.from_config_without_weights(config)  # meta device: no init cost, no memory
    model.config = config
    if dtype is not None and dtype != "auto" and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype, 'auto' or None, got {dtype!r}")
    target = torch.float32 if dtype is None else (None if dtype == "auto" else dtype)
    expected = dict(model.state_dict(keep_vars=True))
    unexpected = []
    for name, tensor in iter_weights(directory, device):
        if name not in expected:
            unexpected.append(name)
            continue
        if target is not None and tensor.is_floating_point():
            tensor = tensor.to(target)
        want = expected.pop(name)
        if tuple(want.shape) != tuple(tensor.shape):
            raise ValueError(f"{directory}: {name} is stored with shape {tuple(tensor.shape)}, the config "
                             f"builds {tuple(want.shape)}")
        assign_tensor(model, name, tensor)
    missing = [k for k in expected if k not in tied_names(config)]
    if missing or unexpected:
        raise ValueError(
            f"{directory}: weights do not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if hasattr(model.llm, "tie_weights"):
        model.llm.tie_weights()
    _rebuild_non_persistent_buffers(model, device, None if dtype == "auto" else target)
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        from sphinx_x.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(directory)
    return model.eval()


def assign_tensor(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the parameter or buffer `name` (a parameter keeps its requires_grad)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        old = module._parameters[attr]
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        raise KeyError(f"{name}: neither a parameter nor a buffer of the model")


def _rebuild_non_persistent_buffers(model: torch.nn.Module, device: str | torch.device,
                                    dtype: torch.dtype | None = None) -> None:
    """Buffers outside the state dict (rotary inverse frequencies) were built on meta: rebuild them
    (cast to `dtype` when given, as `model.to(dtype)` would)."""
    for name, module in model.named_modules():
        stale = sorted(module._non_persistent_buffers_set)
        if not stale:
            continue
        if not hasattr(module, "config"):
            raise NotImplementedError(f"cannot rebuild non-persistent buffers {stale} of {name}")
        fresh = type(module)(module.config)
        for b in stale:
            value = getattr(fresh, b).to(device)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            setattr(module, b, value)
