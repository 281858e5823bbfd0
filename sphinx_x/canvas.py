"""Canvas and tiling: the one place that turns an image into SPHINX-X views (README "How an image becomes tokens").

An image is resized (aspect kept) so its longer side fills a square canvas, pasted at the top-left
corner or centred, and padded with the pad colour. Each expert sees the canvas as one global view
(canvas resized to the expert's view size) plus a `grid x grid` raster of sub-images. A cell that does
not intersect the pasted image is skipped; that decision is geometric (exact integer arithmetic on the
original size), never a test of pixel values, so every expert agrees on it.

With `canvas.preprocess: accessory` (the released SPHINX models) the image instead becomes one uint8
canvas of `canvas.size` pixels, made as the official transform makes it (pad to a centred square at the
original resolution with `int(255 * mean)`, then PIL bicubic resize); the experts' views are cut from the
normalised canvas on the model's device (`accessory_views`, `renormalize`) with float16 bicubic
interpolation.

This module also owns the mapping between original-image pixels and canvas-normalised coordinates
(README "How an image becomes tokens") in both directions, for both anchors.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from sphinx_x.config import CanvasConfig, VisionConfig, VisionExpertConfig


class ImageError(ValueError):
    """An image cannot be used: unreadable, empty, or over the pixel limit. The message names it."""


# ---- loading -----------------------------------------------------------------------------------
def load_image(
    source: str | Path | bytes | Image.Image,
    max_pixels: int = CanvasConfig.max_pixels,
    background: tuple[int, int, int] = CanvasConfig.pad_color,
) -> Image.Image:
    """Open any PIL-readable image as RGB: EXIF orientation applied, transparency composited over
    `background`, 16-bit and CMYK converted. Refuses empty images and images over `max_pixels`
    before decoding their pixels."""
    name = "<image>" if isinstance(source, (bytes, Image.Image)) else str(source)
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except FileNotFoundError as e:
            raise ImageError(f"{name}: file not found") from e
        except (OSError, Image.DecompressionBombError, ValueError) as e:
            raise ImageError(f"{name}: not a readable image ({e})") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name}: image has zero size ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
    try:
        if img is source:  # the caller's image: rotate a copy
            img = ImageOps.exif_transpose(img)
        else:  # opened here: decode now (errors are reported here), rotate in place instead of copying
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
        return to_rgb(img, background)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{name}: cannot decode image ({e})") from e


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


# ---- geometry ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanvasGeometry:
    """Where an image of `width x height` pixels lands on the unit square canvas."""

    width: int
    height: int
    anchor: str = "top-left"

    @property
    def side(self) -> int:  # the canvas side in original pixels
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[float, float]:  # padding before the image, original pixels
        if self.anchor == "top-left":
            return 0.0, 0.0
        if self.anchor == "center":
            return (self.side - self.width) / 2, (self.side - self.height) / 2
        raise ValueError(f"pad anchor must be 'top-left' or 'center', got {self.anchor!r}")

    def to_canvas(self, coords: Sequence[float]) -> list[float]:
        """Pixel (x, y, x, y, ...) -> canvas-normalised [0, 1] coordinates (boxes and points)."""
        ox, oy = self.offset
        s = self.side
        return [(v + (ox if i % 2 == 0 else oy)) / s for i, v in enumerate(coords)]

    def to_pixels(self, coords: Sequence[float], clamp: bool = True) -> list[float]:
        """Canvas-normalised (x, y, ...) -> original pixel coordinates, clamped to the image."""
        ox, oy = self.offset
        s = self.side
        out = []
        for i, v in enumerate(coords):
            p = v * s - (ox if i % 2 == 0 else oy)
            if clamp:
                p = min(max(p, 0.0), float(self.width if i % 2 == 0 else self.height))
            out.append(p)
        return out

    def skipped_cells(self, grid: int) -> list[bool]:
        """Raster-order flags: True where the cell does not intersect the image rectangle.

        Exact integer arithmetic: cell c spans [c/grid, (c+1)/grid) of the side; the image spans
        [a/(2s), b/(2s)) per axis with a, b integers (the factor 2 covers centred halves)."""
        s = self.side

        def spans(extent: int) -> tuple[int, int]:  # image span on one axis, in units of 1/(2s)
            if self.anchor == "top-left":
                return 0, 2 * extent
            return s - extent, s + extent

        (x0, x1), (y0, y1) = spans(self.width), spans(self.height)

        def hit(c: int, lo: int, hi: int) -> bool:  # positive-area overlap of [c, c+1)/grid and [lo, hi)/2s
            return 2 * s * c < grid * hi and 2 * s * (c + 1) > grid * lo

        return [not (hit(r, y0, y1) and hit(c, x0, x1)) for r in range(grid) for c in range(grid)]


def skipped_cells(width: int, height: int, canvas: CanvasConfig) -> list[bool]:
    if not canvas.skip_padded_cells:
        return [False] * (canvas.grid * canvas.grid)
    return CanvasGeometry(width, height, canvas.pad_anchor).skipped_cells(canvas.grid)


# ---- views -------------------------------------------------------------------------------------
@dataclass
class ImageViews:
    """One image prepared for the experts: per expert uint8 views (global then kept cells, raster
    order) of shape (1 + kept, 3, r, r); `skipped` flags every cell in raster order."""

    views: dict[str, torch.Tensor]
    skipped: torch.Tensor  # (grid*grid,) bool
    size: tuple[int, int]  # original (width, height) after EXIF orientation
    canvas: torch.Tensor | None = None  # preprocess "accessory": uint8 (1, 3, S, S); views is then empty

    @property
    def num_encoded(self) -> int:
        return 1 + int((~self.skipped).sum())


def make_canvas(img: Image.Image, side: int, canvas: CanvasConfig) -> Image.Image:
    """Resize `img` (RGB) so its longer side is `side` pixels and paste it on a padded square."""
    w, h = img.size
    m = max(w, h)
    nw, nh = max(1, round(w * side / m)), max(1, round(h * side / m))
    resized = img.resize((nw, nh), Image.Resampling.BICUBIC) if (nw, nh) != (w, h) else img
    out = Image.new("RGB", (side, side), tuple(canvas.pad_color))
    if canvas.pad_anchor == "top-left":
        out.paste(resized, (0, 0))
    else:
        out.paste(resized, ((side - nw) // 2, (side - nh) // 2))
    return out


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image -> uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


# torch's antialiased bicubic resize, the op `F.interpolate(mode="bicubic", antialias=True)` runs; called
# directly for its out= form, which writes a resize into a slice of the canvas or the views without a copy.
_resize_aa = torch.ops.aten._upsample_bicubic2d_aa


def resize_uint8(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, height, width), antialiased bicubic as PIL's BICUBIC resize computes it
    (torch's uint8 path: a few times faster than PIL; values within 1 of PIL's, equal for most pixels).
    Channels-last input (as `to_uint8_tensor` gives) takes the faster vectorised kernel; same values."""
    if x.shape[-2:] == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bicubic", antialias=True)


@lru_cache(maxsize=16)
def _pad_rows(color: tuple[int, int, int], side: int) -> torch.Tensor:
    """One canvas row of the pad colour, (side, 3) uint8: copied row by row into padding strips (only read,
    so one per colour and side is kept)."""
    return torch.tensor(list(color) * side, dtype=torch.uint8).view(side, 3)


def canvas_tensor(x: torch.Tensor, side: int, canvas: CanvasConfig) -> torch.Tensor:
    """`make_canvas` on a uint8 (1, 3, h, w) image tensor: longer side resized to `side`, pasted on a padded
    square (1, 3, side, side).

    The canvas is channels-last (a (side, side, 3) buffer), the layout in which torch's uint8 resize is
    fastest, for both this resize and the global view's resize of the canvas. Only the padding strips are
    filled (with whole rows of pad colour: contiguous copies); when the pasted image spans whole canvas rows
    (wide images, top-left or centred) the resize writes straight into the canvas."""
    h, w = x.shape[-2:]
    m = max(w, h)
    nw, nh = max(1, round(w * side / m)), max(1, round(h * side / m))
    x0, y0 = (0, 0) if canvas.pad_anchor == "top-left" else ((side - nw) // 2, (side - nh) // 2)
    hwc = torch.empty((side, side, 3), dtype=torch.uint8)
    if (nw, nh) != (side, side):
        row = _pad_rows(tuple(canvas.pad_color), side)
        hwc[:y0] = row
        hwc[y0 + nh:] = row
        hwc[y0 : y0 + nh, :x0] = row[:x0]
        hwc[y0 : y0 + nh, x0 + nw:] = row[x0 + nw:]
    out = hwc.permute(2, 0, 1)[None]
    image = out[..., y0 : y0 + nh, x0 : x0 + nw]
    if (nw, nh) == (w, h):
        image.copy_(x)
    elif nw == side:  # whole rows: a channels-last contiguous slice, written in place
        _resize_aa.out(x, [nh, nw], False, None, None, out=image)
    else:
        image.copy_(_resize_aa(x, [nh, nw], False, None, None))
    return out


def prepare_image(img: Image.Image, vision: VisionConfig) -> ImageViews:
    """Cut an RGB image into each expert's global view and non-skipped grid cells. The image becomes a
    tensor once; each view size's canvas (`canvas_tensor`) and global view are resized on tensors, shared by
    experts with the same view size. The views come out contiguous, channels-first: the global view is
    resized straight into them, the kept cells copied by numpy (its transposing copy from the channels-last
    canvas is about 4x faster than torch's for uint8 with 3 channels innermost)."""
    canvas = vision.canvas
    g = canvas.grid
    skipped = skipped_cells(img.width, img.height, canvas)
    if canvas.preprocess == "accessory":
        square = to_uint8_tensor(accessory_canvas(img, canvas))[None]
        return ImageViews(views={}, skipped=torch.tensor(skipped, dtype=torch.bool), size=img.size, canvas=square)
    pixels = to_uint8_tensor(img)[None]  # channels-last strides: numpy's (h, w, 3) permuted
    kept = [divmod(idx, g) for idx, skip in enumerate(skipped) if not skip]
    by_size: dict[int, torch.Tensor] = {}
    for expert in vision.experts:
        r = expert.view_size
        if r in by_size:
            continue
        full = canvas_tensor(pixels, max(g, 1) * r, canvas)
        views = torch.empty((1 + len(kept), 3, r, r), dtype=torch.uint8)
        if g > 1:
            _resize_aa.out(full, [r, r], False, None, None, out=views[:1])
        else:  # the canvas is the global view
            views[:1] = full
        hwc, out = full[0].permute(1, 2, 0).numpy(), views.numpy()  # views of the same memory
        for k, (i, j) in enumerate(kept, start=1):
            out[k] = hwc[i * r : (i + 1) * r, j * r : (j + 1) * r].transpose(2, 0, 1)
        by_size[r] = views
    views = {expert.name: by_size[expert.view_size] for expert in vision.experts}
    return ImageViews(views=views, skipped=torch.tensor(skipped, dtype=torch.bool), size=img.size)


@dataclass
class ImageBatch:
    """All images of a batch in order of appearance (sample by sample, placeholder by placeholder).

    `views[name]` concatenates every image's views for that expert: (total_views, 3, r, r) uint8;
    `skipped` is (num_images, grid*grid) bool."""

    views: dict[str, torch.Tensor]
    skipped: torch.Tensor
    canvas: torch.Tensor | None = None  # preprocess "accessory": uint8 (num_images, 3, S, S)

    @property
    def num_images(self) -> int:
        return self.skipped.shape[0]

    def to(self, device: torch.device | str) -> ImageBatch:
        canvas = None if self.canvas is None else self.canvas.to(device)
        return ImageBatch({k: v.to(device) for k, v in self.views.items()}, self.skipped.to(device), canvas)


def collate_images(images: Sequence[ImageViews], vision: VisionConfig) -> ImageBatch | None:
    if not images:
        return None
    skipped = torch.stack([im.skipped for im in images])
    if vision.canvas.preprocess == "accessory":
        return ImageBatch(views={}, skipped=skipped, canvas=torch.cat([im.canvas for im in images]))
    views = {e.name: torch.cat([im.views[e.name] for im in images]) for e in vision.experts}
    return ImageBatch(views=views, skipped=skipped)


# ---- the official (LLaMA2-Accessory) preprocessing ----------------------------------------------
def accessory_canvas(img: Image.Image, canvas: CanvasConfig) -> Image.Image:
    """The official `padded_resize` transform up to the tensor: pad to a square at the original
    resolution (centred, integer offsets), fill `canvas.pad_color`, then PIL bicubic resize to `size`."""
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), tuple(canvas.pad_color))
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if img.size != (canvas.size, canvas.size):
        img = img.resize((canvas.size, canvas.size), Image.Resampling.BICUBIC)
    return img


def normalize_canvas(canvas_u8: torch.Tensor, canvas: CanvasConfig) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float32, as torchvision's ToTensor + Normalize compute it (/255, -mean, /std)."""
    x = canvas_u8.float().div(255)
    mean = torch.tensor(canvas.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(canvas.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def resize_half(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """`F.interpolate(x.half(), size, mode).to(x)`: the official resize (float16, no antialias)."""
    return F.interpolate(x.half(), size=(size, size), mode=mode).to(x.dtype)


def accessory_views(x: torch.Tensor, view_size: int, grid: int) -> torch.Tensor:
    """Normalised canvases (N, 3, S, S) -> (N * (1 + grid*grid), 3, r, r): per image the global view then
    the grid cells in raster order. A view is the canvas itself when the sizes match, else a float16
    bicubic resize of it; cells are crops of the canvas, or of its resize to grid * r."""
    r = view_size
    side = x.shape[-1]
    whole = x if side == r else resize_half(x, r, "bicubic")
    if grid == 0:
        return whole
    big = x if side == grid * r else resize_half(x, grid * r, "bicubic")
    cells = [big[..., i * r : (i + 1) * r, j * r : (j + 1) * r] for i in range(grid) for j in range(grid)]
    return torch.stack([whole, *cells], dim=1).flatten(0, 1)


def renormalize(x: torch.Tensor, canvas: CanvasConfig, expert: VisionExpertConfig) -> torch.Tensor:
    """Canvas-normalised pixels -> this expert's normalisation, with the official code's formula."""
    if tuple(expert.mean) == tuple(canvas.mean) and tuple(expert.std) == tuple(canvas.std):
        return x

    def stat(values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).to(x).view(3, 1, 1)

    c_mean, c_std, e_mean, e_std = stat(canvas.mean), stat(canvas.std), stat(expert.mean), stat(expert.std)
    if expert.renorm == "affine":  # llama_ens_light / llama_ens5_light
        return x * (c_std / e_std) + (c_mean - e_mean) / e_std
    return (x * c_std + c_mean - e_mean) / e_std  # llama_ens, llama_ens5, mixtral_sparse_ens*

