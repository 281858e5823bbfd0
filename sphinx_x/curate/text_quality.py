"""Quality filters for text extracted from PDFs.

Extraction is never clean: fonts without a ToUnicode map give U+FFFD or private-use code points,
broken content streams give control characters, and extractors split one visual line into several
when fonts change or glyphs are spaced. These helpers decide what is kept. Every rejection has a
short reason code so the builder can count it (nothing is dropped silently).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"
# Invisible characters PDFs carry around words (soft hyphen, zero-width space/joiners, BOM): they
# are removed rather than counted as damage, since the rendered page shows nothing for them.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))
_SPACES = re.compile(" {2,}")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the filters (defaults fit born-digital documents)."""

    min_printable_ratio: float = 0.9  # of a line's characters (private-use, unassigned, format chars are not)
    min_text_density: float = 0.2  # kept characters per square inch of page; below: the page is not a text page
    max_bad_line_fraction: float = 0.1  # more rejected lines than this and the whole page is rejected
    dehyphenate: bool = False  # join "exam-" + "ple" across lines in the transcription
    merge_gap_em: float = 1.0  # merge split line pieces whose horizontal gap is below this many font sizes
    merge_min_overlap: float = 0.5  # ... and whose vertical overlap is at least this fraction of the lower one


def normalize_text(text: str) -> str:
    """NFC, tabs and non-breaking spaces to plain spaces, invisible characters removed, runs of
    spaces collapsed, ends stripped."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = text.replace("\t", " ").replace("\u00a0", " ")
    return _SPACES.sub(" ", text).strip()


def printable_ratio(text: str) -> float:
    """Fraction of characters that are printable (spaces count as printable); 1.0 for an empty string."""
    if not text:
        return 1.0
    return sum(1 for c in text if c.isprintable() or c == " ") / len(text)


def line_rejection(text: str, config: QualityConfig) -> str | None:
    """Why a (normalised) line is unusable, or None when it is kept."""
    if not text.strip():
        return "empty"
    if REPLACEMENT_CHAR in text:
        return "replacement_char"
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "control_char"
    if printable_ratio(text) < config.min_printable_ratio:
        return "low_printable"
    return None


def text_density(num_chars: int, width_pt: float, height_pt: float) -> float:
    """Characters per square inch of a page given in PDF points (72 per inch)."""
    area_in2 = max(width_pt, 1e-6) * max(height_pt, 1e-6) / (72.0 * 72.0)
    return num_chars / area_in2


# ---- merging pieces of one visual line ---------------------------------------------------------
@dataclass
class LinePiece:
    """A line as the extractor returned it, in PDF points (unrotated page space)."""

    text: str
    box: tuple[float, float, float, float]
    size: float  # dominant font size
    direction: tuple[float, float] = (1.0, 0.0)
    block: int = 0


def _vertical_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    inter = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, inter) / max(min(a[3] - a[1], b[3] - b[1]), 1e-6)


def should_merge(a: LinePiece, b: LinePiece, config: QualityConfig) -> bool:
    """`b` continues `a` on the same visual line: same block and direction, horizontal text, `b`
    starts right of `a` within a small gap, and the two overlap vertically. Text in the other
    column of a two-column page fails the gap test, so columns are never joined."""
    if a.block != b.block or a.direction != b.direction or abs(a.direction[1]) > 1e-3 or a.direction[0] <= 0:
        return False
    gap = b.box[0] - a.box[2]
    em = max(a.size, b.size, 1.0)
    return -0.25 * em <= gap <= config.merge_gap_em * em and _vertical_overlap(a.box, b.box) >= config.merge_min_overlap


def merge_split_lines(pieces: list[LinePiece], config: QualityConfig) -> tuple[list[LinePiece], int]:
    """Join consecutive pieces of the same visual line; returns (lines, number of merges)."""
    out: list[LinePiece] = []
    merges = 0
    for p in pieces:
        if out and should_merge(out[-1], p, config):
            a = out[-1]
            em = max(a.size, p.size, 1.0)
            # A gap of at least a fifth of an em is a word space the extractor did not emit.
            sep = " " if (p.box[0] - a.box[2]) > 0.2 * em and not a.text.endswith(" ") else ""
            box = (min(a.box[0], p.box[0]), min(a.box[1], p.box[1]), max(a.box[2], p.box[2]), max(a.box[3], p.box[3]))
            out[-1] = LinePiece(a.text + sep + p.text, box, max(a.size, p.size), a.direction, a.block)
            merges += 1
        else:
            out.append(p)
    return out, merges


# ---- de-hyphenation ----------------------------------------------------------------------------
def dehyphenate(lines: list[str]) -> list[str]:
    """Rejoin words hyphenated across line ends: ["a trans-", "lation here"] -> ["a translation", "here"].

    Only a hyphen right after a letter, followed by a line starting with a lowercase letter, is a
    break hyphen; "e-" + "Mail" or "pre-" + "2000" keep theirs. A line emptied by the move is dropped."""
    out = list(lines)
    i = 0
    while i < len(out) - 1:
        cur, nxt = out[i], out[i + 1]
        if len(cur) >= 2 and cur.endswith("-") and cur[-2].isalpha() and nxt[:1].islower():
            head, _, rest = nxt.partition(" ")
            out[i] = cur[:-1] + head
            if rest.strip():
                out[i + 1] = rest.strip()
            else:
                del out[i + 1]
                continue  # the joined line may end in another break hyphen
        i += 1
    return out
