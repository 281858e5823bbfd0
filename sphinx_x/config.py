"""Dataclass configs for SPHINX-X and the named registry of presets.

A config is plain data: it says what to build, never holds weights. `SphinxXConfig.from_name("tiny")`
returns a preset (like litgpt's `Config.from_name`); `load`/`save` round-trip YAML or JSON and refuse
unknown keys, naming the offending key and the valid ones.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The canvas is padded with the CLIP mean colour (README "How an image becomes tokens").
CLIP_MEAN_RGB = tuple(round(255 * m) for m in CLIP_MEAN)


class ConfigError(ValueError):
    """A config file or dict is malformed; the message names the key."""


@dataclass
class VisionExpertConfig:
    """One vision expert: a registered `kind` (sphinx_x.experts) seen through square views of `view_size` pixels.

    Kinds: "convnext" (timm; summary = mean of the grid), "dinov2" (timm ViT; summary = CLS token),
    "clip_vit" (an open_clip ViT; summary = CLS token) and "blip2_qformer" (transformers BLIP-2 vision
    model + Q-Former; its query tokens form their own block, `own_projector`)."""

    name: str
    kind: str
    view_size: int  # pixels per view side fed to the backbone
    channels: int  # feature channels the backbone outputs
    timm_model: str = ""  # timm kinds: architecture name, e.g. "convnext_xxlarge", "vit_giant_patch14_dinov2"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # overrides (tiny sizes for `nano`)
    arch: str = ""  # clip_vit: open_clip model config name, e.g. "ViT-L-14"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # clip_vit / blip2_qformer dims (see the kind)
    frozen: bool = True
    checkpoint: str | None = None  # local weights file (safetensors, or a .bin/.pt read weights_only) or HF dir
    checkpoint_format: str = "timm"  # "timm" | "open_clip" (keys under visual.[trunk.]) | "hf" (transformers)
    own_projector: bool = False  # True: own Linear+LayerNorm and own token block, placed before the shared block
    # "resampled": timm resizes the position table once to view_size (at load time). "runtime_bicubic":
    # the table keeps its stored size (timm_kwargs img_size) and is interpolated at every forward as the
    # official DINOv2 code does (bicubic, scale factor (n + 0.1) / stored side, no antialias).
    pos_embed: str = "resampled"
    # Resize each normalised view to this many pixels with nearest interpolation in float16 before the
    # trunk (the official ConvNeXt input; 0 = no resize). canvas.preprocess "accessory" only: the formula
    # that re-normalises the CLIP-normalised canvas to this expert's mean/std ("unnormalize" or "affine").
    input_resize: int = 0
    renorm: str = "unnormalize"

    def __post_init__(self) -> None:
        from sphinx_x.experts import expert_class  # lazy: the registry imports this module

        if self.pos_embed not in ("resampled", "runtime_bicubic"):
            raise ConfigError(f"vision expert {self.name!r}: pos_embed must be 'resampled' or 'runtime_bicubic', "
                              f"got {self.pos_embed!r}")
        if self.renorm not in ("unnormalize", "affine"):
            raise ConfigError(
                f"vision expert {self.name!r}: renorm must be 'unnormalize' or 'affine', got {self.renorm!r}"
            )
        if self.input_resize < 0:
            raise ConfigError(f"vision expert {self.name!r}: input_resize must be >= 0, got {self.input_resize}")
        expert_class(self.kind, self.name).validate_config(self)

    def tokens(self, feature_grid: int) -> int:
        """Tokens this expert gives per view."""
        from sphinx_x.experts import expert_class

        return expert_class(self.kind, self.name).num_tokens(self, feature_grid)


@dataclass
class CanvasConfig:
    """How an image becomes a padded square canvas seen as a global view plus a grid of sub-images."""

    grid: int = 2  # sub-images per side (2 -> 2x2, 3 -> 3x3 for the "2K" variant; 0 -> the global view only)
    pad_anchor: str = "top-left"  # "top-left" (SPHINX-X) or "center" (SPHINX v1 checkpoints)
    pad_color: tuple[int, int, int] = CLIP_MEAN_RGB
    max_pixels: int = 64_000_000  # refuse larger images (decompression bombs)
    skip_padded_cells: bool = True  # False encodes every cell (ablation / SPHINX v1 behaviour)
    # "sphinx-x": resize, paste, cut uint8 views per expert on the CPU. "accessory": the released SPHINX
    # models' transform: pad to a centred square at the original resolution, resize to `size` (PIL
    # bicubic), normalise once with `mean`/`std`; each expert's views are then cut on the device from that
    # tensor with float16 bicubic interpolation (no antialias), exactly as the official code does.
    preprocess: str = "sphinx-x"
    size: int = 0  # accessory: the canvas side in pixels (the official image_size)
    mean: tuple[float, float, float] = CLIP_MEAN  # accessory: the canvas normalisation
    std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.pad_anchor not in ("top-left", "center"):
            raise ConfigError(f"canvas.pad_anchor must be 'top-left' or 'center', got {self.pad_anchor!r}")
        if self.grid < 0:
            raise ConfigError(f"canvas.grid must be >= 0, got {self.grid}")
        if self.preprocess not in ("sphinx-x", "accessory"):
            raise ConfigError(f"canvas.preprocess must be 'sphinx-x' or 'accessory', got {self.preprocess!r}")
        if self.preprocess == "accessory":
            if self.size <= 0:
                raise ConfigError("canvas.size must be > 0 (the canvas side in pixels) with preprocess 'accessory'")
            if self.pad_anchor != "center" or self.skip_padded_cells:
                raise ConfigError(
                    "canvas.preprocess 'accessory' pads to a centred square and encodes every cell: "
                    "set pad_anchor 'center' and skip_padded_cells false"
                )


@dataclass
class VisionConfig:
    """The visual side: the experts (in order), the token grid each view is resampled to, the canvas."""

    experts: list[VisionExpertConfig]
    feature_grid: int = 16  # every expert's map is resampled to feature_grid x feature_grid tokens
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    # Initial weight of the projectors' LayerNorm. 1 (PyTorch's default) puts image tokens at norm ~sqrt(d)
    # (16 for nano), 50x the text embeddings; nano uses 0.02 so they start at the text's scale, which let its
    # from-scratch LLM learn to look objects up by the question (docs/experiments.md, 2026-12-02).
    projector_norm_init: float = 1.0

    def __post_init__(self) -> None:
        if self.experts and all(e.own_projector for e in self.experts):
            raise ConfigError("vision.experts: at least one expert must join the shared block (own_projector false)")

    @property
    def tokens_per_view(self) -> int:
        """Own blocks (in expert order) then the shared block: a summary token and the G x G grid."""
        own = sum(e.tokens(self.feature_grid) for e in self.experts if e.own_projector)
        return own + 1 + self.feature_grid * self.feature_grid

    @property
    def channels(self) -> int:
        """Input width of the shared projector: the channels of the experts concatenated per token."""
        return sum(e.channels for e in self.experts if not e.own_projector)


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
class SphinxXConfig:
    """Everything that defines a SPHINX-X model's architecture: the vision experts and canvas (`vision`), the
    LLM (`llm`), the dialogue template and the tokenizer. Strict: unknown keys and wrong types raise
    ConfigError naming the key.

    Get one from a preset (`SphinxXConfig.from_name("nano")`, see `PRESETS`), a file (`load`), or plain data
    (`from_dict`); a model directory stores it as config.json."""

    name: str
    vision: VisionConfig
    llm: LLMConfig
    template: str = "accessory"  # dialogue template name (sphinx_x.data.templates registry)
    tokenizer: str | None = None  # "nano" (shipped BPE), a local tokenizer dir, or None = llm.path
    # Local weights of the connector (the projector and the image tags; sphinx_x/connector.py), e.g. a stand-in
    # set's or an earlier run's, as LLaVA's second stage starts from the first stage's projector. None: random.
    connector: str | None = None

    # ---- presets -------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> SphinxXConfig:
        """The preset `name` (a key of `PRESETS`), with top-level sections replaced by `overrides`."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        data = copy.deepcopy(PRESETS[name])
        data.update(overrides)
        return cls.from_dict(data)

    @classmethod
    def resolve(cls, name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> SphinxXConfig:
        """The config a user names: a preset (checked first; write `./nano` for a path of that name), a model
        directory (its config.json), or a .yaml/.json config file; then `overrides` merged in (`with_overrides`).
        Raises ConfigError for an unknown name, FileNotFoundError for a directory without config.json."""
        name = str(name_or_path)
        path = Path(name_or_path)
        if name in PRESETS:
            config = cls.from_name(name)
        elif path.is_dir():
            from sphinx_x.model_io import read_config  # the model-directory format lives there

            config = read_config(path)
        elif path.is_file():
            config = cls.load(path)
        else:
            raise ConfigError(f"unknown preset {name!r} and no model directory or config file of that name; "
                              f"valid presets: {', '.join(PRESETS)}")
        return config.with_overrides(overrides) if overrides else config

    def with_overrides(self, overrides: dict[str, Any]) -> SphinxXConfig:
        """A copy with `overrides` (nested plain data, e.g. `{"vision": {"canvas": {"grid": 3}}}`) merged in by
        `deep_merge`; checked as strictly as a config file."""
        return type(self).from_dict(deep_merge(self.to_dict(), overrides))

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-ready data that `from_dict` turns back into an equal config."""
        return to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SphinxXConfig:
        """Build from plain data (as `to_dict` writes it); unknown keys and wrong types raise ConfigError."""
        return _build(cls, _without_legacy_projector(data), "")

    def save(self, path: str | Path) -> None:
        """Write the config atomically as YAML (.yaml / .yml) or JSON (any other suffix)."""
        path = Path(path)
        text = (
            yaml.safe_dump(self.to_dict(), sort_keys=False)
            if path.suffix in (".yaml", ".yml")
            else json.dumps(self.to_dict(), indent=2) + "\n"
        )
        from sphinx_x.fileio import write_atomic  # torch-importing module: loaded only when saving

        write_atomic(path, text)

    @classmethod
    def load(cls, path: str | Path) -> SphinxXConfig:
        """Read a config written by `save` (JSON for .json, else YAML); errors name the file."""
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
        """Visual tokens one view (the global image or a sub-image) contributes, tags not counted."""
        return self.vision.tokens_per_view


def to_plain(obj: Any) -> Any:
    """`dataclasses.asdict` output as YAML/JSON-ready data: tuples become lists, recursively."""
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in recursively: mappings merge; a list of mappings as long as the base's
    list merges item by item (so `vision: {experts: [{checkpoint: a}, {checkpoint: b}]}` sets both
    experts' weights); everything else replaces."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        old = out.get(k)
        if isinstance(v, dict) and isinstance(old, dict):
            out[k] = deep_merge(old, v)
        elif (isinstance(v, list) and isinstance(old, list) and len(v) == len(old)
              and all(isinstance(x, dict) for x in v + old)):
            out[k] = [deep_merge(a, b) for a, b in zip(old, v)]
        else:
            out[k] = copy.deepcopy(v)
    return out


# Config files written before the projector became fixed carry `projector: {kind: linear_ln}` (every model
# directory's config.json did). The key never changed what was built: the projector is always Linear then
# LayerNorm (sphinx_x/vision.py), the layout the released checkpoints' weights have (sphinx_x/accessory_keys.py).
LEGACY_PROJECTOR = {"kind": "linear_ln"}


def _without_legacy_projector(data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict) or "projector" not in data:
        return data
    if data["projector"] not in ({}, LEGACY_PROJECTOR):
        raise ConfigError(f"projector: {data['projector']!r} is not supported; the projector is always Linear + "
                          "LayerNorm (projector.kind 'linear_ln'): remove the key")
    warnings.warn("config key 'projector' is deprecated and ignored (the projector is always Linear + "
                  "LayerNorm); saving the config again drops it", DeprecationWarning, stacklevel=3)
    return {k: v for k, v in data.items() if k != "projector"}


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
        if dataclasses.is_dataclass(tp):  # an optional section, e.g. train.lora
            return _build(tp, value, where)
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


# ---- the released SPHINX models (LLaMA2-Accessory) ----------------------------------------------
# Their transform pads with int(255 * mean) (truncated), not rounded.
ACCESSORY_PAD_RGB = tuple(int(255 * m) for m in CLIP_MEAN)


def _accessory_vision(size: int, grid: int, four_experts: bool, convnext_view: int, convnext_resize: int,
                      renorm: str) -> dict[str, Any]:
    """The official vision side: experts in the official concat order, canvas as its transform makes it."""
    experts = []
    if four_experts:
        experts += [
            dict(  # BLIP-2 (blip2-opt-2.7b) vision model + Q-Former: 32 query tokens, own projector
                name="qformer", kind="blip2_qformer", view_size=224, channels=768, own_projector=True,
                checkpoint_format="hf",
                arch_kwargs={
                    "vision_config": dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                                          num_attention_heads=16, image_size=224, patch_size=14,
                                          layer_norm_eps=1e-6, qkv_bias=True),
                    "qformer_config": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                           num_attention_heads=12, cross_attention_frequency=2,
                                           encoder_hidden_size=1408, layer_norm_eps=1e-12),
                    "num_query_tokens": 32,
                },
            ),
            dict(  # OpenAI CLIP ViT-L/14, built as open_clip builds it with pretrained=None (GELU)
                name="clip", kind="clip_vit", arch="ViT-L-14", view_size=224, channels=1024,
                checkpoint_format="open_clip", arch_kwargs={"quick_gelu": False},
            ),
        ]
    experts += [
        dict(_clip_convnext_xxl(), view_size=convnext_view, input_resize=convnext_resize),
        dict(_dinov2_giant(), timm_kwargs={"img_size": 518}, pos_embed="runtime_bicubic", renorm=renorm),
    ]
    canvas = dict(preprocess="accessory", size=size, grid=grid, pad_anchor="center", skip_padded_cells=False,
                  pad_color=ACCESSORY_PAD_RGB)
    return dict(experts=experts, feature_grid=16, canvas=canvas)


# llama_type -> vision side (image_size; views: 0 = one view, 2 = global + 2x2)
_ACCESSORY_VISION = {
    "llama_ens": lambda: _accessory_vision(224, 0, True, 224, 256, "unnormalize"),
    "llama_ens5": lambda: _accessory_vision(448, 2, True, 224, 256, "unnormalize"),
    "llama_ens_light": lambda: _accessory_vision(512, 0, False, 512, 512, "affine"),
    "llama_ens5_light": lambda: _accessory_vision(1024, 2, False, 512, 0, "affine"),
    "mixtral_sparse_ens": lambda: _accessory_vision(512, 0, True, 512, 512, "unnormalize"),
    "mixtral_sparse_ens5": lambda: _accessory_vision(1024, 2, True, 512, 0, "unnormalize"),
}
# The official inference context (MetaModel.from_pretrained max_seq_len) is 4096 for every release.
_TINYLLAMA = dict(
    arch="llama", vocab_size=32000, hidden_size=2048, num_layers=22, num_heads=32, num_kv_heads=4,
    intermediate_size=5632, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5,
)
_MIXTRAL_8X7B = dict(
    arch="mixtral", vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
    intermediate_size=14336, max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-5,
    num_experts=8, num_experts_per_tok=2,
)


def _released(name: str, llama_type: str, llm: dict[str, Any]) -> dict[str, Any]:
    return dict(name=name, vision=_ACCESSORY_VISION[llama_type](), llm=dict(llm), template="accessory")


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
    # The released LLaMA2-Accessory SPHINX models (sphinx-x convert accessory); all frozen experts.
    "sphinx": _released("sphinx", "llama_ens", _LLAMA2_13B),
    "sphinx-1k": _released("sphinx-1k", "llama_ens5", _LLAMA2_13B),
    "sphinx-v2-1k": _released("sphinx-v2-1k", "llama_ens5", _LLAMA2_13B),
    "sphinx-tiny": _released("sphinx-tiny", "llama_ens_light", _TINYLLAMA),
    "sphinx-tiny-1k": _released("sphinx-tiny-1k", "llama_ens5_light", _TINYLLAMA),
    # load-balancing weight: the default of each official model file (0.1 / 0.01)
    "sphinx-moe": _released("sphinx-moe", "mixtral_sparse_ens", dict(_MIXTRAL_8X7B, router_aux_loss_coef=0.1)),
    "sphinx-moe-1k": _released("sphinx-moe-1k", "mixtral_sparse_ens5", dict(_MIXTRAL_8X7B, router_aux_loss_coef=0.01)),
}
