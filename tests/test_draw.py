"""Geometry in answers: parse, map to original pixels (both anchors), draw; a box survives the round trip."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.data.geometry import format_box, format_mark, format_phrase, format_point
from sphinx_x.infer.draw import PALETTE, answer_annotations, draw_annotations, draw_answer

W, H = 300, 150  # 2:1; canvas side 300 px, so 2-decimal canvas coordinates are exact multiples of 3 px


@pytest.mark.parametrize("anchor, box", [("top-left", (30, 15, 150, 90)), ("center", (30, 0, 150, 36))])
def test_box_round_trip_lands_on_the_same_pixels(anchor, box):
    blank = Image.new("RGB", (W, H), (255, 255, 255))
    reference = blank.copy()
    ImageDraw.Draw(reference).rectangle(box, outline=PALETTE[0], width=2)  # the box at known pixels
    assert np.asarray(reference)[box[1], box[0]].tolist() == list(PALETTE[0])

    geo = CanvasGeometry(W, H, anchor)
    answer = f"There is {format_phrase('a box', geo.to_canvas(box))} here."
    if anchor == "center":  # the offset really matters: the same pixels read as top-left would differ
        assert answer_annotations(answer, W, H, "top-left")[0].pixels != list(box)
    (ann,) = answer_annotations(answer, W, H, anchor)
    assert ann.label == "a box" and ann.kind == "box"
    assert [round(v) for v in ann.pixels] == list(box)
    redrawn = draw_annotations(blank, [ann], labels=False, line_width=2)
    assert np.array_equal(np.asarray(redrawn), np.asarray(reference))


def test_labels_for_phrases_marks_and_plain_coordinates():
    geo = CanvasGeometry(W, H, "top-left")
    answer = (f"{format_phrase('dog', [geo.to_canvas((0, 0, 60, 60)), geo.to_canvas((90, 30, 120, 60))])} and "
              f"{format_mark(2, geo.to_canvas((150, 75)))}; also {format_box(geo.to_canvas((3, 6, 9, 12)))} "
              f"and {format_point(geo.to_canvas((270, 120)))}")
    anns = answer_annotations(answer, W, H)
    assert [(a.kind, a.label) for a in anns] == [("box", "dog"), ("box", "dog"), ("point", "Mark 2"),
                                                 ("box", "1"), ("point", "2")]
    assert [round(v) for v in anns[2].pixels] == [150, 75]
    assert [round(v) for v in anns[4].pixels] == [270, 120]


def test_drawn_answer_has_its_label_and_outline(tmp_path):
    img = Image.new("RGB", (W, H), (255, 255, 255))
    answer = f"<p>cat</p> {format_box(CanvasGeometry(W, H).to_canvas((60, 60, 240, 135)))}"
    drawn, anns = draw_answer(img, answer)
    arr = np.asarray(drawn)
    assert arr[100, 60].tolist() == list(PALETTE[0])  # left edge of the box
    assert (arr[45:60, 60:90] != 255).any()  # the label tag sits just above the box
    assert (arr[100, 100] == 255).all()  # inside stays untouched
    drawn.save(tmp_path / "out.png")
    assert Image.open(tmp_path / "out.png").size == (W, H)


def test_no_geometry_draws_nothing():
    img = Image.new("RGB", (40, 20), (1, 2, 3))
    drawn, anns = draw_answer(img, "just words [not, numbers]")
    assert anns == [] and np.array_equal(np.asarray(drawn), np.asarray(img))
