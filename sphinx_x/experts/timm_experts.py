"""timm expert kinds: ConvNeXt (the OpenCLIP `convnext_xxlarge` trunk is a timm ConvNeXt) and DINOv2.

ConvNeXt summarises with the mean of its grid tokens ("gap as cls" in the public SPHINX code). Without
gradients (inference, frozen experts) a plain timm ConvNeXt runs channels-last (`convnext_nhwc`): the same
weights and modules, the MLP as matrix products whatever its `conv_mlp` layout, so checkpoints are untouched.
DINOv2 uses its CLS token after the final norm. DINOv2's position table is either resampled once by timm to the
view size (`pos_embed: resampled`, SPHINX-X's own presets) or kept at its stored size and interpolated at
every forward the way the official DINOv2 code does (`pos_embed: runtime_bicubic`, the released SPHINX
models): bicubic with `scale_factor = (n + 0.1) / M`, no antialias, in float32.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import LayerNorm as TimmLayerNorm
from timm.layers import LayerNorm2d, Mlp
from timm.models import convnext as timm_convnext
from timm.models import vision_transformer as timm_vit
from torch import nn

from sphinx_x.config import ConfigError, VisionExpertConfig
from sphinx_x.experts.base import (
    CheckpointError,
    VisionExpert,
    check_state_keys,
    read_expert_state,
    register_expert,
    resample_grid,
    summary_and_grid,
)

DINOV2_INTERPOLATE_OFFSET = 0.1  # facebookresearch/dinov2 `interpolate_offset`


class _TimmExpert(VisionExpert):
    checkpoint_formats = ("timm", "open_clip")
    family = timm_vit

    @classmethod
    def validate_config(cls, cfg: VisionExpertConfig) -> None:
        super().validate_config(cfg)
        if not cfg.timm_model:
            raise ConfigError(f"vision expert {cfg.name!r}: kind {cls.kind!r} needs timm_model (a timm architecture)")

    def _create(self, **kwargs) -> tuple[nn.Module, int]:
        trunk = timm.create_model(self.cfg.timm_model, pretrained=False, num_classes=0, **kwargs)
        return trunk, trunk.num_features

    def load_checkpoint(self, path: str | Path, fmt: str) -> None:
        load_expert_checkpoint(self, path, fmt)


@register_expert("convnext")
class ConvNeXtExpert(_TimmExpert):
    family = timm_convnext

    def shard_units(self) -> list[nn.Module]:
        return list(self.trunk.stages)

    def build_trunk(self) -> tuple[nn.Module, int]:
        return self._create(**self.cfg.timm_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        # The public SPHINX code runs the whole OpenCLIP trunk with the head's pooling removed, so the
        # head's channel LayerNorm is applied at every location; do the same.
        head_norm = getattr(self.trunk.head, "norm", None)
        if not torch.is_grad_enabled() and convnext_nhwc_supported(self.trunk):
            fmap = convnext_nhwc(self.trunk, x)  # (V, h, w, C)
            if head_norm is not None and _plain_norm(head_norm):
                fmap = _layer_norm(head_norm, fmap)
            elif head_norm is not None:  # another norm kind: its own forward, channels-first
                fmap = head_norm(fmap.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            if fmap.shape[1:3] == (self.feature_grid, self.feature_grid):
                cells = fmap.flatten(1, 2)  # (V, G*G, C) raster, no copy back to channels-first
            else:
                cells = resample_grid(fmap.permute(0, 3, 1, 2), self.feature_grid).flatten(2).transpose(1, 2)
        else:
            fmap = self.trunk.forward_features(x)  # (V, C, h, w)
            if head_norm is not None:
                fmap = head_norm(fmap)
            cells = resample_grid(fmap, self.feature_grid).flatten(2).transpose(1, 2)  # (V, G*G, C) raster
        return torch.cat([cells.mean(dim=1, keepdim=True), cells], dim=1)


# ---- ConvNeXt channels-last (no gradients) --------------------------------------------------------
# timm's ConvNeXt keeps its activations channels-first: each LayerNorm2d permutes to channels-last and back,
# and with `conv_mlp=True` (timm's small ConvNeXts, the nano expert) the MLP is two 1x1 convolutions, which
# CPUs run through an im2col path. `convnext_nhwc` runs the same modules' weights on (V, h, w, C) activations:
# the stem, downsample and depthwise convolutions take channels-last tensors (oneDNN's native layout, the
# output stays channels-last), every LayerNorm is one F.layer_norm over the last dim, the MLP is two
# F.linear over the same weights (a (o, i, 1, 1) conv weight viewed as (o, i)), and layer scale + residual is
# one addcmul. Values equal timm's forward to float rounding (tests/test_experts_convnext_nhwc.py); the
# module tree, parameter shapes and state dict are untouched, so every checkpoint loads as before.
_PLAIN_NORMS = (LayerNorm2d, TimmLayerNorm, nn.LayerNorm)


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def _plain_norm(m: nn.Module) -> bool:
    return type(m) in _PLAIN_NORMS and not getattr(m, "_fast_norm", False) and len(m.normalized_shape) == 1


def _plain_conv(m: nn.Module) -> bool:
    return type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)


def _one_by_one(m: nn.Module) -> bool:
    if type(m) is nn.Linear:
        return True
    return (_plain_conv(m) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
            and m.padding == (0, 0))


def convnext_nhwc_supported(trunk: nn.Module) -> bool:
    """A plain timm ConvNeXt in eval mode: patch stem, LayerNorms, plain-Mlp blocks, no hooks (FSDP, profilers
    by hook), no replaced modules (quantized or LoRA layers); anything else keeps timm's forward."""
    if type(trunk) is not timm_convnext.ConvNeXt or trunk.training or type(trunk.norm_pre) is not nn.Identity:
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in trunk.modules()):
        return False
    stem = trunk.stem
    if type(stem) is not nn.Sequential or len(stem) != 2 or not _plain_conv(stem[0]) or not _plain_norm(stem[1]):
        return False
    for stage in trunk.stages:
        if type(stage) is not timm_convnext.ConvNeXtStage:
            return False
        down = stage.downsample
        if type(down) is not nn.Identity and not (
            type(down) is nn.Sequential and len(down) == 2 and _plain_norm(down[0]) and _plain_conv(down[1])
        ):
            return False
        for block in stage.blocks:
            if type(block) is not timm_convnext.ConvNeXtBlock or type(block.shortcut) is not nn.Identity:
                return False
            dw, mlp = block.conv_dw, block.mlp
            if not _plain_conv(dw) or dw.stride != (1, 1) or dw.groups != dw.in_channels or not _plain_norm(block.norm):
                return False
            if type(mlp) is not Mlp or type(mlp.norm) is not nn.Identity:
                return False
            if any(type(d) not in (nn.Dropout, nn.Identity) for d in (mlp.drop1, mlp.drop2)):
                return False  # dropout is inactive in eval mode: the channels-last forward skips it
            if not (_one_by_one(mlp.fc1) and _one_by_one(mlp.fc2)):
                return False
    return True


def _conv_nhwc(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """(V, h, w, C) -> (V, h', w', C'): the convolution on the channels-first view of channels-last memory."""
    y = F.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.permute(0, 2, 3, 1)


def _linear(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, m.weight.flatten(1), m.bias)  # a 1x1 conv's (o, i, 1, 1) weight as (o, i)


def convnext_nhwc(trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`trunk.forward_features(x)` for (V, 3, H, W) input, returned channels-last (V, h, w, C); only for a trunk
    `convnext_nhwc_supported` accepts, without gradients."""
    stem_conv, stem_norm = trunk.stem
    x = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)  # (V, H, W, 3), no copy if already
    h = _layer_norm(stem_norm, _conv_nhwc(stem_conv, x))
    for stage in trunk.stages:
        if type(stage.downsample) is not nn.Identity:
            norm, conv = stage.downsample
            h = _conv_nhwc(conv, _layer_norm(norm, h))
        for block in stage.blocks:
            mlp = block.mlp
            y = _layer_norm(block.norm, _conv_nhwc(block.conv_dw, h))
            y = _linear(mlp.fc2, mlp.act(_linear(mlp.fc1, y)))
            h = h + y if block.gamma is None else torch.addcmul(h, y, block.gamma)
    return h


def dinov2_runtime_pos_embed(pos_embed: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """The official DINOv2 `interpolate_pos_encoding`: (1, 1 + M*M, C) table -> (1, 1 + h*w, C).

    The table is used as stored when it already has h*w = M*M cells of a square view; otherwise its patch
    part is resized in float32 with bicubic interpolation at scale `(n + 0.1) / M` (not a target size),
    without antialias, then cast to `dtype`."""
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"DINOv2 position table has {n} patch entries, not a square")
    if h * w == n and h == w:
        return pos_embed.to(dtype)
    table = pos_embed.float()
    c = table.shape[-1]
    patch = table[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
    scale = ((w + DINOV2_INTERPOLATE_OFFSET) / m, (h + DINOV2_INTERPOLATE_OFFSET) / m)
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(patch.shape[-2:]) != (w, h):
        raise ValueError(f"DINOv2 position interpolation gave {tuple(patch.shape[-2:])}, expected {(w, h)}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, c)
    return torch.cat([table[:, :1], patch], dim=1).to(dtype)


@register_expert("dinov2")
class DinoV2Expert(_TimmExpert):
    family = timm_vit

    def shard_units(self) -> list[nn.Module]:
        return list(self.trunk.blocks)

    @property
    def runtime_pos_embed(self) -> bool:
        return self.cfg.pos_embed == "runtime_bicubic"

    def build_trunk(self) -> tuple[nn.Module, int]:
        cfg = self.cfg
        kwargs = dict(cfg.timm_kwargs)
        # timm's DINOv2 ViTs default to 518 px; the view size decides the patch grid unless the table is
        # interpolated at run time (then img_size is the stored table's size, e.g. 518 -> 37 x 37).
        kwargs.setdefault("img_size", cfg.view_size)
        trunk, channels = self._create(**kwargs)
        img_size = tuple(trunk.patch_embed.img_size)
        if self.runtime_pos_embed:
            patch = trunk.patch_embed.patch_size[0]
            if cfg.view_size % patch:
                raise ConfigError(f"vision expert {cfg.name!r}: view_size {cfg.view_size} is not a multiple of "
                                  f"the patch size {patch}")
            trunk.patch_embed.strict_img_size = False  # any view size: the table is interpolated per call
        elif img_size != (cfg.view_size, cfg.view_size):
            raise ConfigError(
                f"vision expert {cfg.name!r}: view_size {cfg.view_size} but the ViT is built for "
                f"{img_size[0]}x{img_size[1]} (timm_kwargs img_size)"
            )
        return trunk, channels

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features with the official run-time position interpolation."""
        t = self.trunk
        p = t.patch_embed.patch_size
        h, w = x.shape[-2] // p[0], x.shape[-1] // p[1]
        tokens = t.patch_embed(x)  # (V, h*w, C)
        tokens = torch.cat([t.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = t.pos_drop(tokens + dinov2_runtime_pos_embed(t.pos_embed, h, w, tokens.dtype))
        tokens = t.norm_pre(t.patch_drop(tokens))
        return t.norm(t.blocks(tokens))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        t = self.trunk
        if self.runtime_pos_embed:
            tokens = self._features(x)
            h, w = x.shape[-2] // t.patch_embed.patch_size[0], x.shape[-1] // t.patch_embed.patch_size[1]
        else:
            tokens = t.forward_features(x)  # (V, prefix + h*w, C), after the final norm
            h, w = t.patch_embed.grid_size
        prefix = t.num_prefix_tokens  # CLS (+ register tokens, dropped)
        patches = tokens[:, prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        return summary_and_grid(tokens[:, 0], patches, self.feature_grid)


def load_expert_checkpoint(expert: VisionExpert, path: str | Path, fmt: str = "timm") -> None:
    """Load a local weights file into a timm expert's trunk.

    `open_clip`: an OpenCLIP checkpoint; the trunk lives under `visual.trunk.`, everything else (the
    OpenCLIP projection head, logit scale, text tower) is ignored. `timm`: a timm state dict. Both then
    pass through timm's own checkpoint filter of the family, which converts original DINOv2/ConvNeXt
    layouts and resamples position embeddings (`resample_abs_pos_embed`) to the built image size (with
    `pos_embed: runtime_bicubic` the built size is the stored one, so nothing is resampled). Classifier
    weights are ignored; any other missing or unexpected key is an error naming the file and the keys."""
    if not isinstance(expert, _TimmExpert):
        expert.load_checkpoint(path, fmt)
        return
    path = Path(path)
    state = read_expert_state(path)
    trunk = expert.trunk
    if fmt == "open_clip":
        prefix = "visual.trunk."
        trunk_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not trunk_state:
            raise CheckpointError(f"{path}: no keys under {prefix!r}; is this an OpenCLIP checkpoint? "
                                  f"keys: {', '.join(sorted(state)[:5])}")
        state = trunk_state
    elif fmt != "timm":
        raise CheckpointError(f"{path}: checkpoint format must be 'timm' or 'open_clip', got {fmt!r}")
    try:
        state = expert.family.checkpoint_filter_fn(state, trunk)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: does not fit {expert.cfg.timm_model} ({type(e).__name__}: {e})") from e
    classifier = trunk.pretrained_cfg.get("classifier", "head")  # e.g. "head.fc" for ConvNeXt
    check_state_keys(path, state, trunk, expert.cfg.timm_model, ignore=lambda k: k.startswith(classifier + "."))
    trunk.load_state_dict({k: state[k] for k in trunk.state_dict()}, strict=True)
