"""The image-token layout: which sequence positions one image occupies (README "How an image becomes tokens").

One image is a run of slots: the global view, then one slot per grid cell in raster order. A view slot is
`[start] view tokens [end]` (`vision.tokens_per_view + 2` positions; the view's tokens are the blocks of
sphinx_x/vision.py), a skipped cell (sphinx_x/canvas.py decides which, from the image's size) is one `[skip]`
position. With `canvas.grid: 0` (the released single-view models) an image is its global view alone.

This module is the one owner of that layout: the data pipeline, inference prompts and the config checks count
positions with `visual_token_count` / `max_image_tokens`, and `SphinxX.image_embeddings` (sphinx_x/model.py)
builds the embeddings slot by slot from `image_slots`, so the ids and the embeddings cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from sphinx_x.config import ConfigError, VisionConfig

VIEW = "view"  # [start] view tokens [end]
SKIP = "skip"  # one [skip] token for a cell the image does not reach


def image_slots(skipped: Sequence[bool]) -> list[str]:
    """One image's slots in order: the global view, then per grid cell (raster order) a view or a skip."""
    return [VIEW] + [SKIP if cell else VIEW for cell in skipped]


def slots_token_count(skipped: Sequence[bool], vision: VisionConfig) -> int:
    """Positions one image takes given its per-cell skip flags (raster order)."""
    view = vision.tokens_per_view + 2
    return sum(view if slot == VIEW else 1 for slot in image_slots(skipped))


def visual_token_count(width: int, height: int, vision: VisionConfig) -> int:
    """Positions an image of `width x height` pixels takes: [start] view [end] per encoded view, one skip
    token per skipped cell."""
    from sphinx_x.canvas import skipped_cells  # canvas imports torch; data/encode.py imports this module light

    return slots_token_count(skipped_cells(width, height, vision.canvas), vision)


def max_image_tokens(vision: VisionConfig) -> int:
    """Positions of the largest image: every cell encoded (no skip), whatever its size."""
    return slots_token_count([False] * vision.canvas.grid ** 2, vision)


def check_max_len(max_len: int | None, vision: VisionConfig, field: str = "max_len") -> None:
    """ConfigError unless a sample of `max_len` positions holds the largest image plus BOS and one text
    token (`None` = no limit). `field` names the setting in the message (e.g. "data.max_len")."""
    if max_len is None:
        return
    need = max_image_tokens(vision)
    if max_len < need + 2:
        g = vision.canvas.grid
        views = "global view only" if g == 0 else f"global view + {g}x{g} cells"
        raise ConfigError(
            f"{field} {max_len} is shorter than one image's visual tokens: a full image ({views}) takes {need} "
            f"tokens (plus BOS and at least one text token = {need + 2}); raise {field}"
        )


def check_image_fits(max_len: int | None, count: int) -> None:
    """ConfigError when an image of `count` positions cannot follow BOS within `max_len` (`None` = no limit)."""
    if max_len is not None and count + 1 > max_len:
        raise ConfigError(
            f"max_len {max_len} is shorter than one image's visual tokens ({count} + BOS); raise max_len"
        )
