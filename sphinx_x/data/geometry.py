"""Geometry in text (README "How an image becomes tokens"): format and parse boxes, points, grounded phrases and marks.

Coordinates here are already canvas-normalised to [0, 1]; mapping to and from image pixels is
`sphinx_x.canvas.CanvasGeometry.to_canvas` / `to_pixels` and is deliberately not repeated here.

Written form (2 decimals, clamped to [0, 1]):
    box      [0.47, 0.44, 0.49, 0.50]
    point    [0.56, 0.24]
    boxes    [0.16, 0.50, 0.48, 0.64; 0.16, 0.64, 0.48, 0.74]
    phrase   <p>a red circle</p> [0.16, 0.50, 0.48, 0.64]
    mark     <Mark 1> [0.56, 0.24]

The parsers read model outputs, so they are tolerant: extra or missing spaces, integers or extra
decimals ("[0, 0.5, 1, 1]"), values outside [0, 1] (clamped; `clamp=False` keeps them, for boxes
written in pixels), unbalanced or broken brackets and non-numeric junk (that group is ignored). They
never raise on any `str`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

DECIMALS = 2

# A number as a model may write it: optional sign, integer and/or fraction, optional exponent.
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"^\s*({_NUMBER})\s*$")
# The innermost bracket group: no nested '[' or ']' inside, so "[[0.1, 0.2]" reads the inner group.
_GROUP_RE = re.compile(r"\[([^\[\]]*)\]")
_PHRASE_RE = re.compile(r"<p>(.*?)</p>\s*(?:\[([^\[\]]*)\])?", re.DOTALL)
_MARK_RE = re.compile(r"<Mark\s*(\d{1,9})\s*>\s*(?:\[([^\[\]]*)\])?")


# ---- formatting --------------------------------------------------------------------------------
def clamp01(value: float) -> float:
    """Clamp to [0, 1]; NaN becomes 0 so nothing unprintable reaches the text."""
    v = float(value)
    if math.isnan(v):
        return 0.0
    return min(max(v, 0.0), 1.0)


def format_number(value: float) -> str:
    return f"{clamp01(value):.{DECIMALS}f}"


def _format_coords(coords: Sequence[float], n: int, what: str) -> str:
    if len(coords) != n:
        raise ValueError(f"a {what} needs {n} coordinates, got {len(coords)}: {list(coords)!r}")
    return ", ".join(format_number(v) for v in coords)


def format_box(box: Sequence[float]) -> str:
    """[x1, y1, x2, y2] (canvas-normalised) -> "[0.47, 0.44, 0.49, 0.50]"."""
    return f"[{_format_coords(box, 4, 'box')}]"


def format_point(point: Sequence[float]) -> str:
    """[x, y] -> "[0.56, 0.24]"."""
    return f"[{_format_coords(point, 2, 'point')}]"


def format_boxes(boxes: Iterable[Sequence[float]]) -> str:
    """Several boxes of one phrase -> "[a, b, c, d; e, f, g, h]"."""
    parts = [_format_coords(b, 4, "box") for b in boxes]
    if not parts:
        raise ValueError("format_boxes needs at least one box")
    return f"[{'; '.join(parts)}]"


def format_phrase(phrase: str, boxes: Sequence[float] | Iterable[Sequence[float]]) -> str:
    """A grounded phrase: "<p>phrase</p> [boxes]". `boxes` is one box or a list of boxes."""
    items = list(boxes)
    if items and not isinstance(items[0], (list, tuple)):
        items = [items]  # a single flat box
    return f"<p>{phrase}</p> {format_boxes(items)}"


def format_mark(index: int, point: Sequence[float]) -> str:
    """A Set-of-Mark reference: "<Mark 1> [0.56, 0.24]"."""
    return f"<Mark {int(index)}> {format_point(point)}"


# ---- parsing -----------------------------------------------------------------------------------
def _parse_numbers(part: str, clamp: bool = True) -> list[float] | None:
    """Comma-separated numbers, or None when any item is not a finite number."""
    items = part.split(",")
    out = []
    for item in items:
        m = _NUMBER_RE.match(item)
        if m is None:
            return None
        try:
            v = float(m.group(1))
        except (ValueError, OverflowError):
            return None
        if not math.isfinite(v):
            return None
        out.append(clamp01(v) if clamp else v)
    return out


def _group_parts(inner: str, clamp: bool = True) -> list[list[float]]:
    """The ';'-separated coordinate lists of one bracket group; unparsable parts are dropped."""
    parts = []
    for part in inner.split(";"):
        nums = _parse_numbers(part, clamp)
        if nums:
            parts.append(nums)
    return parts


def _boxes_of(inner: str | None, clamp: bool = True) -> list[list[float]]:
    """Boxes of one group. A part with 4k numbers (a model that forgot the ';') yields k boxes."""
    boxes = []
    for nums in _group_parts(inner or "", clamp):
        if len(nums) % 4 == 0:
            boxes.extend(nums[i : i + 4] for i in range(0, len(nums), 4))
    return boxes


def _points_of(inner: str | None, clamp: bool = True) -> list[list[float]]:
    return [nums for nums in _group_parts(inner or "", clamp) if len(nums) == 2]


def parse_boxes(text: str, clamp: bool = True) -> list[list[float]]:
    """Every box in `text`, in order of appearance; ';'-separated groups are flattened.
    `clamp=False` keeps values as written (boxes given in pixels)."""
    if not isinstance(text, str):
        return []
    return [b for m in _GROUP_RE.finditer(text) for b in _boxes_of(m.group(1), clamp)]


def parse_points(text: str, clamp: bool = True) -> list[list[float]]:
    """Every point ([x, y]) in `text`, in order of appearance."""
    if not isinstance(text, str):
        return []
    return [p for m in _GROUP_RE.finditer(text) for p in _points_of(m.group(1), clamp)]


def parse_phrases(text: str, clamp: bool = True) -> list[tuple[str, list[list[float]]]]:
    """Grounded phrases: [(phrase, boxes)]; a phrase with no readable box gets an empty list."""
    if not isinstance(text, str):
        return []
    return [(m.group(1).strip(), _boxes_of(m.group(2), clamp)) for m in _PHRASE_RE.finditer(text)]


def parse_marks(text: str, clamp: bool = True) -> list[tuple[int, list[float]]]:
    """Mark references "<Mark i> [x, y]" (or a box): [(i, coords)]; marks without coordinates are skipped."""
    if not isinstance(text, str):
        return []
    out = []
    for m in _MARK_RE.finditer(text):
        parts = _group_parts(m.group(2) or "", clamp)
        if parts and len(parts[0]) in (2, 4):
            out.append((int(m.group(1)), parts[0]))
    return out


def parse_box(text: str, clamp: bool = True) -> list[float] | None:
    """The first box in `text`, or None: what a REC answer is scored on."""
    boxes = parse_boxes(text, clamp)
    return boxes[0] if boxes else None
