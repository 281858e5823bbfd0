"""Set-of-Mark: numbered marks drawn on the objects of a scene, and the unmarked variant where the
question names each mark by its point, "<Mark i> [x, y]" (README "How an image becomes tokens")."""

from __future__ import annotations

import random

from PIL import ImageDraw

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.data.geometry import format_mark
from sphinx_x.data.synth.common import Sample, font
from sphinx_x.data.synth.scenes import Obj, Scene, make_scene, render_scene

SOM_PROMPT = "Provide a detailed description for each of the marks I've offered: {}"


def _draw_marks(img, scene: Scene, order: list[Obj]) -> None:
    """A white disc with a black outline and the mark number, centred on each object."""
    draw = ImageDraw.Draw(img)
    for i, o in enumerate(order, start=1):
        cx, cy = o.center
        r = max(6, round(0.25 * (o.box[2] - o.box[0])))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 255, 255), outline=(0, 0, 0), width=max(1, r // 6))
        f = font("DejaVuSans-Bold.ttf", max(8, round(1.4 * r)))
        draw.text((cx, cy), str(i), fill=(0, 0, 0), font=f, anchor="mm")


def _mark_points(scene: Scene, order: list[Obj]) -> list[list[float]]:
    geom = CanvasGeometry(scene.size[0], scene.size[1], "top-left")
    return [geom.to_canvas(o.center) for o in order]


def generate_som(rng: random.Random, task: str | None = None) -> Sample:
    scene = make_scene(rng, rng.choice([2, 3, 3, 4]))
    img = render_scene(scene)
    order = scene.objects[:]
    rng.shuffle(order)
    marked = task == "som" or rng.random() < 0.6
    if marked:
        _draw_marks(img, scene, order)
    points = _mark_points(scene, order)
    meta = {"objects": [{"color": o.color, "shape": o.shape, "box": list(o.box)} for o in scene.objects],
            "marks": [{"index": i + 1, "point": p} for i, p in enumerate(points)], "marked": marked}
    sample = Sample("som", [], img, meta=meta)
    k = rng.randrange(len(order))
    o = order[k]
    attr = rng.choice(["color", "shape"])
    answer = o.color if attr == "color" else o.shape
    if marked:
        question = f"What {attr} is the object marked {k + 1}?"
    else:
        question = f"What {attr} is the object at {format_mark(k + 1, points[k])}?"
    sample.turns = [(question, answer)]
    if task is not None:
        sample.bench = {"task": "som", "metric": "exact", "answer": answer}
        return sample
    # Describe every mark, the SPHINX SoM prompt (the marks' points are given in both variants).
    refs = ", ".join(format_mark(i + 1, p) for i, p in enumerate(points))
    desc = " ".join(f"{format_mark(i + 1, p)}: {ob.a_name}." for i, (p, ob) in enumerate(zip(points, order)))
    if rng.random() < 0.5:
        sample.turns.insert(0, (SOM_PROMPT.format(refs), desc))
    else:
        sample.turns.append((SOM_PROMPT.format(refs), desc))
    return sample
