"""Geometry in answers: parse boxes, points, grounded phrases and marks, map them to original image pixels
and draw them with their labels (Pillow).

Parsing is `sphinx_x.data.geometry` (canvas-normalised coordinates); the canvas -> pixel mapping is
`sphinx_x.canvas.CanvasGeometry` with the model's pad anchor. Boxes inside `<p>phrase</p> [...]` are
labelled with the phrase, mark coordinates with "Mark i", remaining boxes and points with their index.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.data.geometry import parse_boxes, parse_marks, parse_phrases, parse_points

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


@dataclass
class Annotation:
    """A box or point read from an answer, with its label, in canvas-normalised and in pixel coordinates."""

    kind: str  # "box" (x1, y1, x2, y2) or "point" (x, y)
    label: str
    canvas: list[float]  # canvas-normalised, as written in the answer
    pixels: list[float]  # original-image pixels (anchor-aware, clamped to the image)


def answer_annotations(answer: str, width: int, height: int, anchor: str = "top-left") -> list[Annotation]:
    """Every box and point in `answer`, labelled, in original-image pixels of a `width x height` image."""
    geo = CanvasGeometry(width, height, anchor)
    found: list[tuple[str, str, list[float]]] = []
    for phrase, boxes in parse_phrases(answer):
        found += [("box", phrase, b) for b in boxes]
    for index, coords in parse_marks(answer):
        found.append(("box" if len(coords) == 4 else "point", f"Mark {index}", coords))
    # Plain boxes/points are whatever the parsers find beyond those already claimed (matched by value:
    # the same written numbers parse to the same floats).
    claimed = Counter(tuple(c) for _, _, c in found)
    plain = 0
    for kind, coords_list in (("box", parse_boxes(answer)), ("point", parse_points(answer))):
        for coords in coords_list:
            key = tuple(coords)
            if claimed[key]:
                claimed[key] -= 1
                continue
            plain += 1
            found.append((kind, str(plain), coords))
    return [Annotation(kind, label, list(c), geo.to_pixels(c)) for kind, label, c in found]


def _pixel(v: float, size: int) -> int:
    return min(max(round(v), 0), size - 1)


def draw_annotations(image: Image.Image, annotations: list[Annotation], labels: bool = True,
                     line_width: int | None = None) -> Image.Image:
    """A copy of `image` (RGB) with every annotation drawn: box outlines / point discs, label tags."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    lw = line_width or max(2, round(min(w, h) / 200))
    font = ImageFont.load_default()
    colours: dict[str, tuple[int, int, int]] = {}
    for ann in annotations:
        colour = colours.setdefault(ann.label, PALETTE[len(colours) % len(PALETTE)])
        if ann.kind == "box":
            x1, y1, x2, y2 = (_pixel(v, w if i % 2 == 0 else h) for i, v in enumerate(ann.pixels))
            draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=colour, width=lw)
            anchor_xy = (min(x1, x2), min(y1, y2))
        else:
            x, y = _pixel(ann.pixels[0], w), _pixel(ann.pixels[1], h)
            r = lw * 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour, outline=(255, 255, 255))
            anchor_xy = (x + r, y - r)
        if labels and ann.label:
            left, top, right, bottom = draw.textbbox(anchor_xy, ann.label, font=font)
            ty = max(0, anchor_xy[1] - (bottom - top) - 2)
            box = (left, ty, right + 4, ty + (bottom - top) + 2)
            draw.rectangle(box, fill=colour)
            draw.text((left + 2, ty), ann.label, fill=(255, 255, 255), font=font)
    return out


def draw_answer(image: Image.Image, answer: str, anchor: str = "top-left", labels: bool = True
                ) -> tuple[Image.Image, list[Annotation]]:
    """Parse `answer`, map it onto `image` and draw it; returns the drawing and the annotations."""
    anns = answer_annotations(answer, image.width, image.height, anchor)
    return draw_annotations(image, anns, labels=labels), anns
