"""The ladder's rungs: small generated tasks of rising difficulty, each with a fixed-seed held-out set.

Images are drawn with the synthetic corpus's own pieces (`draw_object` through `render_scene`, `COLORS`,
`SHAPES`, the REC prompt and box text), on 256x256 white squares: no grid cell is skipped, so every image
is the same number of visual tokens. Every item records what was drawn (`objects`, `meta`) so tests can
check the answer against the picture, and a `key` naming the sample: the training stream never yields a
held-out key, so the held-out set is disjoint from what the model trains on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw

from sphinx_x.data.synth.common import BACKGROUND, COLORS, FONT_FILES, box_text, font
from sphinx_x.data.synth.ocr import INKS, TRANSCRIBE_PROMPT
from sphinx_x.data.synth.scenes import REC_PROMPT, SHAPES, Obj, Scene, make_scene, render_scene

SIDE = 256
COLOR_NAMES = tuple(COLORS)


@dataclass
class Item:
    question: str
    answer: str
    image: Image.Image | None
    key: tuple  # identity of the sample (held-out keys never appear in training)
    objects: list[Obj] = field(default_factory=list)  # drawn objects, tight pixel boxes
    target: Obj | None = None  # the object the question is about
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    rung: int
    name: str
    title: str
    make: Callable[[random.Random], Item]
    metric: str = "exact"  # "exact" (string equality) or "iou" (Acc@0.5 on one box)
    max_new_tokens: int = 6
    answers: tuple[str, ...] | None = None  # closed answer set (the CNN ceiling needs one)
    questions: tuple[str, ...] | None = None  # closed question set (the CNN ceiling's question input)
    probes: Callable[[Item], list[tuple[str, str]]] | None = None  # binding: one question per object
    describe: Callable[[Item], str] | None = None  # the scene written as text (the no-image control)
    has_image: bool = True


# ---- drawing helpers ---------------------------------------------------------------------------
def _render(objects: list[Obj]) -> tuple[Image.Image, list[Obj]]:
    scene = Scene((SIDE, SIDE), objects)
    return render_scene(scene), scene.objects  # render_scene tightens each box to the drawn shape


def _key(objects: list[Obj], question: str) -> tuple:
    return (question, tuple((o.color, o.shape, o.box) for o in objects))


def _single(rng: random.Random, lo: float, hi: float) -> tuple[Image.Image, Obj]:
    s = int(SIDE * rng.uniform(lo, hi))
    x, y = rng.randrange(8, SIDE - s - 8), rng.randrange(8, SIDE - s - 8)
    img, objs = _render([Obj(rng.choice(COLOR_NAMES), rng.choice(SHAPES), (x, y, x + s, y + s))])
    return img, objs[0]


def _scene_words(item: Item, with_boxes: bool = False) -> str:
    parts = [f"{o.color} {o.shape}" + (f" {box_text((SIDE, SIDE), o.box)}" if with_boxes else "")
             for o in sorted(item.objects, key=lambda o: (o.box[1], o.box[0]))]
    return "Scene: " + ", ".join(parts) + ". "


# ---- rungs -------------------------------------------------------------------------------------
def make_color(rng: random.Random) -> Item:
    img, o = _single(rng, 0.3, 0.6)
    q = "What color is the object?"
    return Item(q, o.color, img, _key([o], q), [o], o)


def make_shape(rng: random.Random) -> Item:
    img, o = _single(rng, 0.3, 0.6)
    q = "What shape is the object?"
    return Item(q, o.shape, img, _key([o], q), [o], o)


def make_bind_color(rng: random.Random) -> Item:
    """2-4 objects with distinct shapes and colours, one per quadrant; ask the colour of one shape."""
    n = rng.choice([2, 3, 4])
    half = SIDE // 2
    objects = []
    for shape, color, quad in zip(rng.sample(SHAPES, n), rng.sample(COLOR_NAMES, n), rng.sample(range(4), n)):
        s = int(half * rng.uniform(0.55, 0.85))
        x = (quad % 2) * half + rng.randrange(3, half - s - 2)
        y = (quad // 2) * half + rng.randrange(3, half - s - 2)
        objects.append(Obj(color, shape, (x, y, x + s, y + s)))
    img, objects = _render(objects)
    target = rng.choice(objects)
    q = f"What color is the {target.shape}?"
    return Item(q, target.color, img, _key(objects, q), objects, target)


def _scene_of_several(rng: random.Random) -> Scene:
    """The corpus's `make_scene` on the ladder's square image, redrawn until at least 2 of 2-4 objects fit."""
    for _ in range(50):
        scene = make_scene(rng, n_objects=rng.choice([2, 3, 4]), size=(SIDE, SIDE))
        if len(scene.objects) >= 2:
            break
    return scene


def _distinct_free_pick(rng: random.Random) -> tuple[Image.Image, list[Obj], Obj]:
    """2-4 objects of distinct shapes and colours placed anywhere (the corpus's `make_scene`), so an object may
    straddle the sub-images and share a view with others; the image, its objects and the one asked about."""
    scene = _scene_of_several(rng)
    for o, shape in zip(scene.objects, rng.sample(SHAPES, len(scene.objects))):
        o.shape = shape
    img = render_scene(scene)
    return img, scene.objects, rng.choice(scene.objects)


def make_bind_color_free(rng: random.Random) -> Item:
    """Rung 3's question on synth-bench's layout (`_distinct_free_pick`)."""
    img, objects, target = _distinct_free_pick(rng)
    q = f"What color is the {target.shape}?"
    return Item(q, target.color, img, _key(objects, q), objects, target)


def make_bind_shape_free(rng: random.Random) -> Item:
    """Rung 9 the other way round, as synth-bench's shape question: the shape of the object named by its colour
    ("What shape is the red object?"), on the same layouts."""
    img, objects, target = _distinct_free_pick(rng)
    q = f"What shape is the {target.color} object?"
    return Item(q, target.shape, img, _key(objects, q), objects, target)


def make_count(rng: random.Random) -> Item:
    """1-6 objects in distinct cells of a 3x3 grid (colours and shapes may repeat)."""
    n = rng.randint(1, 6)
    cell = SIDE // 3
    objects = []
    for c in rng.sample(range(9), n):
        s = int(cell * rng.uniform(0.45, 0.8))
        x = (c % 3) * cell + rng.randrange(3, cell - s - 2)
        y = (c // 3) * cell + rng.randrange(3, cell - s - 2)
        objects.append(Obj(rng.choice(COLOR_NAMES), rng.choice(SHAPES), (x, y, x + s, y + s)))
    img, objects = _render(objects)
    q = "How many objects are there?"
    return Item(q, str(n), img, _key(objects, q), objects)


def make_box(rng: random.Random) -> Item:
    img, o = _single(rng, 0.15, 0.6)
    q = REC_PROMPT.format("the object")
    return Item(q, box_text((SIDE, SIDE), o.box), img, _key([o], q), [o], o)


def make_bind_box(rng: random.Random) -> Item:
    """2-4 non-overlapping objects (the corpus's `make_scene`); the box of the one named by colour and shape."""
    scene = _scene_of_several(rng)
    img = render_scene(scene)
    target = rng.choice(scene.objects)
    q = REC_PROMPT.format(f"the {target.name}")
    return Item(q, box_text((SIDE, SIDE), target.box), img, _key(scene.objects, q), scene.objects, target)


@lru_cache(maxsize=1)
def lexicon() -> tuple[str, ...]:
    """500 pronounceable pseudo-words of 4-6 letters (fixed seed): reading them needs the letters,
    not a memorised shape of a few familiar words."""
    rng = random.Random("sphinx-x-ladder-lexicon")
    cons, vows = "bcdfghjklmnprstvz", "aeiou"
    words: set[str] = set()
    while len(words) < 500:
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(2))
        if rng.random() < 0.5:
            w += rng.choice(cons)
        words.add(w)
    return tuple(sorted(words))


def render_word(word: str, face: str, size: int, xy: tuple[int, int], ink: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    ImageDraw.Draw(img).text(xy, word, font=font(face, size), fill=ink)
    return img


def make_word(rng: random.Random) -> Item:
    word = rng.choice(lexicon())
    face, size, ink = rng.choice(FONT_FILES), rng.randint(28, 40), rng.choice(INKS)
    x1, y1, x2, y2 = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), word, font=font(face, size))
    x = rng.randrange(4 - x1, SIDE - x2 - 4)
    y = rng.randrange(4 - y1, SIDE - y2 - 4)
    meta = dict(word=word, face=face, size=size, xy=(x, y), ink=ink)
    return Item(TRANSCRIBE_PROMPT, word, render_word(word, face, size, (x, y), ink),
                ("word", word, face, size, x, y, ink), meta=meta)


def make_add(rng: random.Random) -> Item:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    q = f"What is {a} + {b}?"
    return Item(q, str(a + b), None, ("add", a, b), meta=dict(a=a, b=b))


def _color_probes(item: Item) -> list[tuple[str, str]]:
    return [(f"What color is the {o.shape}?", o.color) for o in item.objects]


def _shape_probes(item: Item) -> list[tuple[str, str]]:
    return [(f"What shape is the {o.color} object?", o.shape) for o in item.objects]


def _box_probes(item: Item) -> list[tuple[str, str]]:
    return [(REC_PROMPT.format(f"the {o.name}"), box_text((SIDE, SIDE), o.box)) for o in item.objects]


TASKS: dict[int, Task] = {t.rung: t for t in [
    Task(1, "color", "colour of the only object", make_color, answers=COLOR_NAMES,
         questions=("What color is the object?",), describe=_scene_words),
    Task(2, "shape", "shape of the only object", make_shape, answers=tuple(SHAPES),
         questions=("What shape is the object?",), describe=_scene_words),
    Task(3, "bind-color", "colour of the named shape, 2-4 objects", make_bind_color, answers=COLOR_NAMES,
         questions=tuple(f"What color is the {s}?" for s in SHAPES), probes=_color_probes, describe=_scene_words),
    Task(4, "count", "count 1-6 objects", make_count, answers=tuple(str(i) for i in range(1, 7)),
         questions=("How many objects are there?",), describe=_scene_words),
    Task(5, "box", "box of the only object (Acc@0.5)", make_box, metric="iou", max_new_tokens=28,
         describe=lambda it: _scene_words(it, with_boxes=True)),
    Task(6, "bind-box", "box of the named object, 2-4 objects (Acc@0.5)", make_bind_box, metric="iou",
         max_new_tokens=28, probes=_box_probes, describe=lambda it: _scene_words(it, with_boxes=True)),
    Task(7, "word", "transcribe one word (500-word lexicon)", make_word, max_new_tokens=8),
    Task(8, "add", "two-digit addition, text only", make_add, has_image=False),
    Task(9, "bind-color-free", "colour of the named shape, 2-4 objects placed anywhere", make_bind_color_free,
         answers=COLOR_NAMES, questions=tuple(f"What color is the {s}?" for s in SHAPES), probes=_color_probes,
         describe=_scene_words),
    Task(10, "bind-shape-free", "shape of the object named by colour, 2-4 objects placed anywhere",
         make_bind_shape_free, answers=tuple(SHAPES),
         questions=tuple(f"What shape is the {c} object?" for c in COLOR_NAMES), probes=_shape_probes,
         describe=_scene_words),
]}


def task_by_name(spec: str) -> Task:
    """A rung by number ("3") or name ("bind-color")."""
    for t in TASKS.values():
        if spec in (str(t.rung), t.name):
            return t
    raise ValueError(f"unknown rung {spec!r}; rungs: " + ", ".join(f"{t.rung}={t.name}" for t in TASKS.values()))


def heldout(task: Task, n: int) -> list[Item]:
    """The fixed held-out set: the first `n` distinct samples of the task's held-out stream."""
    rng = random.Random(f"sphinx-x-ladder:{task.name}:heldout")
    items, seen = [], set()
    while len(items) < n:
        it = task.make(rng)
        if it.key not in seen:
            seen.add(it.key)
            items.append(it)
    return items


def train_stream(task: Task, seed: int, exclude: set[tuple]) -> Iterator[Item]:
    """Fresh training samples forever (deterministic per seed), never one whose key is held out."""
    rng = random.Random(f"sphinx-x-ladder:{task.name}:train:{seed}")
    while True:
        it = task.make(rng)
        if it.key not in exclude:
            yield it
