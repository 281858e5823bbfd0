"""Drawing Set-of-Mark marks: numbered labels placed so they neither overlap each other nor leave
the image, in colours whose text stays readable, plus an optional box or mask outline per object.

Placement is greedy: objects with the least room (smallest first) choose first, each trying its
mark point, then rings of positions around it; the first candidate that overlaps no placed label
and covers no other mark point wins. When none is free, the candidate with the least overlap is
used and counted (`Placement.overlapping`), never hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sphinx_x.curate.coco import mask_outline
from sphinx_x.data.synth.common import font

# Saturated, distinguishable mark colours (Set-of-Mark style).
PALETTE: list[tuple[int, int, int]] = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
]
LABEL_FONT = "DejaVuSans-Bold.ttf"

Box = tuple[float, float, float, float]


def relative_luminance(rgb: tuple[int, int, int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    def lin(c: float) -> float:
        c = c / 255.0
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(v) for v in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever contrasts more with `background` (always >= 4.5:1 for the palette)."""
    black, white = (0, 0, 0), (255, 255, 255)
    return black if contrast_ratio(background, black) >= contrast_ratio(background, white) else white


def font_size_for(width: int, height: int) -> int:
    return int(min(max(round(0.035 * min(width, height)), 10), 48))


def label_size(number: int, size: int) -> tuple[int, int]:
    f = font(LABEL_FONT, size)
    x0, y0, x1, y1 = f.getbbox(str(number))
    pad = max(2, size // 5)
    return int(x1 - x0) + 2 * pad, int(y1 - y0) + 2 * pad


def _overlap(a: Box, b: Box) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _clamp_box(cx: float, cy: float, w: int, h: int, width: int, height: int) -> Box:
    x0 = min(max(cx - w / 2, 0.0), max(width - w, 0.0))
    y0 = min(max(cy - h / 2, 0.0), max(height - h, 0.0))
    return x0, y0, x0 + w, y0 + h


def _candidates(point: tuple[float, float], w: int, h: int, width: int, height: int) -> list[Box]:
    """The label centred on the point, then 8 directions at growing distances, kept inside the image."""
    out = [_clamp_box(point[0], point[1], w, h, width, height)]
    step = max(w, h)
    for ring in (0.75, 1.5, 2.5, 4.0):
        for k in range(8):
            ang = k * math.pi / 4
            out.append(_clamp_box(point[0] + ring * step * math.cos(ang), point[1] + ring * step * math.sin(ang),
                                  w, h, width, height))
    return out


@dataclass
class Placement:
    boxes: list[Box]  # label box per mark (same order as the points)
    overlapping: int  # labels that could not be placed free of overlap


def place_labels(points: list[tuple[float, float]], sizes: list[tuple[int, int]], areas: list[float],
                 width: int, height: int) -> Placement:
    """Label boxes (pixels) for marks at `points` with label `sizes`; objects with smaller `areas` choose first."""
    boxes: list[Box | None] = [None] * len(points)
    overlapping = 0
    dot = max(2.0, 0.005 * min(width, height))
    point_boxes = [(x - dot, y - dot, x + dot, y + dot) for x, y in points]
    for i in sorted(range(len(points)), key=lambda k: (areas[k], k)):
        w, h = sizes[i]
        placed = [b for b in boxes if b is not None]
        others = [pb for j, pb in enumerate(point_boxes) if j != i]
        best, best_cost = None, math.inf
        for cand in _candidates(points[i], w, h, width, height):
            cost = sum(_overlap(cand, b) for b in placed) * 100 + sum(_overlap(cand, pb) for pb in others)
            if cost == 0:
                best, best_cost = cand, 0.0
                break
            if cost < best_cost:
                best, best_cost = cand, cost
        if any(_overlap(best, b) > 0 for b in placed):
            overlapping += 1
        boxes[i] = best
    return Placement([b for b in boxes if b is not None], overlapping)


def draw_marks(image: Image.Image, points: list[tuple[float, float]], labels: list[Box], numbers: list[int],
               boxes: list[Box] | None = None, masks: list[np.ndarray] | None = None,
               fill_alpha: float = 0.25) -> Image.Image:
    """A marked copy of `image`: per mark an optional mask (tinted, outlined) or box outline in its
    colour, then the numbered labels on top; a label moved off its point gets a leader line to it."""
    w, h = image.size
    line_w = max(2, round(0.004 * min(w, h)))
    arr = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for k, mask in enumerate(masks or []):
        color = np.asarray(PALETTE[k % len(PALETTE)], dtype=np.float32)
        arr[mask] = (1 - fill_alpha) * arr[mask] + fill_alpha * color
        arr[mask_outline(mask, line_w)] = color
    out = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for k, box in enumerate(boxes or []):
        draw.rectangle(box, outline=PALETTE[k % len(PALETTE)], width=line_w)
    size = font_size_for(w, h)
    f = font(LABEL_FONT, size)
    for k, (point, label, number) in enumerate(zip(points, labels, numbers)):
        bg = PALETTE[k % len(PALETTE)]
        fg = text_color(bg)
        cx, cy = (label[0] + label[2]) / 2, (label[1] + label[3]) / 2
        if not (label[0] <= point[0] <= label[2] and label[1] <= point[1] <= label[3]):
            draw.line([point, (cx, cy)], fill=bg, width=max(1, line_w // 2))
            r = line_w + 1
            draw.ellipse([point[0] - r, point[1] - r, point[0] + r, point[1] + r], fill=bg, outline=fg)
        draw.rectangle(label, fill=bg, outline=fg, width=1)
        draw.text((cx, cy), str(number), fill=fg, font=f, anchor="mm")
    return out
