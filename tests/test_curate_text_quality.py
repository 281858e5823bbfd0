"""Text filters of the PDF builder: normalisation, line rejection reasons, merging split lines,
de-hyphenation, text density."""

from __future__ import annotations

import pytest

from sphinx_x.curate.text_quality import (
    LinePiece,
    QualityConfig,
    dehyphenate,
    line_rejection,
    merge_split_lines,
    normalize_text,
    printable_ratio,
    text_density,
)

CFG = QualityConfig()


def test_normalize_removes_invisible_and_collapses_spaces():
    assert normalize_text("  co\u00adop\u200beration\tis  \u00a0 good ") == "cooperation is good"
    assert normalize_text("e\u0301") == "\u00e9"  # NFC


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("   ", "empty"),
    ("bad \ufffd glyph", "replacement_char"),
    ("bell\x07here", "control_char"),
    ("\ue000\ue001\ue002 ab", "low_printable"),  # private-use glyphs from a font without ToUnicode
    ("A clean line, with punctuation: 3.5%!", None),
    ("Ünïcödé ελληνικά 中文", None),
])
def test_line_rejection_reasons(text, reason):
    assert line_rejection(text, CFG) == reason


def test_printable_ratio_counts_spaces_as_printable():
    assert printable_ratio("a b") == 1.0
    assert printable_ratio("ab\ue000\ue001") == 0.5


def test_text_density_is_chars_per_square_inch():
    assert text_density(72, 72.0, 72.0) == pytest.approx(72.0)
    assert text_density(100, 144.0, 72.0) == pytest.approx(50.0)


def _piece(text, x0, x1, y0=100.0, y1=112.0, block=0, size=10.0):
    return LinePiece(text, (x0, y0, x1, y1), size, (1.0, 0.0), block)


def test_merge_joins_pieces_of_one_visual_line_with_a_space_for_a_gap():
    lines, merges = merge_split_lines([_piece("Hello", 50, 80), _piece("World", 83, 110)], CFG)
    assert merges == 1 and [ln.text for ln in lines] == ["Hello World"]
    assert lines[0].box == (50, 100.0, 110, 112.0)
    lines, _ = merge_split_lines([_piece("Hel", 50, 70), _piece("lo", 70.5, 80)], CFG)
    assert [ln.text for ln in lines] == ["Hello"]  # touching pieces: no word space


def test_merge_never_joins_columns_rows_or_blocks():
    cols = [_piece("left column", 50, 200), _piece("right column", 330, 480)]
    assert [ln.text for ln in merge_split_lines(cols, CFG)[0]] == ["left column", "right column"]
    rows = [_piece("first", 50, 80), _piece("second", 82, 120, y0=114, y1=126)]
    assert merge_split_lines(rows, CFG)[1] == 0
    blocks = [_piece("a", 50, 60, block=0), _piece("b", 61, 70, block=1)]
    assert merge_split_lines(blocks, CFG)[1] == 0


def test_dehyphenate_joins_break_hyphens_only():
    assert dehyphenate(["a trans-", "lation of", "the text"]) == ["a translation", "of", "the text"]
    assert dehyphenate(["send an e-", "Mail now"]) == ["send an e-", "Mail now"]  # capital: real hyphen
    assert dehyphenate(["well-", "known"]) == ["wellknown"]  # the emptied line is dropped
    assert dehyphenate(["pre-", "2000 era"]) == ["pre-", "2000 era"]
