"""Mixture of visual experts (SPEC sections 1-2): timm backbones, per-view tokens, channel concat, projector.

Every expert turns each square view into `1 + G*G` tokens: a summary token, then its feature map
resampled to the common `G x G` grid in raster order. ConvNeXt (the OpenCLIP `convnext_xxlarge` trunk is
a timm ConvNeXt) summarises with the mean of its grid tokens ("gap as cls" in the public SPHINX code);
DINOv2 uses its CLS token after the final norm. The experts' tokens are concatenated along channels and
projected to the LLM width by `Linear + LayerNorm`.

Frozen experts keep `requires_grad=False`, stay in eval mode whatever mode the parent is put in, and run
under `no_grad`; trainable experts (the `nano` preset, which has no pretrained weights offline) train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import convnext as timm_convnext
from timm.models import vision_transformer as timm_vit
from torch import nn

from sphinx_x.canvas import ImageBatch
from sphinx_x.config import ConfigError, VisionConfig, VisionExpertConfig


class CheckpointError(ValueError):
    """A vision-expert weights file cannot be used; the message names the file and the offending keys."""


def _first(keys: list[str] | set[str], n: int = 5) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ---- resampling --------------------------------------------------------------------------------
def resample_grid(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """(V, C, h, w) -> (V, C, grid, grid). A coarser map repeats its cells (nearest up-sampling, which
    for integer ratios is the SPHINX 2x2 cell repeat); a finer map is average-pooled adaptively."""
    h, w = fmap.shape[-2:]
    if (h, w) == (grid, grid):
        return fmap
    if h >= grid and w >= grid:
        return F.adaptive_avg_pool2d(fmap, grid)
    return F.interpolate(fmap, size=(grid, grid), mode="nearest")


# ---- one expert --------------------------------------------------------------------------------
class VisionExpert(nn.Module):
    """One timm backbone seen through `cfg.view_size` views: uint8 (V, 3, r, r) -> (V, 1 + G*G, C)."""

    def __init__(self, cfg: VisionExpertConfig, feature_grid: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_grid = feature_grid
        kwargs = dict(cfg.timm_kwargs)
        if cfg.kind == "dinov2":
            # timm's DINOv2 ViTs default to 518 px; the view size decides the patch grid.
            kwargs.setdefault("img_size", cfg.view_size)
        self.trunk = timm.create_model(cfg.timm_model, pretrained=False, num_classes=0, **kwargs)
        if self.trunk.num_features != cfg.channels:
            raise ConfigError(
                f"vision expert {cfg.name!r}: channels is {cfg.channels} but {cfg.timm_model} "
                f"outputs {self.trunk.num_features} features"
            )
        if cfg.kind == "dinov2":
            img_size = tuple(self.trunk.patch_embed.img_size)
            if img_size != (cfg.view_size, cfg.view_size):
                raise ConfigError(
                    f"vision expert {cfg.name!r}: view_size {cfg.view_size} but the ViT is built for "
                    f"{img_size[0]}x{img_size[1]} (timm_kwargs img_size)"
                )
        if cfg.frozen:
            self.trunk.requires_grad_(False)
            self.trunk.eval()
        # Nothing to load into on the meta device (`sphinx-x info` only counts parameters).
        if cfg.checkpoint and not self._on_meta():
            load_expert_checkpoint(self, cfg.checkpoint, cfg.checkpoint_format)

    def _on_meta(self) -> bool:
        return next(self.trunk.parameters()).is_meta

    def train(self, mode: bool = True) -> VisionExpert:
        # A frozen encoder must never see train-mode behaviour (dropout, drop-path), SPEC section 5.
        return super().train(mode and not self.cfg.frozen)

    def normalize(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (V, 3, r, r) -> float in the trunk's dtype, normalised with this expert's mean/std.
        Mean/std are built per call (not buffers) so meta-device construction needs no re-initialisation."""
        if views.dtype != torch.uint8:
            raise TypeError(f"vision expert {self.cfg.name!r}: expected uint8 views, got {views.dtype}")
        r = self.cfg.view_size
        if views.ndim != 4 or tuple(views.shape[1:]) != (3, r, r):
            raise ValueError(
                f"vision expert {self.cfg.name!r}: expected views (V, 3, {r}, {r}), got {tuple(views.shape)}"
            )
        param = next(self.trunk.parameters())
        x = views.to(param.device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).to(param.dtype)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            x = self.normalize(views)
            if self.cfg.kind == "convnext":
                return self._convnext_tokens(x)
            return self._dinov2_tokens(x)

    def _convnext_tokens(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.trunk.forward_features(x)  # (V, C, h, w)
        # The public SPHINX code runs the whole OpenCLIP trunk with the head's pooling removed, so the
        # head's channel LayerNorm is applied at every location; do the same.
        head_norm = getattr(self.trunk.head, "norm", None)
        if head_norm is not None:
            fmap = head_norm(fmap)
        grid = resample_grid(fmap, self.feature_grid).flatten(2).transpose(1, 2)  # (V, G*G, C) raster
        return torch.cat([grid.mean(dim=1, keepdim=True), grid], dim=1)

    def _dinov2_tokens(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)  # (V, prefix + h*w, C), after the final norm
        prefix = self.trunk.num_prefix_tokens  # CLS (+ register tokens, dropped)
        h, w = self.trunk.patch_embed.grid_size
        patches = tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        grid = resample_grid(patches, self.feature_grid).flatten(2).transpose(1, 2)
        return torch.cat([tokens[:, :1], grid], dim=1)


# ---- weights -----------------------------------------------------------------------------------
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from `.safetensors` or a `.bin/.pt/.pth` read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: vision expert checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    if path.suffix not in (".bin", ".pt", ".pth"):
        raise CheckpointError(f"{path}: unsupported checkpoint suffix {path.suffix!r} (.safetensors, .bin, .pt, .pth)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_expert_checkpoint(expert: VisionExpert, path: str | Path, fmt: str = "timm") -> None:
    """Load a local weights file into `expert.trunk`.

    `open_clip`: an OpenCLIP checkpoint; the trunk lives under `visual.trunk.`, everything else (the
    OpenCLIP projection head, logit scale, text tower) is ignored. `timm`: a timm state dict. Both then
    pass through timm's own checkpoint filter of the family, which converts original DINOv2/ConvNeXt
    layouts and resamples position embeddings (`resample_abs_pos_embed`) to the configured image size.
    Classifier weights are ignored (the trunk has no classifier); any other missing or unexpected key
    is an error naming the file and the keys."""
    path = Path(path)
    state = read_state_dict(path)
    trunk = expert.trunk
    if fmt == "open_clip":
        prefix = "visual.trunk."
        trunk_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not trunk_state:
            raise CheckpointError(
                f"{path}: no keys under {prefix!r}; is this an OpenCLIP checkpoint? keys: {_first(list(state))}"
            )
        state = trunk_state
    elif fmt != "timm":
        raise CheckpointError(f"{path}: checkpoint format must be 'timm' or 'open_clip', got {fmt!r}")
    family = timm_convnext if expert.cfg.kind == "convnext" else timm_vit
    try:
        state = family.checkpoint_filter_fn(state, trunk)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit {expert.cfg.timm_model} ({type(e).__name__}: {e})") from e

    classifier = trunk.pretrained_cfg.get("classifier", "head")  # e.g. "head.fc" for ConvNeXt
    expected = set(trunk.state_dict())
    unexpected = {k for k in state if k not in expected and not k.startswith(classifier + ".")}
    missing = expected - set(state)
    if missing or unexpected:
        parts = [f"missing {len(missing)}: {_first(missing)}" if missing else "",
                 f"unexpected {len(unexpected)}: {_first(unexpected)}" if unexpected else ""]
        raise CheckpointError(f"{path}: keys do not match {expert.cfg.timm_model} ({'; '.join(p for p in parts if p)})")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in trunk.state_dict().items()
             if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match {expert.cfg.timm_model}: {_first(wrong, 3)}")
    trunk.load_state_dict({k: state[k] for k in expected}, strict=True)


# ---- the mixture -------------------------------------------------------------------------------
class MixtureOfVisualExperts(nn.Module):
    """All experts + projector: an `ImageBatch` -> (total_views, 1 + G*G, d), in the batch's view order."""

    def __init__(self, cfg: VisionConfig, d: int) -> None:
        super().__init__()
        if not cfg.experts:
            raise ConfigError("vision.experts is empty; at least one vision expert is needed")
        names = [e.name for e in cfg.experts]
        if len(set(names)) != len(names):
            raise ConfigError(f"vision.experts: duplicate expert names {names}")
        self.cfg = cfg
        self.experts = nn.ModuleDict({e.name: VisionExpert(e, cfg.feature_grid) for e in cfg.experts})
        self.projector = nn.Sequential(nn.Linear(cfg.channels, d), nn.LayerNorm(d))

    @property
    def tokens_per_view(self) -> int:
        return self.cfg.tokens_per_view

    def forward(self, images: ImageBatch) -> torch.Tensor:
        feats = []
        num_views = None
        for name, expert in self.experts.items():
            if name not in images.views:
                raise KeyError(f"image batch has no views for vision expert {name!r} (has {list(images.views)})")
            views = images.views[name]
            if num_views is not None and views.shape[0] != num_views:
                raise ValueError(f"vision expert {name!r} got {views.shape[0]} views, others {num_views}")
            num_views = views.shape[0]
            feats.append(expert(views))  # all views of the whole batch in one call
        proj_dtype = self.projector[0].weight.dtype
        tokens = torch.cat([f.to(proj_dtype) for f in feats], dim=-1)  # channel concat per token
        return self.projector(tokens)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.parameters() if p.requires_grad)


def count_vision_params(cfg: VisionConfig) -> dict[str, int]:
    """Parameters per vision expert trunk, built on the meta device (nothing allocated, no weights read)."""
    with torch.device("meta"):
        experts = {e.name: VisionExpert(e, cfg.feature_grid) for e in cfg.experts}
    return {name: sum(p.numel() for p in ex.parameters()) for name, ex in experts.items()}
