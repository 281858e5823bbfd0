"""Building what a run trains: the model (+ tokenizer) from the config, and the data loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sphinx_x import image_tokens
from sphinx_x.config import ConfigError, SphinxXConfig
from sphinx_x.train.config import TrainConfig


def model_config(cfg: TrainConfig) -> SphinxXConfig:
    """The SphinxXConfig of `model.preset` (a preset, a model directory or a config file: `SphinxXConfig.resolve`)
    with `model.overrides` merged in."""
    try:
        config = SphinxXConfig.resolve(cfg.model.preset)
    except (ConfigError, FileNotFoundError) as e:
        raise ConfigError(f"model.preset: {e}") from e
    try:
        return config.with_overrides(cfg.model.overrides)
    except ConfigError as e:
        raise ConfigError(f"model.overrides: {e}") from e


def set_experts_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every vision expert trunk; the config records it, so checkpoints keep it."""
    for expert in model.visual.experts.values():
        expert.cfg.frozen = frozen
        expert.trunk.requires_grad_(not frozen)
        expert.train(model.training)  # a frozen expert stays in eval mode (VisionExpert.train)


def build_model(cfg: TrainConfig, start_from: Path | None = None) -> tuple[nn.Module, Any]:
    """The model to train (on CPU, fp32, train mode) and its tokenizer.

    `start_from` (a checkpoint when resuming) wins over `model.path`, which wins over `model.preset`
    (random initialisation seeded with `train.seed`, so every rank builds the same weights)."""
    from sphinx_x.model import SphinxX
    from sphinx_x.tokenizer import load_tokenizer

    source = start_from or (Path(cfg.model.path) if cfg.model.path else None)
    if source is not None:
        if not (source / "config.json").is_file():
            raise ConfigError(f"model.path {source}: not a SPHINX-X model directory (no config.json)")
        model = SphinxX.from_pretrained(source)
        tokenizer = model.tokenizer
        spec = model.config.tokenizer or model.config.llm.path
        if tokenizer is None and spec:
            tokenizer = load_tokenizer(spec)
    else:
        config = model_config(cfg)
        torch.manual_seed(cfg.train.seed)
        model = SphinxX(config)
        spec = config.tokenizer or config.llm.path
        tokenizer = load_tokenizer(spec) if spec else None
    if tokenizer is None:
        raise ConfigError("the model has no tokenizer: set tokenizer in the model config (or model.overrides), "
                          "or start from a model directory that holds tokenizer files")
    return train_mode(model, cfg), tokenizer


def build_training_model(cfg: TrainConfig, info, start_from: Path | None = None) -> tuple[nn.Module, Any]:
    """The model ready to train on `info`'s device (activation checkpointing, compile, FSDP2 applied).

    One process: `build_model`, moved to the device. Under torchrun no rank builds the whole fp32 model
    it does not keep: every rank builds the structure on the meta device and shards it, then
    - from a model directory (`start_from` / `model.path`), each rank reads, tensor by tensor, only the
      slices its shards hold (peak host memory: its shards plus one stored tensor);
    - from a preset (random init, or local backbone weights in `model.overrides`), rank 0 alone builds
      the full model as one process would (same seed, same weights) and broadcasts it tensor by tensor;
      the other ranks keep only their shards.
    """
    from sphinx_x.train import distributed as D

    if cfg.train.lora is not None:  # adapters on a frozen base, and a LoRA checkpoint holds only the adapter
        from sphinx_x.train.lora import build_lora_model

        return build_lora_model(cfg, info, start_from)
    if not info.distributed:
        model, tokenizer = build_model(cfg, start_from)
        model.to(info.device)
        return prepare_model(model, cfg), tokenizer
    source = start_from or (Path(cfg.model.path) if cfg.model.path else None)
    if source is not None:
        model, tokenizer = _meta_model_from_dir(cfg, source)
        prepare_model(model, cfg)
        D.apply_fsdp(model, info, cfg.train.precision == "bf16")
        model.to_empty(device=info.device)
        D.load_sharded_from_dir(model, source)
    else:
        full, tokenizer = build_model(cfg) if info.is_main else (None, None)
        model = prepare_model(_meta_like(cfg), cfg)
        D.apply_fsdp(model, info, cfg.train.precision == "bf16")
        model.to_empty(device=info.device)
        D.load_sharded_from_rank0(model, full, info)
        del full
        tokenizer = D.broadcast_object(tokenizer, info)
    from sphinx_x.model_io import _rebuild_non_persistent_buffers

    _rebuild_non_persistent_buffers(model, info.device)
    return model, tokenizer


def prepare_model(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """LoRA adapters, activation checkpointing and torch.compile as configured (before any FSDP sharding)."""
    if cfg.train.lora is not None:
        from sphinx_x.train.lora import apply_lora, is_lora_model

        if not is_lora_model(model):
            apply_lora(model, cfg.train.lora)
    if cfg.train.activation_checkpointing:
        model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.train.compile:
        for layer in model.llm.get_decoder().layers:
            layer.compile(dynamic=True)
    return model


def _meta_model_from_dir(cfg: TrainConfig, source: Path) -> tuple[nn.Module, Any]:
    from sphinx_x.model import SphinxX
    from sphinx_x.model_io import read_config
    from sphinx_x.tokenizer import load_tokenizer

    if not (source / "config.json").is_file():
        raise ConfigError(f"model.path {source}: not a SPHINX-X model directory (no config.json)")
    config = read_config(source)
    model = SphinxX.from_config_without_weights(config)
    model.config = config
    has_tok = (source / "tokenizer.json").is_file() or (source / "tokenizer_config.json").is_file()
    spec = source if has_tok else (config.tokenizer or config.llm.path)
    if not spec:
        raise ConfigError("the model has no tokenizer: set tokenizer in the model config (or model.overrides), "
                          "or start from a model directory that holds tokenizer files")
    return train_mode(model, cfg), load_tokenizer(spec)


def _meta_like(cfg: TrainConfig) -> nn.Module:
    """The structure `build_model` builds from the preset, on the meta device (local weight paths only
    decide dimensions; no weights are read)."""
    from sphinx_x.llm import with_path
    from sphinx_x.model import SphinxX

    config = model_config(cfg)
    if config.llm.path is not None:
        config.llm = with_path(config.llm, config.llm.path)
    model = SphinxX.from_config_without_weights(config)
    model.config = config  # what SphinxX(config) keeps (weight paths included): checkpoints record it
    return train_mode(model, cfg)


def train_mode(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Train mode, the experts frozen as `model.frozen_experts` says, and frozen trunks in bf16 under bf16
    precision (`train.frozen_experts_bf16`): what the trainer does to a model it builds, before sharding."""
    model.train()
    if cfg.model.frozen_experts is not None:
        set_experts_frozen(model, cfg.model.frozen_experts)
    if cfg.train.precision == "bf16" and cfg.train.frozen_experts_bf16:
        for expert in model.visual.experts.values():
            if expert.cfg.frozen:
                expert.trunk.to(torch.bfloat16)
    return model


def check_max_len(cfg: TrainConfig, config: SphinxXConfig) -> None:
    """`data.max_len` holds the largest image of `config` plus BOS and one text token (sphinx_x/image_tokens.py)."""
    image_tokens.check_max_len(cfg.data.max_len, config.vision, field="data.max_len")


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def is_vision_expert_parameter(name: str) -> bool:
    """True for a vision expert's weight, under any wrapper prefix (DDP's `module.`, FSDP's)."""
    return name.startswith("visual.experts.") or ".visual.experts." in name


def is_llm_parameter(name: str) -> bool:
    """True for an LLM weight, under any wrapper prefix (DDP's `module.`, FSDP's)."""
    return name.startswith("llm.") or ".llm." in name


def param_groups(named: list[tuple[str, nn.Parameter]], lr: float, vision_lr_scale: float,
                 llm_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: everything at `lr`, trainable vision-expert weights at `lr * vision_lr_scale`, the LLM's
    at `lr * llm_lr_scale`. The first group is the main one (its rate is the one logged: the projector's when
    the LLM has its own); an empty group is left out."""
    vision = [p for n, p in named if is_vision_expert_parameter(n)]
    llm = [p for n, p in named if is_llm_parameter(n)]
    if (vision_lr_scale == 1.0 or not vision) and (llm_lr_scale == 1.0 or not llm):
        return [{"params": [p for _, p in named], "lr": lr}]  # one group, in model order (resumable as before)
    split_vision, split_llm = vision_lr_scale != 1.0, llm_lr_scale != 1.0
    rest = [p for n, p in named if not (split_vision and is_vision_expert_parameter(n))
            and not (split_llm and is_llm_parameter(n))]
    groups = [{"params": rest, "lr": lr}]
    if split_vision:
        groups.append({"params": vision, "lr": lr * vision_lr_scale})
    if split_llm:
        groups.append({"params": llm, "lr": lr * llm_lr_scale})
    return [g for g in groups if g["params"]]


def build_loader(cfg: TrainConfig, model_cfg: SphinxXConfig, tokenizer: Any, rank: int, world_size: int):
    """The DataLoader of this rank's micro-batches (its `batch_sampler` is the resumable sampler)."""
    from sphinx_x.data.dataset import MixDataset, build_dataloader

    if not cfg.data.mix:
        raise ConfigError("data.mix is not set: pass --data MIX.yaml or set data.mix in the config")
    if not Path(cfg.data.mix).is_file():
        raise ConfigError(f"data.mix {cfg.data.mix}: file not found")
    dataset = MixDataset(
        cfg.data.mix, tokenizer, model_cfg.vision,
        template=cfg.data.template or model_cfg.template,
        max_len=cfg.data.max_len,
        lenient=cfg.data.lenient,
        seed=cfg.train.seed,
        cache_dir=cfg.data.cache_dir,
    )
    loader = build_dataloader(
        dataset,
        global_batch_size=cfg.train.global_batch,
        micro_batch_size=cfg.train.micro_batch,
        world_size=world_size,
        rank=rank,
        seed=cfg.train.seed,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available() and cfg.train.device != "cpu",
    )
    if len(loader.batch_sampler) == 0:
        raise ConfigError(
            f"data.mix {cfg.data.mix}: no type has a full global batch of {cfg.train.global_batch} samples "
            f"({len(dataset)} samples); lower train.global_batch"
        )
    return loader
