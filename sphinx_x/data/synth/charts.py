"""Bar charts with known values, drawn with PIL: chart-to-table and value questions (ChartQA at toy
scale). Values are distinct integers 1-9 so "which is highest" has one answer and the relaxed metric
(5% of the ground truth) means reading the exact number."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from sphinx_x.data.synth.common import COLORS, Sample, font, image_size

LABELS = "ABCDEF"
MAX_VALUE = 10
TABLE_PROMPT = "Convert the chart to a table."


def _draw_chart(rng: random.Random, labels: list[str], values: list[int], with_values: bool) -> Image.Image:
    for _ in range(20):  # charts read best when not very tall and thin
        w, h = image_size(rng)
        if w >= h * 0.75:
            break
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    k = max(w, h) / 256  # image pixels per canvas pixel
    f = font("DejaVuSans-Bold.ttf", max(8, round(24 * k)))
    left, right = 0.08 * w, 0.97 * w
    top, bottom = 0.06 * h + (26 * k if with_values else 0), h - 30 * k
    draw.line([(left, bottom), (right, bottom)], fill=(0, 0, 0), width=max(1, round(2 * k)))
    draw.line([(left, top), (left, bottom)], fill=(0, 0, 0), width=max(1, round(2 * k)))
    slot = (right - left) / len(values)
    colors = rng.sample(list(COLORS.values()), len(values))
    for i, (label, v, c) in enumerate(zip(labels, values, colors)):
        x1, x2 = left + slot * (i + 0.2), left + slot * (i + 0.8)
        y1 = bottom - (bottom - top) * v / MAX_VALUE
        draw.rectangle([x1, y1, x2, bottom], fill=c)
        draw.text(((x1 + x2) / 2, bottom + 2 * k), label, font=f, fill=(0, 0, 0), anchor="mt")
        if with_values:
            draw.text(((x1 + x2) / 2, y1 - 2 * k), str(v), font=f, fill=(0, 0, 0), anchor="mb")
    return img


def generate_chart(rng: random.Random, task: str | None = None) -> Sample:
    n = rng.choice([2, 3, 3, 4])
    labels = sorted(rng.sample(LABELS, n))
    values = rng.sample(range(1, MAX_VALUE), n)
    with_values = rng.random() < 0.7
    img = _draw_chart(rng, labels, values, with_values)
    k = rng.randrange(n)
    value_q = (f"What is the value of {labels[k]}?", str(values[k]))
    table = "label | value\n" + "\n".join(f"{lab} | {v}" for lab, v in zip(labels, values))
    meta = {"labels": labels, "values": values, "with_values": with_values}
    if task is not None:
        return Sample("chart", [value_q], img, meta=meta,
                      bench={"task": "chart", "metric": "relaxed", "answer": value_q[1]})
    best = labels[values.index(max(values))]
    turns = [value_q, ("Which label has the highest value?", best), (TABLE_PROMPT, table)]
    rng.shuffle(turns)
    return Sample("chart", turns[: rng.choice([2, 3])], img, meta=meta)
