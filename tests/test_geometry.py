"""Geometry in text: exact formats, round trips (hypothesis) and the tolerant parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphinx_x.data.geometry import (
    format_box,
    format_boxes,
    format_mark,
    format_phrase,
    format_point,
    parse_box,
    parse_boxes,
    parse_marks,
    parse_phrases,
    parse_points,
)

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
box = st.lists(unit, min_size=4, max_size=4)
point = st.lists(unit, min_size=2, max_size=2)
phrase = st.text(st.characters(blacklist_characters="<>[]", blacklist_categories=("Cs",)), min_size=1).filter(
    lambda s: s.strip() == s and s
)


def close(a: list[float], b: list[float], tol: float = 0.005 + 1e-9) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_exact_formats() -> None:
    assert format_box([0.467, 0.44, 0.49, 0.5]) == "[0.47, 0.44, 0.49, 0.50]"
    assert format_point([0.56, 0.2449]) == "[0.56, 0.24]"
    assert format_boxes([[0.16, 0.5, 0.48, 0.64], [0.16, 0.64, 0.48, 0.74]]) == (
        "[0.16, 0.50, 0.48, 0.64; 0.16, 0.64, 0.48, 0.74]"
    )
    assert format_phrase("a red circle", [0.1, 0.2, 0.3, 0.4]) == "<p>a red circle</p> [0.10, 0.20, 0.30, 0.40]"
    assert format_phrase("two", [[0, 0, 1, 1], [0.5, 0.5, 1, 1]]) == (
        "<p>two</p> [0.00, 0.00, 1.00, 1.00; 0.50, 0.50, 1.00, 1.00]"
    )
    assert format_mark(3, [0.56, 0.24]) == "<Mark 3> [0.56, 0.24]"


def test_format_clamps_and_rejects_wrong_arity() -> None:
    assert format_box([-0.2, 0.5, 1.7, 1.0]) == "[0.00, 0.50, 1.00, 1.00]"
    with pytest.raises(ValueError, match="box needs 4"):
        format_box([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="point needs 2"):
        format_point([0.1])
    with pytest.raises(ValueError, match="at least one box"):
        format_boxes([])


@settings(max_examples=200, deadline=None)
@given(st.lists(box, min_size=1, max_size=4))
def test_boxes_round_trip(boxes: list[list[float]]) -> None:
    parsed = parse_boxes(format_boxes(boxes))
    assert len(parsed) == len(boxes)
    assert all(close(p, b) for p, b in zip(parsed, boxes))
    assert close(parse_box(format_box(boxes[0])), boxes[0])


@settings(max_examples=200, deadline=None)
@given(point)
def test_point_round_trip(pt: list[float]) -> None:
    (parsed,) = parse_points(format_point(pt))
    assert close(parsed, pt)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(phrase, st.lists(box, min_size=1, max_size=3)), min_size=1, max_size=3))
def test_phrases_round_trip(items: list[tuple[str, list[list[float]]]]) -> None:
    text = "Here: " + ", ".join(format_phrase(p, b) for p, b in items) + "."
    parsed = parse_phrases(text)
    assert [p for p, _ in parsed] == [p for p, _ in items]
    for (_, got), (_, want) in zip(parsed, items):
        assert len(got) == len(want) and all(close(g, w) for g, w in zip(got, want))
    assert len(parse_boxes(text)) == sum(len(b) for _, b in items)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 99), point), min_size=1, max_size=5))
def test_marks_round_trip(marks: list[tuple[int, list[float]]]) -> None:
    text = "Describe " + ", ".join(format_mark(i, p) for i, p in marks)
    parsed = parse_marks(text)
    assert [i for i, _ in parsed] == [i for i, _ in marks]
    assert all(close(g, w) for (_, g), (_, w) in zip(parsed, marks))


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_parsers_never_raise(text: str) -> None:
    for parse in (parse_boxes, parse_points, parse_phrases, parse_marks, parse_box):
        parse(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="[]<>;,.0123456789-+eE pMark/ ", max_size=80))
def test_parsers_never_raise_on_bracket_soup(text: str) -> None:
    for parse in (parse_boxes, parse_points, parse_phrases, parse_marks):
        out = parse(text)
        assert isinstance(out, list)


def test_tolerant_parsing_examples() -> None:
    # missing decimals, extra spaces, no spaces
    assert parse_boxes("[0, 0.5, 1, 1]") == [[0.0, 0.5, 1.0, 1.0]]
    assert parse_boxes("[  0.1 ,0.2,0.3 ,   0.4 ]") == [[0.1, 0.2, 0.3, 0.4]]
    # out-of-range values are clamped
    assert parse_boxes("[-0.3, 0.2, 1.25, 7]") == [[0.0, 0.2, 1.0, 1.0]]
    # a broken group is ignored, the good ones kept in order
    assert parse_boxes("[0.1, 0.2, 0.3] [0.1, x, 0.3, 0.4] [0.5, 0.5, 0.6, 0.6] [0.7, 0.7") == [[0.5, 0.5, 0.6, 0.6]]
    # an unclosed outer bracket does not hide the inner group
    assert parse_boxes("[[0.1, 0.2, 0.3, 0.4]") == [[0.1, 0.2, 0.3, 0.4]]
    # ';'-separated groups are flattened; a forgotten ';' between two boxes still yields two
    assert parse_boxes("[0.1,0.1,0.2,0.2; 0.3,0.3,0.4,0.4]") == [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]]
    assert parse_boxes("[0.1,0.1,0.2,0.2, 0.3,0.3,0.4,0.4]") == [[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.4, 0.4]]
    # boxes and points are told apart by arity
    assert parse_points("at [0.5, 0.25] in [0.1, 0.1, 0.2, 0.2]") == [[0.5, 0.25]]
    assert parse_box("no box here") is None
    # clamp=False reads boxes written in pixels as they are
    assert parse_boxes("[12, 30.5, 200, 1e3]", clamp=False) == [[12.0, 30.5, 200.0, 1000.0]]
    assert parse_box("box: [-3, 4, 5, 6]", clamp=False) == [-3.0, 4.0, 5.0, 6.0]
    assert parse_boxes("") == [] and parse_boxes(None) == []  # type: ignore[arg-type]


def test_phrase_and_mark_examples() -> None:
    text = (
        "A <p>red square</p> [0.1, 0.1, 0.3, 0.3] next to "
        "<p>blue circles</p>[0.5,0.5,0.7,0.7;0.8,0.1,0.9,0.2] and <p>x</p>"
    )
    assert parse_phrases(text) == [
        ("red square", [[0.1, 0.1, 0.3, 0.3]]),
        ("blue circles", [[0.5, 0.5, 0.7, 0.7], [0.8, 0.1, 0.9, 0.2]]),
        ("x", []),
    ]
    assert parse_marks("<Mark 1> [0.56, 0.24], <Mark12>[0.1,0.2], <Mark 3> nothing, <Mark 4> [0.1, 0.1, 0.2, 0.2]") == [
        (1, [0.56, 0.24]),
        (12, [0.1, 0.2]),
        (4, [0.1, 0.1, 0.2, 0.2]),
    ]
