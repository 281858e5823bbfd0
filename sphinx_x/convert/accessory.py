"""`convert_accessory`: a released LLaMA2-Accessory SPHINX checkpoint -> a SPHINX-X model directory.

Source layout (what the SPHINX release publishes per model):
  consolidated.XX-of-YY.model.pth   {"model": state_dict} per model-parallel rank, keys under `llma.`
  config.json                       the official ModelArgs (dim, n_layers, n_heads, ...)
  meta.json                         {"llama_type": "llama_ens5_light" | ...}: the official model file
  tokenizer.model                   SentencePiece (or tokenizer.json + tokenizer_config.json)

The architecture comes from `llama_type` (preset per type in `sphinx_x.accessory_keys`), the LLM dims
from config.json checked against the tensors. Everything is checked (files, keys both ways, shapes)
before anything is written; tensors are then merged one by one from memory-mapped shards and streamed
into size-bounded safetensors shards, so the model is never held in memory, let alone twice. The
result is written under a temporary name next to the destination and renamed into place at the end:
after a failure the destination does not exist (or keeps its previous content).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from sphinx_x.config import ConfigError, SphinxXConfig
from sphinx_x.convert.llm_plan import Output, copied, is_llm_key, llm_config_from_checkpoint, llm_outputs, output_shape
from sphinx_x.convert.shards import PREFIX, ConversionError, ShardSet, find_shards
from sphinx_x.convert.writer import ShardedSafetensorsWriter
from sphinx_x.fileio import atomic_directory, read_json_object
from sphinx_x.model_io import tied_names, write_config_json

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
SOURCE_NOTE = "accessory_source.json"  # provenance: llama_type, shard count, replicas that differed


class KeyMap(Protocol):
    """What the converter needs to know about the non-LLM part of each llama_type."""

    def preset(self, llama_type: str) -> str: ...

    def llama_types(self) -> list[str]: ...

    def vision_key(self, llama_type: str, key: str) -> str | None: ...

    def vision_tensor(self, llama_type: str, key: str, tensor: torch.Tensor) -> torch.Tensor: ...

    def fill_missing(self, llama_type: str, name: str, shape: tuple[int, ...]) -> torch.Tensor | None: ...


@dataclass
class ModuleKeyMap:
    """The key map of `sphinx_x.accessory_keys` (imported on first use)."""

    module: Any = field(default=None)

    def _m(self) -> Any:
        if self.module is None:
            import sphinx_x.accessory_keys as keys

            self.module = keys
        return self.module

    def llama_types(self) -> list[str]:
        return list(self._m().PRESET_BY_LLAMA_TYPE)

    def preset(self, llama_type: str) -> str:
        return self._m().PRESET_BY_LLAMA_TYPE[llama_type]

    def vision_key(self, llama_type: str, key: str) -> str | None:
        return self._m().vision_key(llama_type, key)

    def vision_tensor(self, llama_type: str, key: str, tensor: torch.Tensor) -> torch.Tensor:
        fn = getattr(self._m(), "vision_tensor", None)
        return fn(llama_type, key, tensor) if fn else tensor

    def fill_missing(self, llama_type: str, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
        fn = getattr(self._m(), "fill_missing", None)
        return fn(llama_type, name, shape) if fn else None


# ---- reading the source directory ----------------------------------------------------------------
def _tokenizer_source(src: Path) -> Path:
    if (src / "tokenizer.model").is_file():
        return src / "tokenizer.model"
    if (src / "tokenizer.json").is_file() and (src / "tokenizer_config.json").is_file():
        return src
    raise ConversionError(f"{src / 'tokenizer.model'}: missing (or tokenizer.json + tokenizer_config.json)")


def _llama_type(src: Path, keymap: KeyMap) -> str:
    meta_file = src / "meta.json"
    llama_type = read_json_object(meta_file, ConversionError, "the official model type").get("llama_type")
    valid = keymap.llama_types()
    if llama_type not in valid:
        raise ConversionError(f"{meta_file}: unknown llama_type {llama_type!r}; valid: {', '.join(valid)}")
    return llama_type


# ---- planning --------------------------------------------------------------------------------------
@dataclass
class Plan:
    config: SphinxXConfig
    outputs: list[Output]
    dropped: list[str]  # official keys deliberately not converted


def _base_config(llama_type: str, keymap: KeyMap, config: str | Path | None) -> SphinxXConfig:
    try:
        return SphinxXConfig.load(config) if config else SphinxXConfig.from_name(keymap.preset(llama_type))
    except (ConfigError, OSError) as e:
        raise ConversionError(f"cannot build the {llama_type} config: {e}") from e


def plan_conversion(
    src: Path, shards: ShardSet, llama_type: str, params: dict, keymap: KeyMap, config: str | Path | None
) -> Plan:
    arch = "mixtral" if llama_type.startswith("mixtral") else "llama"
    base = _base_config(llama_type, keymap, config)
    llm = llm_config_from_checkpoint(params, arch, shards, src / "config.json", base.llm)
    cfg = replace(base, llm=llm, tokenizer=None, template="accessory")
    outputs = llm_outputs(llm)
    dropped = []
    for key in shards.keys():
        if is_llm_key(key):
            continue
        try:
            name = keymap.vision_key(llama_type, key)
        except KeyError:
            continue  # reported below as unexpected
        if name is None:
            dropped.append(key)
        else:
            outputs.append(Output(name, (key,), _vision_build(keymap, llama_type, key)))
    _check_keys(shards, outputs, dropped, llama_type)
    expected = _expected_shapes(cfg)
    for out in outputs:
        out.shape = output_shape(out, shards) if is_llm_key(out.sources[0]) else _vision_shape(
            keymap, llama_type, out.sources[0], shards)
    outputs += _fills(outputs, expected, keymap, llama_type)
    _check_against_model(shards, outputs, expected, llama_type, cfg)
    return Plan(cfg, outputs, dropped)


def _vision_build(keymap: KeyMap, llama_type: str, key: str):
    raw = copied(key)
    return lambda shards, dtype: keymap.vision_tensor(llama_type, key, raw(shards, dtype)).contiguous()


def _vision_shape(keymap: KeyMap, llama_type: str, key: str, shards: ShardSet) -> tuple[int, ...]:
    probe = torch.empty(shards.merged_shape(key), dtype=shards.infos[key][0].dtype, device="meta")
    return tuple(keymap.vision_tensor(llama_type, key, probe).shape)


def _fills(outputs: list[Output], expected: dict[str, tuple[int, ...]], keymap: KeyMap, llama_type: str) -> list:
    produced = {o.name for o in outputs}
    fills = []
    for name, shape in expected.items():
        if name in produced:
            continue
        value = keymap.fill_missing(llama_type, name, shape)
        if value is not None:
            fills.append(Output(name, (), lambda shards, dtype, v=value: v.to(dtype).clone(), tuple(value.shape)))
    return fills


def _check_keys(shards: ShardSet, outputs: list[Output], dropped: list[str], llama_type: str) -> None:
    present = set(shards.keys())
    needed = {s for o in outputs for s in o.sources}
    missing = sorted(needed - present)
    unexpected = sorted(present - needed - set(dropped))
    where = f"{shards.paths[0].parent} ({llama_type})"
    if missing:
        raise ConversionError(f"{where}: missing keys in {shards.paths[0].name}: {_listed(missing)}")
    if unexpected:
        raise ConversionError(f"{where}: unexpected keys in {shards.paths[0].name}: {_listed(unexpected)}")
    twice = sorted(n for n, count in Counter(o.name for o in outputs).items() if count > 1)
    if twice:
        raise ConversionError(f"{where}: several official keys map onto {_listed(twice)}")


def _expected_shapes(cfg: SphinxXConfig) -> dict[str, tuple[int, ...]]:
    from sphinx_x.model import SphinxX

    model = SphinxX.from_config_without_weights(cfg)  # meta device: shapes only
    tied = tied_names(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in tied}


def _check_against_model(
    shards: ShardSet, outputs: list[Output], expected: dict[str, tuple[int, ...]], llama_type: str,
    cfg: SphinxXConfig,
) -> None:
    where = f"{shards.paths[0].parent} ({llama_type} -> preset {cfg.name})"
    produced = {o.name: o for o in outputs}
    not_ours = sorted(set(produced) - set(expected))
    if not_ours:
        pairs = [f"{produced[n].sources[0] if produced[n].sources else '?'} -> {n}" for n in not_ours]
        raise ConversionError(f"{where}: unexpected keys, the model has no {_listed(pairs)}")
    lacking = sorted(set(expected) - set(produced))
    if lacking:
        raise ConversionError(f"{where}: missing keys, no official key gives {_listed(lacking)}")
    wrong = [
        f"{o.sources[0] if o.sources else o.name} {o.shape} for {o.name} {expected[o.name]}"
        for o in outputs if o.shape != expected[o.name]
    ]
    if wrong:
        raise ConversionError(f"{where}: shape mismatch: {_listed(wrong, 4)}")


def _listed(items: list[str], n: int = 8) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# ---- writing -------------------------------------------------------------------------------------
def convert_accessory(
    src: str | Path,
    out: str | Path,
    dtype: str | torch.dtype = "bfloat16",
    config: str | Path | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 2 * 2**30,
    progress: bool = True,
    keymap: KeyMap | None = None,
    check_replicas: bool = True,
) -> Path:
    """Convert the Accessory checkpoint directory `src` into the model directory `out`; returns `out`.

    `config` (a SPHINX-X config file) replaces the preset of the checkpoint's llama_type (the LLM dims
    still come from the checkpoint). `keymap` defaults to `sphinx_x.accessory_keys`. `check_replicas`
    compares every shard's copy of the replicated tensors (frozen encoders included) with shard 0's, the one
    written; turning it off saves reading those copies."""
    src, dst = Path(src), Path(out)
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) and dtype in DTYPES else dtype
    if torch_dtype not in DTYPES.values():
        raise ConversionError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    keymap = keymap or ModuleKeyMap()
    if not src.is_dir():
        raise ConversionError(f"{src}: not a directory")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConversionError(f"{dst}: the output must not be the source directory or inside it")
    if dst.exists() and not overwrite and (not dst.is_dir() or any(dst.iterdir())):
        raise ConversionError(f"{dst}: already exists and is not empty (pass overwrite to replace it)")
    llama_type = _llama_type(src, keymap)
    params = read_json_object(src / "config.json", ConversionError, "the official ModelArgs")
    tokenizer_src = _tokenizer_source(src)
    paths = find_shards(src)
    experts = None
    if llama_type.startswith("mixtral"):
        experts = int((params.get("moe") or {}).get("num_experts", 8))
    shards = ShardSet(paths, num_experts=experts, check_replicas=check_replicas)
    if not any(k.startswith(PREFIX) for k in shards.keys()):
        raise ConversionError(
            f"{paths[0]}: no key starts with {PREFIX!r}; not a LLaMA2-Accessory consolidated checkpoint"
        )
    plan = plan_conversion(src, shards, llama_type, params, keymap, config)
    tokenizer = _load_tokenizer(tokenizer_src, plan.config.llm.vocab_size)

    with atomic_directory(dst) as tmp:  # after a failure dst is as it was
        _write(tmp, plan, shards, torch_dtype, max_shard_bytes, progress)
        write_config_json(tmp, plan.config, tokenizer_inside=True)
        tokenizer.save_pretrained(str(tmp))
        if tokenizer_src.is_file():
            shutil.copyfile(tokenizer_src, tmp / tokenizer_src.name)
        note = {"llama_type": llama_type, "shards": [p.name for p in paths], "dtype": str(torch_dtype),
                "dropped_keys": plan.dropped, "unequal_replicas": shards.unequal_replicas}
        (tmp / SOURCE_NOTE).write_text(json.dumps(note, indent=2) + "\n")
    if shards.unequal_replicas:
        print(f"warning: {len(shards.unequal_replicas)} replicated tensors differ between shards; shard 0's copy "
              f"was used, as the official loader does: {_listed(shards.unequal_replicas)}", file=sys.stderr)
    return dst


def _load_tokenizer(path: Path, vocab_size: int):
    from sphinx_x.tokenizer import TokenizerError, load_tokenizer

    try:
        tok = load_tokenizer(path)
    except TokenizerError as e:
        raise ConversionError(str(e)) from e
    if len(tok) != vocab_size:
        raise ConversionError(
            f"{path}: the tokenizer has {len(tok)} tokens but llma.tok_embeddings.weight has {vocab_size} rows"
        )
    return tok


def _write(tmp: Path, plan: Plan, shards: ShardSet, dtype: torch.dtype, max_shard_bytes: int, progress: bool) -> None:
    writer = ShardedSafetensorsWriter(tmp, max_shard_bytes)
    total = sum(_numel(o.shape) * dtype.itemsize for o in plan.outputs)
    with tqdm(total=total, unit="B", unit_scale=True, desc="convert", disable=not progress) as bar:
        for out in plan.outputs:
            tensor = out.build(shards, dtype)
            if tuple(tensor.shape) != out.shape:  # a vision_tensor hook that changes shapes at run time
                raise ConversionError(
                    f"{out.sources}: built {tuple(tensor.shape)} for {out.name}, expected {out.shape}"
                )
            writer.add(out.name, tensor)
            del tensor
            bar.update(_numel(out.shape) * dtype.itemsize)
    writer.close()
    shards.release()


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


