"""Shared pieces of the synthetic corpus: the sample record, seeded RNGs, palettes, sizes, fonts.

Everything a generator draws comes from the `random.Random` it is handed, which `sample_rng` seeds
from (seed, split, index) alone, so a sample does not depend on which worker made it or on what was
generated before it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageFont

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.data.geometry import format_box

# Big, saturated, well separated colours (names are the answers the model must produce).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
    "orange": (255, 130, 0),
}
BACKGROUND = (255, 255, 255)

# Aspect ratios (w:h) with sampling weights: every ratio appears, the common ones more often.
ASPECTS: list[tuple[tuple[int, int], int]] = [
    ((1, 1), 3), ((4, 3), 2), ((3, 4), 2), ((2, 1), 1), ((1, 2), 1), ((3, 1), 1), ((1, 3), 1),
]


@dataclass
class Sample:
    """One generated sample.

    `turns` are (question, answer) pairs, the first question without the "<image>" placeholder (the
    writer adds it). `bench` holds the synth-bench fields (task, metric, ground truth) of the first
    turn for the held-out split; generators fill it when asked for a bench task."""

    domain: str
    turns: list[tuple[str, str]]
    image: Image.Image | None = None
    bench: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # what was drawn (tests check text against it)


def sample_rng(seed: int, split: str, index: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"sphinx-x-synth:{seed}:{split}:{index}")


def image_size(rng: random.Random, long_side: tuple[int, int] = (256, 384)) -> tuple[int, int]:
    """(width, height) with the longer side in `long_side` and a weighted random aspect ratio."""
    (aw, ah), = rng.choices([a for a, _ in ASPECTS], weights=[w for _, w in ASPECTS])
    long = rng.randrange(long_side[0], long_side[1] + 1, 8)
    if aw >= ah:
        return long, max(1, round(long * ah / aw))
    return max(1, round(long * aw / ah)), long


def canvas_box(size: tuple[int, int], box: tuple[float, float, float, float]) -> list[float]:
    """A pixel box of an image of `size` -> canvas-normalised (top-left anchor, README)."""
    return CanvasGeometry(size[0], size[1], "top-left").to_canvas(box)


def box_text(size: tuple[int, int], box: tuple[float, float, float, float]) -> str:
    return format_box(canvas_box(size, box))


def plural(word: str, n: int) -> str:
    return word if n == 1 else word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def join_words(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---- fonts -------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def font_dir() -> Path:
    """DejaVu fonts: matplotlib (a dependency) ships them, so rendering does not depend on the OS."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]


@lru_cache(maxsize=256)
def font(name: str, size: int) -> ImageFont.FreeTypeFont:
    path = font_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DejaVu font not found (it ships with matplotlib)")
    return ImageFont.truetype(str(path), size)
