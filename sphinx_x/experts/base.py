"""The vision-expert contract and the registry of expert kinds.

An expert turns each square view into tokens `(V, T, C)`. A kind is one registered subclass of
`VisionExpert` that builds its trunk, encodes normalised pixels into tokens and loads its own weights
files; the mixture (sphinx_x.vision) never special-cases a kind. Grid kinds give `1 + G*G` tokens (a
summary token, then their map resampled to the common `G x G` grid in raster order) and can join the
shared, channel-concatenated block; other kinds (the BLIP-2 Q-Former's queries) form their own block.

`VisionExpert(cfg, feature_grid)` builds the registered kind of `cfg.kind`, so callers never look kinds up.
Frozen experts keep `requires_grad=False`, stay in eval mode whatever mode the parent is put in, and run
under `no_grad`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sphinx_x.canvas import resize_half
from sphinx_x.config import ConfigError, VisionExpertConfig
from sphinx_x.errors import CheckpointError
from sphinx_x.fileio import read_state_dict

_KINDS: dict[str, type[VisionExpert]] = {}


def register_expert(kind: str):
    """Class decorator: make `kind` buildable from a `VisionExpertConfig`."""

    def deco(cls: type[VisionExpert]) -> type[VisionExpert]:
        if kind in _KINDS:
            raise ValueError(f"vision expert kind {kind!r} is registered twice")
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return deco


def registered_kinds() -> list[str]:
    return list(_KINDS)


def expert_class(kind: str, name: str = "?") -> type[VisionExpert]:
    if kind not in _KINDS:
        raise ConfigError(f"vision expert {name!r}: kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}")
    return _KINDS[kind]


def read_expert_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a vision-expert weights file or transformers directory (`sphinx_x.fileio.read_state_dict`)."""
    return read_state_dict(path, "vision expert checkpoint")


def first_keys(keys, n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def resample_grid(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(V, C, h, w) -> (V, C, grid, grid). A coarser map repeats its cells (nearest up-sampling, which
    for integer ratios is the SPHINX 2x2 cell repeat); a finer map is average-pooled adaptively."""
    h, w = fmap.shape[-2:]
    if (h, w) == (grid, grid):
        return fmap
    if h >= grid and w >= grid:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=(grid, grid), mode="nearest")


def summary_and_grid(summary: torch.Tensor, fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(V, C) summary + (V, C, h, w) map -> (V, 1 + grid*grid, C) tokens."""
    cells = resample_grid(fmap, grid).flatten(2).transpose(1, 2)
    return torch.cat([summary[:, None], cells], dim=1)


@lru_cache(maxsize=32)
def _normalize_affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
    """(offset, scale), float32 (1, 3, 1, 1) each on `device`, with (x / 255 - mean) / std = (x - offset) * scale:
    offset = 255 * mean, scale = 1 / (255 * std), computed in float64 (a uint8 colour equal to 255 * mean still
    normalises to exactly zero). Only read, so one pair per statistics and device is kept."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return (255.0 * m).to(device, torch.float32), (1.0 / (255.0 * s)).to(device, torch.float32)


class VisionExpert(nn.Module):
    """One backbone seen through `cfg.view_size` views: uint8 (V, 3, r, r) -> (V, tokens, C)."""

    kind: ClassVar[str] = ""
    checkpoint_formats: ClassVar[tuple[str, ...]] = ()
    grid_tokens: ClassVar[bool] = True  # 1 + G*G tokens per view; False: own token count, own block only

    def __new__(cls, *args, **kwargs):
        if cls is VisionExpert:  # build the registered kind (copy/pickle call __new__ on the subclass)
            cfg = args[0] if args else kwargs["cfg"]
            cls = expert_class(cfg.kind, cfg.name)
        return super().__new__(cls)

    # ---- what a kind provides ------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg: VisionExpertConfig) -> None:
        if cfg.checkpoint_format == "timm" and "timm" not in cls.checkpoint_formats:
            cfg.checkpoint_format = cls.checkpoint_formats[0]  # the dataclass default: this kind reads other files
        if cfg.checkpoint_format not in cls.checkpoint_formats:
            raise ConfigError(
                f"vision expert {cfg.name!r}: checkpoint_format must be one of "
                f"{', '.join(map(repr, cls.checkpoint_formats))} for kind {cls.kind!r}, got {cfg.checkpoint_format!r}"
            )
        if not cls.grid_tokens and not cfg.own_projector:
            raise ConfigError(f"vision expert {cfg.name!r}: kind {cls.kind!r} needs own_projector: true "
                              "(its tokens are not a summary + grid and cannot join the shared block)")
        if cfg.pos_embed != "resampled" and cls.kind != "dinov2":
            raise ConfigError(f"vision expert {cfg.name!r}: pos_embed {cfg.pos_embed!r} is for kind 'dinov2' only")
        size = cls.built_view_size(cfg)
        if size is not None and cfg.view_size != size:
            raise ConfigError(f"vision expert {cfg.name!r}: view_size {cfg.view_size} but {cfg.arch or cls.kind} is "
                              f"built for {size} px (its position embeddings are not interpolated)")

    @classmethod
    def built_view_size(cls, cfg: VisionExpertConfig) -> int | None:
        """The one view size the trunk is built for, when `view_size` must equal it (None: any size)."""
        return None

    @classmethod
    def num_tokens(cls, cfg: VisionExpertConfig, feature_grid: int) -> int:
        return 1 + feature_grid * feature_grid

    def build_trunk(self) -> tuple[nn.Module, int]:
        """The backbone and the channels it outputs."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised float views (V, 3, r, r) in the trunk's dtype -> tokens (V, T, C)."""
        raise NotImplementedError

    def load_checkpoint(self, path: str | Path, fmt: str) -> None:
        raise NotImplementedError

    def shard_units(self) -> list[nn.Module]:
        """The trunk's repeated blocks, each its own FSDP unit (sphinx_x.train.distributed)."""
        return []

    # ---- shared behaviour ----------------------------------------------------------------------
    def __init__(self, cfg: VisionExpertConfig, feature_grid: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_grid = feature_grid
        self.trunk, channels = self.build_trunk()
        if channels != cfg.channels:
            what = cfg.timm_model or cfg.arch or cfg.kind
            raise ConfigError(
                f"vision expert {cfg.name!r}: channels is {cfg.channels} but {what} outputs {channels} features"
            )
        if cfg.frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()
        # Nothing to load into on the meta device (`sphinx-x info` only counts parameters).
        if cfg.checkpoint and not self._on_meta():
            self.load_checkpoint(cfg.checkpoint, cfg.checkpoint_format)

    def _on_meta(self) -> bool:
        return next(self.trunk.parameters()).is_meta

    @property
    def dtype(self) -> torch.dtype:
        return next(self.trunk.parameters()).dtype

    def train(self, mode: bool = True) -> VisionExpert:
        # A frozen encoder must never see train-mode behaviour (dropout, drop-path): the experts stay in eval mode.
        return super().train(mode and not self.cfg.frozen)

    def normalize(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (V, 3, r, r) -> float in the trunk's dtype, normalised with this expert's mean/std.
        Mean/std are not buffers (meta-device construction needs no re-initialisation): `_normalize_affine`
        keeps them per device."""
        if views.dtype != torch.uint8:
            raise TypeError(f"vision expert {self.cfg.name!r}: expected uint8 views, got {views.dtype}")
        r = self.cfg.view_size
        if views.ndim != 4 or tuple(views.shape[1:]) != (3, r, r):
            raise ValueError(
                f"vision expert {self.cfg.name!r}: expected views (V, 3, {r}, {r}), got {tuple(views.shape)}"
            )
        param = next(self.trunk.parameters())
        x = views.to(param.device, non_blocking=True).float()
        # (x / 255 - mean) / std as (x - 255 * mean) / (255 * std): two in-place passes over the float copy
        # instead of three new tensors (about twice as fast; equal to float rounding, within 1e-6)
        offset, scale = _normalize_affine(tuple(self.cfg.mean), tuple(self.cfg.std), x.device)
        return x.sub_(offset).mul_(scale).to(param.dtype)

    def resize_input(self, x: torch.Tensor) -> torch.Tensor:
        """`input_resize`: the official ConvNeXt input, `F.interpolate(x.half(), size)` (nearest) cast back."""
        if not self.cfg.input_resize:
            return x
        return resize_half(x, self.cfg.input_resize, "nearest")

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views -> tokens."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            return self.encode(self.resize_input(self.normalize(views)))

    def forward_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """Views already normalised for this expert (the accessory preprocessing) -> tokens."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            return self.encode(self.resize_input(x).to(self.dtype))


def check_state_keys(path: Path, state: dict, module: nn.Module, what: str, ignore=lambda k: False) -> None:
    """Raise CheckpointError naming `path` unless `state` has exactly `module`'s keys and shapes."""
    expected = module.state_dict()
    unexpected = {k for k in state if k not in expected and not ignore(k)}
    missing = set(expected) - set(state)
    if missing or unexpected:
        parts = [f"missing {len(missing)}: {first_keys(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {first_keys(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"{path}: keys do not match {what} ({'; '.join(p for p in parts if p)})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match {what}: {first_keys(wrong, 3)}")
