"""Dataclass configs for SPHINX-X and the named registry of presets.

A config is plain data: it says what to build, never holds weights. `SphinxXConfig.from_name("tiny")`
returns a preset (like litgpt's `Config.from_name`); `load`/`save` round-trip YAML or JSON and refuse
unknown keys, naming the offending key and the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The canvas is padded with the CLIP mean colour (SPEC section 2).
CLIP_MEAN_RGB = tuple(round(255 * m) for m in CLIP_MEAN)


class ConfigError(ValueError):
    """A config file or dict is malformed; the message names the key."""


@dataclass
class VisionExpertConfig:
    """One vision expert: a timm backbone seen through square views of `view_size` pixels."""

    name: str
    kind: str  # "convnext" (summary = mean of the grid) or "dinov2" (summary = CLS token)
    timm_model: str  # timm architecture name, e.g. "convnext_xxlarge", "vit_giant_patch14_dinov2"
    view_size: int  # pixels per view side fed to the backbone
    channels: int  # feature channels the backbone outputs
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides (tiny sizes for `nano`)
    frozen: bool = True
    checkpoint: str | None = None  # local weights file (safetensors, or a .bin/.pt read weights_only)
    checkpoint_format: str = "timm"  # "timm" | "open_clip" (keys under visual.trunk.)

    def __post_init__(self) -> None:
        if self.kind not in ("convnext", "dinov2"):
            raise ConfigError(f"vision expert {self.name!r}: kind must be 'convnext' or 'dinov2', got {self.kind!r}")
        if self.checkpoint_format not in ("timm", "open_clip"):
            raise ConfigError(f"vision expert {self.name!r}: checkpoint_format must be 'timm' or 'open_clip'")


@dataclass
class CanvasConfig:
    """How an image becomes a padded square canvas seen as a global view plus a grid of sub-images."""

    grid: int = 2  # sub-images per side (2 -> 2x2, 3 -> 3x3 for the "2K" variant)
    pad_anchor: str = "top-left"  # "top-left" (SPHINX-X) or "center" (SPHINX v1 checkpoints)
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB
    max_pixels: int = 64_000_000  # refuse larger images (decompression bombs)
    skip_padded_cells: bool = True  # False encodes every cell (ablation / SPHINX v1 behaviour)

    def __post_init__(self) -> None:
        if self.pad_anchor not in ("top-left", "center"):
            raise ConfigError(f"canvas.pad_anchor must be 'top-left' or 'center', got {self.pad_anchor!r}")
        if self.grid < 1:
            raise ConfigError(f"canvas.grid must be >= 1, got {self.grid}")


@dataclass
class VisionConfig:
    experts: list[VisionExpertConfig]
    feature_grid: int = 16  # every expert's map is resampled to feature_grid x feature_grid tokens
    canvas: CanvasConfig = field(default_factory=CanvasConfig)

    @property
    def tokens_per_view(self) -> int:
        return 1 + self.feature_grid * self.feature_grid

    @property
    def channels(self) -> int:
        return sum(e.channels for e in self.experts)


@dataclass
class LLMConfig:
    """The language model. `path` (a local transformers directory or native checkpoint) wins over dims."""

    arch: str = "llama"  # "llama" | "mixtral" | "internlm2" (InternLM2 is converted onto Llama)
    vocab_size: int = 32000
    hidden_size: int = 2048
    num_layers: int = 22
    num_heads: int = 32
    num_kv_heads: int = 4
    intermediate_size: int = 5632
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    num_experts: int = 0  # Mixtral: local experts per layer
    num_experts_per_tok: int = 2
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss (public SPHINX-MoE code)
    path: str | None = None

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "mixtral", "internlm2"):
            raise ConfigError(f"llm.arch must be 'llama', 'mixtral' or 'internlm2', got {self.arch!r}")


@dataclass
class ProjectorConfig:
    kind: str = "linear_ln"  # Linear(sum of expert channels -> d) then LayerNorm(d), as the public code


@dataclass
class SphinxXConfig:
    name: str
    vision: VisionConfig
    llm: LLMConfig
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    template: str = "accessory"  # dialogue template name (sphinx_x.data.templates registry)
    tokenizer: str | None = None  # "nano" (shipped BPE), a local tokenizer dir, or None = llm.path

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SphinxXConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        data = copy.deepcopy(PRESETS[name])
        data.update(overrides)
        return cls.from_dict(data)

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SphinxXConfig:
        return _build(cls, data, "")

    def save(self, path: str | Path) -> None:
        path = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False)
            if path.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=2) + "\n"
        )
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> SphinxXConfig:
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e

    @property
    def tokens_per_view(self) -> int:
        return self.vision.tokens_per_view


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _build(tp: Any, value: Any, where: str) -> Any:
    """Build `tp` from plain data, strictly: unknown keys and wrong shapes raise ConfigError."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(value).__name__}")
        hints = get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        unknown = [k for k in value if k not in names]
        if unknown:
            raise ConfigError(
                f"unknown key {where + '.' if where else ''}{unknown[0]}; valid keys: {', '.join(names)}"
            )
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:  # missing required fields
            raise ConfigError(f"{where or 'config'}: {e}") from e
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(value)
    args = [a for a in get_args(tp) if a is not type(None)]
    if value is None:
        return None
    if origin is not None and len(args) == 1 and not get_origin(args[0]):  # Optional[X]
        tp = args[0]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-05" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


# ---- the preset registry -----------------------------------------------------------------------
def _clip_convnext_xxl() -> dict[str, Any]:
    # OpenCLIP convnext_xxlarge (laion2b_s34b_b82k_augreg_soup): its trunk is timm's convnext_xxlarge.
    return dict(
        name="clip_convnext", kind="convnext", timm_model="convnext_xxlarge", view_size=512,
        channels=3072, mean=CLIP_MEAN, std=CLIP_STD, checkpoint_format="open_clip",
    )


def _dinov2_giant() -> dict[str, Any]:
    return dict(
        name="dinov2", kind="dinov2", timm_model="vit_giant_patch14_dinov2", view_size=224,
        channels=1536, mean=IMAGENET_MEAN, std=IMAGENET_STD, timm_kwargs={"img_size": 224},
    )


def _vision(grid: int) -> dict[str, Any]:
    return dict(experts=[_clip_convnext_xxl(), _dinov2_giant()], feature_grid=16, canvas=dict(grid=grid))


_LLAMA2_13B = dict(
    arch="llama", vocab_size=32000, hidden_size=5120, num_layers=40, num_heads=40, num_kv_heads=40,
    intermediate_size=13824, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
)

PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: tiny experts and a tiny Llama that train from scratch on 2 CPU cores.
    # Views are small (ConvNeXt 128 px -> 4x4 map, DINOv2 56 px -> 4x4 patches) so an image is
    # 5 x (17 + 2) = 95 tokens; experts are trainable because no pretrained weights exist offline.
    "nano": dict(
        name="nano",
        vision=dict(
            experts=[
                dict(
                    name="clip_convnext", kind="convnext", timm_model="convnext_atto", view_size=128,
                    channels=128, mean=CLIP_MEAN, std=CLIP_STD, frozen=False,
                    timm_kwargs={"depths": [1, 1, 2, 1], "dims": [16, 32, 64, 128]},
                ),
                dict(
                    name="dinov2", kind="dinov2", timm_model="vit_small_patch14_dinov2", view_size=56,
                    channels=96, mean=IMAGENET_MEAN, std=IMAGENET_STD, frozen=False,
                    timm_kwargs={"img_size": 56, "embed_dim": 96, "depth": 3, "num_heads": 3, "init_values": 1.0},
                ),
            ],
            feature_grid=4,
            canvas=dict(grid=2),
        ),
        llm=dict(
            arch="llama", vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
            intermediate_size=688, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        tokenizer="nano",
    ),
    "tiny": dict(
        name="tiny",
        vision=_vision(2),
        llm=dict(
            arch="llama", vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
            intermediate_size=5632, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
        ),
    ),
    "intern2": dict(
        name="intern2",
        vision=_vision(2),
        llm=dict(
            arch="internlm2", vocab_size=92544, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
            intermediate_size=14336, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
        ),
    ),
    "plus": dict(name="plus", vision=_vision(2), llm=dict(_LLAMA2_13B)),
    "plus-2k": dict(name="plus-2k", vision=_vision(3), llm=dict(_LLAMA2_13B)),
    "moe": dict(
        name="moe",
        vision=_vision(2),
        llm=dict(
            arch="mixtral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
            intermediate_size=14336, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
            num_experts=8, num_experts_per_tok=2, router_aux_loss_coef=0.01,
        ),
    ),
}
