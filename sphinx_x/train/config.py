"""Training configuration: dataclasses, strict YAML loading and `--section.key=value` overrides.

A training config has five sections:

    model:     what to train (a model directory to start from, or a preset / model config file to
               initialise randomly, with optional overrides such as local backbone weights)
    data:      the data mix (README "Data") and how samples are encoded
    optim:     the optimizer (AdamW, or Muon + AdamW) and the schedule (README "Training": betas 0.9/0.95,
               no weight decay, warm-up + cosine)
    train:     steps, batch sizes, precision, activation checkpointing, compile, seeds
    output:    output directory, logging, checkpoints and resume

Unknown keys anywhere are errors that name the key and list the valid ones. Relative paths are
taken relative to the working directory (like the command line's own arguments).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sphinx_x.config import ConfigError, _build, to_plain
from sphinx_x.losses import LOSS_REDUCTIONS

OPTIMIZERS = ("adamw", "muon")  # optim.name (sphinx_x/train/optim.py)
MUON_MATRICES = ("hidden", "attention")  # optim.muon_matrices

PRECISIONS = ("fp32", "bf16")
LORA_QUANTIZE = ("nf4",)


@dataclass
class ModelSection:
    """`model:` what to train: a model directory, or a preset / config file initialised randomly."""

    # A model directory (`sphinx-x init` output, a checkpoint, a released model). Wins over `preset`.
    path: str | None = None
    # A preset name or a model config file (.yaml/.json), randomly initialised with `train.seed`.
    # Local backbone weights come in through `overrides` (e.g. {llm: {path: ...}}).
    preset: str | None = "nano"
    # Deep-merged into the preset's config dict before building (ignored with `path`).
    overrides: dict[str, Any] = field(default_factory=dict)
    # True/False forces every vision expert frozen/trainable; None keeps each expert's own setting.
    frozen_experts: bool | None = None


@dataclass
class DataSection:
    """`data:` the data mix and how its samples are encoded."""

    mix: str | None = None  # data mix YAML (META: [{path, type, root?, ratio?}])
    max_len: int = 2048  # tokens per sample after truncation (must fit one full image)
    lenient: bool = False  # skip and count bad samples instead of stopping on the first
    num_workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    template: str | None = None  # dialogue template; None = the model config's template
    cache_dir: str | None = None  # where sample-length estimates are cached (None: not cached)


@dataclass
class OptimSection:
    """`optim:` the optimizer (AdamW, or Muon + AdamW), the learning rates and the warm-up + cosine schedule,
    the loss reduction."""

    # 2e-5 is the SPHINX-X recipe for pretrained backbones (5e-6 for the MoE member). Training the
    # `nano` preset from scratch needs a much larger rate (its config uses 1e-3).
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_ratio: float = 0.01  # linear warm-up over this fraction of the optimizer steps
    grad_clip: float = 8.0  # max global gradient norm (0 disables clipping)
    # LR multiplier for trainable vision-expert weights (projector and LLM keep `lr`). Frozen experts
    # (the SPHINX-X recipe) have no such weights; a from-scratch expert may learn faster with more.
    vision_lr_scale: float = 1.0
    # LR multiplier for the LLM's weights (projector, skip token and tags keep `lr`). Below 1 when the LLM
    # starts pretrained and the projector from random: the projector learns at `lr` while the LLM moves less
    # far from what it knows (nano's stand-in LLM; SPHINX-X trains both at one rate).
    llm_lr_scale: float = 1.0
    # "token": the loss is the mean over the global batch's supervised tokens (SPHINX-X, LLaVA); "turn":
    # the mean over its answer turns, each turn's tokens averaged first, so a one-word answer weighs as
    # much as a 40-token box list (sphinx_x/losses.py).
    loss_reduction: str = "token"
    # The fused AdamW kernel (one pass over all tensors; CPU and CUDA). False: torch's default implementation.
    fused: bool = True
    # The optimizer: "adamw" (the SPHINX-X recipe) or "muon": Muon for the LLM's hidden matrices, AdamW for the
    # rest, at the same rates (sphinx_x/train/optim.py). Muon lets nano's LLM find an object by what the question
    # names.
    name: str = "adamw"
    # optim.name muon: which LLM matrices take Muon: "hidden" (attention and MLP weights of its layers) or
    # "attention" (q/k/v/o only; the MLP weights keep AdamW). On CPU the Newton-Schulz iteration costs 17.7 GFLOP
    # per nano step for "hidden" and 4.8 for "attention" (the MLP matrices are 73% of it).
    muon_matrices: str = "hidden"
    # optim.name muon: LR multiplier for the Muon matrices only (AdamW's parameters keep their rates), and the
    # Newton-Schulz iterations per Muon step (torch's 5; on CPU each costs a fifth of the step's orthogonalisation).
    muon_lr_scale: float = 1.0
    muon_ns_steps: int = 5
    # The share of the steps after the warm-up over which the cosine decays to zero; below 1 the rate holds at its
    # peak until then (warm-up, stable, decay: the schedule Muon runs usually take). 1: SPHINX-X's cosine.
    decay_ratio: float = 1.0


@dataclass
class LoraSection:
    """LoRA adapters on the LLM's linear layers (sphinx_x/train/lora.py, docs/lora.md); the LLM's own weights,
    the vision experts and (unless `train_projector`) the projector stay frozen."""

    r: int = 8  # adapter rank
    alpha: float = 16.0  # the adapter's output is scaled by alpha / r
    dropout: float = 0.05  # dropout on the adapter's input
    # LLM modules that get an adapter: a module name or the end of one (peft's matching), e.g. q_proj.
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    # Also train the projector(s) and the image tags (start, end, skip token) fully, beside the adapters.
    train_projector: bool = False
    # "nf4": QLoRA, the LLM's frozen decoder linears in 4-bit NF4 through bitsandbytes (CUDA only).
    quantize: str | None = None


@dataclass
class TrainSection:
    """`train:` steps, batch sizes, precision, device, memory savers, seeds and an optional LoRA."""

    max_steps: int | None = None  # optimizer steps; None = `epochs` passes over the data
    # Wall-clock budget of the training loop (minutes, setup excluded): training stops cleanly and saves
    # once it is spent, and the schedule's length follows the measured step rate (see Trainer._follow_budget),
    # so warm-up and cosine span the budget. max_steps / epochs still cap the steps.
    max_minutes: float | None = None
    epochs: float = 1.0
    global_batch: int = 256  # samples per optimizer step, across all ranks
    micro_batch: int = 4  # samples per forward/backward on one rank
    precision: str = "bf16"  # "fp32" | "bf16" (autocast on CPU; FSDP mixed precision on GPU)
    activation_checkpointing: bool = False  # recompute each decoder layer in the backward pass
    compile: bool = False  # torch.compile every decoder layer
    # With precision bf16, frozen vision-expert trunks are stored in bf16 (half the memory; their matmuls
    # and convolutions ran in bf16 under autocast / FSDP mixed precision anyway). Checkpoints keep them bf16.
    frozen_experts_bf16: bool = True
    seed: int = 0  # model init and data order
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact CPU resume tests)
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    # CPU threads per process; None = torch's default (one process) or cores / local ranks (torchrun).
    # On a busy machine 1 thread can be much faster than several that wait on each other.
    cpu_threads: int | None = None
    peak_flops: float | None = None  # hardware peak FLOP/s for MFU; None = measure with a matmul probe
    lora: LoraSection | None = None  # None: full fine-tuning; a mapping ({} for the defaults): LoRA / QLoRA


@dataclass
class OutputSection:
    """`output:` the output directory, logging, checkpoints and resume."""

    dir: str = "runs/train"
    log_every: int = 1  # optimizer steps between metrics.jsonl / TensorBoard records
    save_every: int = 500  # optimizer steps between checkpoints (0 = only the final one)
    keep_last: int = 3  # checkpoints kept under OUT/ckpt (older ones deleted)
    resume: bool | str = False  # True: resume from the latest checkpoint (error if none); "auto": if any
    tensorboard: bool = True
    progress: bool = True  # tqdm progress bar (rank 0)


@dataclass
class TrainConfig:
    """A training run's configuration: the five sections of this module's docstring. `load_train_config`
    reads one from YAML with `--section.key=value` overrides; `from_dict` builds and validates."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    output: OutputSection = field(default_factory=OutputSection)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready data (what a checkpoint records as the run's config)."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from plain data and `validate`; unknown keys and bad values raise ConfigError."""
        cfg = _build(cls, data, "")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise ConfigError naming the first field with an invalid value or combination."""
        t = self.train
        if t.precision == "fp16":
            raise ConfigError("train.precision: fp16 is not supported (it is never used on CPU and needs loss "
                              "scaling on GPU); use bf16 or fp32")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
        if t.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be 'auto', 'cpu' or 'cuda', got {t.device!r}")
        for key in ("global_batch", "micro_batch"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(t, key)}")
        if t.max_steps is not None and t.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1, got {t.max_steps}")
        if t.max_minutes is not None and not t.max_minutes > 0:
            raise ConfigError(f"train.max_minutes must be > 0, got {t.max_minutes}")
        if self.optim.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {self.optim.name!r}")
        if self.optim.muon_matrices not in MUON_MATRICES:
            raise ConfigError(f"optim.muon_matrices must be one of {', '.join(MUON_MATRICES)}, "
                              f"got {self.optim.muon_matrices!r}")
        if self.optim.loss_reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"optim.loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, "
                              f"got {self.optim.loss_reduction!r}")
        if not 0 <= self.optim.warmup_ratio < 1:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.optim.warmup_ratio}")
        if not 0 < self.optim.decay_ratio <= 1:
            raise ConfigError(f"optim.decay_ratio must be in (0, 1], got {self.optim.decay_ratio}")
        if self.optim.muon_ns_steps < 1:
            raise ConfigError(f"optim.muon_ns_steps must be >= 1, got {self.optim.muon_ns_steps}")
        for name in ("vision_lr_scale", "llm_lr_scale", "muon_lr_scale"):
            if not getattr(self.optim, name) > 0:
                raise ConfigError(f"optim.{name} must be > 0, got {getattr(self.optim, name)}")
        if len(self.optim.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {self.optim.betas}")
        if self.output.resume not in (True, False, "auto"):
            raise ConfigError(f"output.resume must be true, false or 'auto', got {self.output.resume!r}")
        if self.output.keep_last < 1:
            raise ConfigError(f"output.keep_last must be >= 1, got {self.output.keep_last}")
        if self.model.path is None and self.model.preset is None:
            raise ConfigError("model: set model.path (a model directory) or model.preset (a preset name)")
        if t.lora is not None:
            _validate_lora(self)

    def check_world(self, world_size: int) -> int:
        """Gradient-accumulation steps for `world_size` ranks; a clear error when they do not divide."""
        t = self.train
        per_step = t.micro_batch * world_size
        if t.global_batch % per_step:
            raise ConfigError(
                f"train.global_batch ({t.global_batch}) must be divisible by train.micro_batch ({t.micro_batch}) "
                f"x world size ({world_size}) = {per_step}"
            )
        return t.global_batch // per_step


def _validate_lora(cfg: TrainConfig) -> None:
    lora = cfg.train.lora
    if isinstance(lora.r, bool) or lora.r < 1:
        raise ConfigError(f"train.lora.r must be an integer >= 1, got {lora.r!r}")
    if not lora.alpha > 0:
        raise ConfigError(f"train.lora.alpha must be > 0, got {lora.alpha}")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"train.lora.dropout must be in [0, 1), got {lora.dropout}")
    targets = lora.target_modules
    if not targets or not all(isinstance(x, str) and x for x in targets):
        raise ConfigError(f"train.lora.target_modules must be a non-empty list of module names, got {targets!r}")
    if lora.quantize is not None and lora.quantize not in LORA_QUANTIZE:
        raise ConfigError(f"train.lora.quantize must be null or one of {', '.join(LORA_QUANTIZE)}, "
                          f"got {lora.quantize!r}")
    if lora.quantize is not None and cfg.train.device == "cpu":
        raise ConfigError(f"train.lora.quantize {lora.quantize}: QLoRA needs a CUDA GPU and bitsandbytes "
                          "(train.device is cpu)")
    if cfg.model.frozen_experts is False:
        raise ConfigError("model.frozen_experts: false contradicts train.lora, which trains only the adapters "
                          "(and the projector with train.lora.train_projector)")


# ---- loading and overrides -----------------------------------------------------------------------
def parse_override(text: str) -> tuple[list[str], Any]:
    """`--train.micro_batch=8` (or `train.micro_batch=8`) -> (["train", "micro_batch"], 8).

    The value is read as YAML, so numbers, booleans, null and lists work (`--optim.betas=[0.9,0.95]`)."""
    body = text[2:] if text.startswith("--") else text
    if "=" not in body:
        raise ConfigError(f"override {text!r} must look like --section.key=value")
    key, raw = body.split("=", 1)
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {text!r}: the key must be section.key (e.g. --train.max_steps=10)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from e
    return parts, value


def apply_override(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set data[parts[0]][parts[1]]... = value, refusing unknown section / key names (free-form dict
    fields such as `model.overrides` accept any key below them)."""
    node: Any = TrainConfig
    target = data
    for depth, name in enumerate(parts):
        where = ".".join(parts[: depth + 1])
        if node is not None:
            names = [f.name for f in dataclasses.fields(node)]
            if name not in names:
                section = ".".join(parts[:depth]) or "the config"
                raise ConfigError(f"unknown config key {where}; valid keys in {section}: {', '.join(names)}")
            ftype = {f.name: f for f in dataclasses.fields(node)}[name].type
            node = _SECTION_TYPES.get(ftype) if isinstance(ftype, str) else None
        if depth == len(parts) - 1:
            target[name] = value
        else:
            child = target.setdefault(name, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {where}: {where} is not a mapping")
            target = child


_SECTION_TYPES = {
    "ModelSection": ModelSection,
    "DataSection": DataSection,
    "OptimSection": OptimSection,
    "TrainSection": TrainSection,
    "LoraSection | None": LoraSection,
    "OutputSection": OutputSection,
}


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a training YAML (or start from defaults with None) and apply `--section.key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: training config not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        data = copy.deepcopy(loaded)
    for text in overrides:
        parts, value = parse_override(text)
        apply_override(data, parts, value)
    try:
        return TrainConfig.from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from e
