"""What the page shows for an answer: the image with the answer's geometry drawn (`sphinx_x.infer.draw`,
the same parser and drawing as `sphinx-x chat --draw-boxes`), one table row per box or point, the
answer as chat text, and the status line."""

from __future__ import annotations

import html

from PIL import Image

from sphinx_x.infer.draw import Annotation, draw_answer
from sphinx_x.infer.generate import Generation

ANNOTATION_HEADERS = ["label", "answer (0-1)", "pixels"]


def overlay(image: Image.Image, answer: str, anchor: str) -> tuple[Image.Image, list[Annotation]]:
    """`image` with every box, point, `<p>` phrase and mark of `answer` drawn and labelled."""
    return draw_answer(image, answer, anchor)


def _coords(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values)


def annotation_rows(annotations: list[Annotation]) -> list[list[str]]:
    """One row per box (4 numbers) or point (2 numbers): its label, as written, and in image pixels."""
    return [[a.label, _coords(a.canvas, "g"), _coords(a.pixels, ".0f")] for a in annotations]


def chat_text(answer: str) -> str:
    """The answer as the chat shows it: HTML-escaped, so `<p>phrase</p>` and `<Mark 1>` stay visible."""
    return html.escape(answer, quote=False)


def status_line(done: Generation, drawn: int, has_image: bool) -> str:
    where = f"{drawn} box(es)/point(s) drawn on the image" if has_image else "no image to draw on"
    return f"Answered: {done.completion_tokens} token(s), finish reason `{done.finish_reason}`; {where}."
