"""Canvas and tiling: the one place that turns an image into SPHINX-X views (SPEC section 2).

An image is resized (aspect kept) so its longer side fills a square canvas, pasted at the top-left
corner or centred, and padded with the pad colour. Each expert sees the canvas as one global view
(canvas resized to the expert's view size) plus a `grid x grid` raster of sub-images. A cell that does
not intersect the pasted image is skipped; that decision is geometric (exact integer arithmetic on the
original size), never a test of pixel values, so every expert agrees on it.

This module also owns the mapping between original-image pixels and canvas-normalised coordinates
(SPEC section 3) in both directions, for both anchors.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sphinx_x.config import CanvasConfig, VisionConfig


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
        img = ImageOps.exif_transpose(img)
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


def visual_token_count(width: int, height: int, vision: VisionConfig) -> int:
    """Tokens one image occupies: [start] view [end] per encoded view, one skip token per skipped cell."""
    skipped = sum(skipped_cells(width, height, vision.canvas))
    cells = vision.canvas.grid * vision.canvas.grid
    return (1 + cells - skipped) * (vision.tokens_per_view + 2) + skipped


# ---- views -------------------------------------------------------------------------------------
@dataclass
class ImageViews:
    """One image prepared for the experts: per expert uint8 views (global then kept cells, raster
    order) of shape (1 + kept, 3, r, r); `skipped` flags every cell in raster order."""

    views: dict[str, torch.Tensor]
    skipped: torch.Tensor  # (grid*grid,) bool
    size: tuple[int, int]  # original (width, height) after EXIF orientation

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


def prepare_image(img: Image.Image, vision: VisionConfig) -> ImageViews:
    """Cut an RGB image into each expert's global view and non-skipped grid cells."""
    canvas = vision.canvas
    g = canvas.grid
    skipped = skipped_cells(img.width, img.height, canvas)
    views: dict[str, torch.Tensor] = {}
    for expert in vision.experts:
        r = expert.view_size
        full = make_canvas(img, g * r, canvas)
        tiles = [to_uint8_tensor(full.resize((r, r), Image.Resampling.BICUBIC) if g > 1 else full)]
        arr = to_uint8_tensor(full)
        for idx, skip in enumerate(skipped):
            if not skip:
                row, col = divmod(idx, g)
                tiles.append(arr[:, row * r : (row + 1) * r, col * r : (col + 1) * r])
        views[expert.name] = torch.stack(tiles)
    return ImageViews(views=views, skipped=torch.tensor(skipped, dtype=torch.bool), size=img.size)


@dataclass
class ImageBatch:
    """All images of a batch in order of appearance (sample by sample, placeholder by placeholder).

    `views[name]` concatenates every image's views for that expert: (total_views, 3, r, r) uint8;
    `skipped` is (num_images, grid*grid) bool."""

    views: dict[str, torch.Tensor]
    skipped: torch.Tensor

    @property
    def num_images(self) -> int:
        return self.skipped.shape[0]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch({k: v.to(device) for k, v in self.views.items()}, self.skipped.to(device))


def collate_images(images: Sequence[ImageViews], vision: VisionConfig) -> ImageBatch | None:
    if not images:
        return None
    views = {e.name: torch.cat([im.views[e.name] for im in images]) for e in vision.experts}
    return ImageBatch(views=views, skipped=torch.stack([im.skipped for im in images]))
