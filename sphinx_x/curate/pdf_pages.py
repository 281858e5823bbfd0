"""PDF pages to images plus text with boxes, through PyMuPDF.

PyMuPDF returns text coordinates in the *unrotated* page space while `get_pixmap` renders the page
as displayed (its /Rotate applied). Every box therefore goes through `page.rotation_matrix` and then
the render scale, so boxes land on the pixels of the rendered image for rotated pages too.
Boxes here are in rendered-image pixels; the canvas mapping (README "How an image becomes tokens") is the builder's job.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

from sphinx_x.curate.text_quality import (
    LinePiece,
    QualityConfig,
    line_rejection,
    merge_split_lines,
    normalize_text,
    text_density,
)

# Expand ligatures (no TEXT_PRESERVE_LIGATURES), keep unknown glyphs as U+FFFD (no
# TEXT_CID_FOR_UNKNOWN_UNICODE) so the filters see them, ignore text outside the media box.
# Images come from `get_image_info`, which does not copy image bytes as "dict" would.
TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP

Box = tuple[float, float, float, float]


class PdfOpenError(Exception):
    """A PDF cannot be used. `reason` is one of: empty, corrupt, encrypted, no_pages."""

    def __init__(self, path: str | Path, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}: {detail}")


def open_pdf(path: str | Path) -> pymupdf.Document:
    """Open a PDF for extraction; raises PdfOpenError naming the file and what is wrong.

    A document with only an owner password (printing/copy restrictions) opens and is used: its
    pages render and its text extracts like any other. A user password makes it `encrypted`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise PdfOpenError(path, "empty", "file has 0 bytes")
        doc = pymupdf.open(path, filetype="pdf")
    except pymupdf.EmptyFileError as e:
        raise PdfOpenError(path, "empty", str(e)) from e
    except (pymupdf.FileDataError, RuntimeError, ValueError) as e:
        raise PdfOpenError(path, "corrupt", str(e)) from e
    except OSError as e:
        raise PdfOpenError(path, "corrupt", f"cannot read file ({e.strerror or e})") from e
    if doc.needs_pass and not doc.authenticate(""):
        doc.close()
        raise PdfOpenError(path, "encrypted", "a user password is required to open it")
    if doc.page_count == 0:
        doc.close()
        raise PdfOpenError(path, "no_pages", "document has no pages")
    return doc


# ---- page content ------------------------------------------------------------------------------
@dataclass
class TextLine:
    text: str
    box: Box  # rendered-image pixels
    size: float  # dominant font size in points
    block: int


@dataclass
class Word:
    text: str
    box: Box


@dataclass
class LayoutBlock:
    kind: str  # "text", "title" or "image"
    box: Box


@dataclass
class PageContent:
    """One rendered page and what was kept from it; `rejected_lines` counts drops by reason."""

    number: int  # 0-based
    pixmap: pymupdf.Pixmap
    lines: list[TextLine] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    blocks: list[LayoutBlock] = field(default_factory=list)
    rejected_lines: Counter = field(default_factory=Counter)
    total_lines: int = 0
    merged_lines: int = 0
    density: float = 0.0  # kept characters per square inch
    dropped_images: int = 0  # image blocks too small to be layout regions

    @property
    def size(self) -> tuple[int, int]:
        return self.pixmap.width, self.pixmap.height

    @property
    def num_chars(self) -> int:
        return sum(len(ln.text) for ln in self.lines)


def render_scale(page: pymupdf.Page, dpi: float, max_side: int | None) -> float:
    """Pixels per point: `dpi / 72`, reduced so the longer rendered side is at most `max_side`."""
    scale = dpi / 72.0
    longest = max(page.rect.width, page.rect.height)
    if max_side and longest * scale > max_side:
        scale = max_side / longest
    return scale


def _to_pixels(rect: pymupdf.Rect, matrix: pymupdf.Matrix, size: tuple[int, int]) -> Box:
    r = pymupdf.Rect(rect) * matrix  # the transformed rectangle is re-normalised (x0 <= x1)
    w, h = size
    return (min(max(r.x0, 0.0), w), min(max(r.y0, 0.0), h), min(max(r.x1, 0.0), w), min(max(r.y1, 0.0), h))


def _dominant_size(spans: list[dict]) -> float:
    by_size = Counter()
    for s in spans:
        by_size[round(float(s["size"]), 1)] += len(s["text"])
    return by_size.most_common(1)[0][0] if by_size else 0.0


def extract_page(
    page: pymupdf.Page,
    dpi: float = 150,
    max_side: int | None = 1536,
    quality: QualityConfig | None = None,
    title_ratio: float = 1.25,
    min_image_fraction: float = 0.005,
) -> PageContent:
    """Render `page` and extract its kept lines, words and layout blocks (boxes in pixels).

    A text block is a "title" when its dominant font size is at least `title_ratio` times the
    page's body size (the character-weighted most common size) and it has at most 3 lines. Image
    blocks smaller than `min_image_fraction` of the page (bullets, rules, logos) are not layout."""
    quality = quality or QualityConfig()
    scale = render_scale(page, dpi, max_side)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(scale, scale), alpha=False)
    matrix = page.rotation_matrix * pymupdf.Matrix(scale, scale)
    content = PageContent(number=page.number, pixmap=pix)

    textpage = page.get_textpage(flags=TEXT_FLAGS)
    blocks = page.get_text("dict", textpage=textpage, sort=False)["blocks"]
    pieces: list[LinePiece] = []
    rejected_keys: set[tuple[int, int]] = set()
    layout_text: list[tuple[Box, float, int]] = []  # (box in points, size, line count) per text block
    all_spans: list[dict] = []
    for b_idx, block in enumerate(blocks):
        if block.get("type") != 0:
            continue
        block_lines = 0
        block_spans: list[dict] = []
        for l_idx, line in enumerate(block["lines"]):
            spans = [s for s in line["spans"] if s["text"]]
            text = normalize_text("".join(s["text"] for s in spans))
            if not text:
                continue  # whitespace-only lines are layout artefacts, not text
            content.total_lines += 1
            block_lines += 1
            block_spans.extend(spans)
            reason = line_rejection(text, quality)
            if reason:
                content.rejected_lines[reason] += 1
                rejected_keys.add((b_idx, l_idx))
                continue
            pieces.append(LinePiece(text, tuple(line["bbox"]), _dominant_size(spans), tuple(line["dir"]), b_idx))
        if block_lines:
            all_spans.extend(block_spans)
            layout_text.append((tuple(block["bbox"]), _dominant_size(block_spans), block_lines))

    merged, content.merged_lines = merge_split_lines(pieces, quality)
    content.lines = [TextLine(p.text, _to_pixels(p.box, matrix, content.size), p.size, p.block) for p in merged]

    for x0, y0, x1, y1, text, b_idx, l_idx, _ in page.get_text("words", textpage=textpage, sort=False):
        text = normalize_text(text)
        if text and (b_idx, l_idx) not in rejected_keys:  # words of rejected lines go with their line
            content.words.append(Word(text, _to_pixels(pymupdf.Rect(x0, y0, x1, y1), matrix, content.size)))

    body = _dominant_size(all_spans)
    for box, size, n_lines in layout_text:
        kind = "title" if body and size >= title_ratio * body and n_lines <= 3 else "text"
        content.blocks.append(LayoutBlock(kind, _to_pixels(pymupdf.Rect(box), matrix, content.size)))
    page_area = abs(page.rect)
    unrotated = page.rect * page.derotation_matrix  # the visible page in the space images are given in
    for info in page.get_image_info():
        rect = pymupdf.Rect(info["bbox"]) & unrotated  # only the visible part of an image counts
        if rect.is_empty or abs(rect) < min_image_fraction * page_area:
            content.dropped_images += 1
            continue
        content.blocks.append(LayoutBlock("image", _to_pixels(rect, matrix, content.size)))
    content.blocks.sort(key=lambda b: (round(b.box[1]), round(b.box[0])))  # top to bottom, then left to right
    content.density = text_density(content.num_chars, page.rect.width, page.rect.height)
    return content


def page_rejection(content: PageContent, quality: QualityConfig) -> str | None:
    """Why a whole page yields no samples, or None. A page with many broken lines is dropped
    entirely: keeping its good remainder would teach transcriptions that skip visible text."""
    bad = sum(content.rejected_lines.values())
    if content.total_lines and bad > quality.max_bad_line_fraction * content.total_lines:
        return "garbled_text"
    if not content.lines:
        return "no_text"
    if content.density < quality.min_text_density:
        return "low_text_density"
    return None
