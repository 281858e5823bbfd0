"""LoRA / QLoRA fine-tuning of the LLM with peft (docs/lora.md).

`train.lora` wraps `model.llm` (a transformers causal LM) in a peft `PeftModel` whose LoRA adapters sit on
the linear layers named in `train.lora.target_modules`. Only the adapters train, and with
`train.lora.train_projector` also the projector(s) and the image tags (start, end, skip token); the LLM's
own weights and the vision experts are frozen. With `train.lora.quantize: nf4` (QLoRA) the frozen linear
layers of the decoder are stored in 4-bit NF4 through bitsandbytes (CUDA only).

An adapter directory (every checkpoint OUT/ckpt/step-N and the final OUT/final of a LoRA run) holds:

    adapter_config.json, adapter_model.safetensors  peft's own format: `PeftModel.from_pretrained(model.llm, DIR)`
    non_lora_trainables.safetensors                 the fully trained projector and image tags (SphinxX names),
                                                    with train_projector only
    trainer_state.pt                                checkpoints only (sphinx_x/train/checkpoint.py)

`sphinx-x lora merge BASE ADAPTER --out DIR` (`load_lora` + `merge_lora` + `save_pretrained`) turns one into
a model directory. A run started from a preset (random weights) first writes those base weights to OUT/base.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sphinx_x.config import ConfigError

ADAPTER_CONFIG = "adapter_config.json"  # peft's names (peft.utils.constants)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXTRA_WEIGHTS = "non_lora_trainables.safetensors"
BASE_DIR = "base"  # OUT/base: the frozen base weights of a run started from a preset
INSTALL_HINT = "pip install 'sphinx-x[lora]'"
QLORA_NEEDS = "QLoRA needs a CUDA GPU and bitsandbytes"
# Parameters that `train_projector` trains fully beside the adapters (SphinxX names).
EXTRA_PREFIXES = ("visual.projector.", "visual.own_projectors.")
EXTRA_NAMES = ("image_start", "image_end", "skip_token")


def require_peft():
    try:
        import peft
    except ImportError as e:
        raise ConfigError(f"train.lora needs peft, which is not installed: {INSTALL_HINT}") from e
    return peft


def is_lora_model(model: nn.Module) -> bool:
    """True when `model.llm` carries peft adapters."""
    return hasattr(getattr(model, "llm", None), "peft_config")


def is_extra_trainable(name: str) -> bool:
    return name in EXTRA_NAMES or name.startswith(EXTRA_PREFIXES)


# ---- applying adapters ---------------------------------------------------------------------------
def check_target_modules(llm: nn.Module, targets: list[str]) -> None:
    """Every target names at least one module of the LLM (peft matches a full name or its last parts)."""
    names = [n for n, _ in llm.named_modules() if n]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in llm.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"train.lora.target_modules: no module named {', '.join(map(repr, missing))} in the "
                          f"LLM; its linear layers are: {', '.join(linear)}")


def peft_config(section: Any, base: str | Path | None = None):
    """The peft LoraConfig of a `train.lora` section (sphinx_x/train/config.py: LoraSection)."""
    peft = require_peft()
    return peft.LoraConfig(
        r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
        target_modules=list(section.target_modules), bias="none", task_type="CAUSAL_LM",
        base_model_name_or_path=str(base) if base is not None else None,
    )


def apply_lora(model: nn.Module, section: Any, base: str | Path | None = None) -> nn.Module:
    """Freeze `model`, wrap `model.llm` with fresh adapters (the LLM's output is unchanged: peft starts
    lora_B at zero) and unfreeze the projector and image tags if `section.train_projector`."""
    from sphinx_x.train.build import set_experts_frozen

    peft = require_peft()
    check_target_modules(model.llm, section.target_modules)
    model.requires_grad_(False)
    set_experts_frozen(model, True)
    if section.quantize == "nf4":
        quantize_base_nf4(model)
    model.llm = peft.get_peft_model(model.llm, peft_config(section, base))
    if section.train_projector:
        for name, p in model.named_parameters():
            if is_extra_trainable(name):
                p.requires_grad_(True)
    return model


def quantize_base_nf4(model: nn.Module) -> None:
    """QLoRA's base: the decoder's frozen nn.Linear layers in bitsandbytes NF4 on the model's CUDA device, by
    the quantized-inference swap (sphinx_x/infer/quantize.py: embeddings, norms and the LM head keep their
    precision; Mixtral's fused expert weights are not nn.Linear and stay as they are)."""
    from sphinx_x.infer.quantize import quantize_model

    device = model.llm.get_input_embeddings().weight.device
    if device.type != "cuda":
        raise ConfigError(f"train.lora.quantize nf4: {QLORA_NEEDS} (the model is on {device.type})")
    quantize_model(model, "nf4")


# ---- adapter directories -------------------------------------------------------------------------
def write_adapter(model: nn.Module, directory: Path) -> None:
    """The adapter files of `model` into the existing `directory` (a checkpoint's or OUT/final's temporary
    directory: callers make the write atomic)."""
    directory = Path(directory)
    # save_embedding_layers=False: peft would otherwise compare the vocabulary with the config.json at
    # base_model_name_or_path (ours, not a transformers config), think it resized and store the embeddings.
    model.llm.save_pretrained(str(directory), save_embedding_layers=False)
    (directory / "README.md").unlink(missing_ok=True)  # peft's model-card stub, not part of the format
    extra = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
             if p.requires_grad and is_extra_trainable(n)}
    if extra:
        save_file(extra, str(directory / EXTRA_WEIGHTS), metadata={"format": "pt"})


def save_adapter_dir(model: nn.Module, directory: str | Path) -> Path:
    """A complete adapter directory at `directory`, atomically (an existing one is replaced)."""
    from sphinx_x.fileio import atomic_directory

    with atomic_directory(Path(directory)) as tmp:
        write_adapter(model, tmp)
    return Path(directory)


def load_adapter_weights(model: nn.Module, directory: str | Path) -> None:
    """Load a directory's adapter (and projector / tag) weights into a model wrapped by `apply_lora` with the
    same adapter shapes; anything missing or left over is an error naming the file."""
    from peft import set_peft_model_state_dict

    directory = Path(directory)
    file = directory / ADAPTER_WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"{directory}: not a LoRA adapter directory (no {ADAPTER_WEIGHTS})")
    try:
        result = set_peft_model_state_dict(model.llm, load_file(str(file)))
    except RuntimeError as e:  # shape mismatch: another rank or other target modules
        raise ValueError(f"{file}: the adapter does not fit this model / train.lora: {e}") from e
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{file}: the adapter does not fit this model / train.lora: missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}")
    extra_file = directory / EXTRA_WEIGHTS
    if extra_file.is_file():
        params = dict(model.named_parameters())
        for name, tensor in load_file(str(extra_file)).items():
            if name not in params or not is_extra_trainable(name) or params[name].shape != tensor.shape:
                raise ValueError(f"{extra_file}: {name} {tuple(tensor.shape)} is not a projector / image-tag "
                                 "parameter of this model")
            with torch.no_grad():
                params[name].copy_(tensor)


def load_lora(model: nn.Module, directory: str | Path) -> nn.Module:
    """`model` (a SphinxX) with the adapter of `directory` applied, unmerged, frozen, in eval mode."""
    peft = require_peft()
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{directory}: not a LoRA adapter directory (no {ADAPTER_CONFIG})")
    config = peft.LoraConfig.from_pretrained(str(directory))
    check_target_modules(model.llm, list(config.target_modules))
    config.inference_mode = True
    base, config.base_model_name_or_path = config.base_model_name_or_path, None  # kept, without peft's warning
    model.llm = peft.get_peft_model(model.llm, config)
    config.base_model_name_or_path = base
    load_adapter_weights(model, directory)
    model.requires_grad_(False)
    return model.eval()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the LLM's weights (W + alpha/r * B A): a plain SphinxX again."""
    model.llm = model.llm.merge_and_unload()
    return model


# ---- training ------------------------------------------------------------------------------------
def build_lora_model(cfg, info, start_from: Path | None = None) -> tuple[nn.Module, Any]:
    """The model of a LoRA run on `info`'s device: the base (model.path, or the preset's random weights,
    written once to OUT/base so that runs resume and merge from the same base), adapters applied, and when
    resuming, the checkpoint's adapter loaded."""
    from sphinx_x.train.build import build_model, prepare_model

    if info.distributed:
        raise ConfigError("train.lora runs in one process: FSDP with LoRA adapters is not supported "
                          "(start `sphinx-x train` without torchrun)")
    frozen = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, frozen_experts=True))
    base = Path(cfg.model.path) if cfg.model.path else Path(cfg.output.dir) / BASE_DIR
    if cfg.model.path is None and start_from is not None and not (base / "config.json").is_file():
        raise FileNotFoundError(f"resuming a LoRA run from {start_from}: its base weights {base} are missing")
    model, tokenizer = build_model(frozen, base if (cfg.model.path or start_from) else None)
    if cfg.model.path is None and start_from is None:
        model.save_pretrained(base, tokenizer=tokenizer)
    model.to(info.device)
    model = prepare_model(model, cfg)
    model.llm.peft_config["default"].base_model_name_or_path = str(base.resolve())
    if start_from is not None:
        load_adapter_weights(model, start_from)
    return model, tokenizer


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Trainable parameters by kind (adapters, projector and tags, other) and the model's total."""
    out = {"lora": 0, "projector_and_tags": 0, "other": 0, "total": 0}
    for name, p in model.named_parameters():
        out["total"] += p.numel()
        if p.requires_grad:
            kind = "lora" if "lora_" in name else "projector_and_tags" if is_extra_trainable(name) else "other"
            out[kind] += p.numel()
    return out
