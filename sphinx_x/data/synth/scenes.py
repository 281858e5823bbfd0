"""Scenes of 1-4 big coloured shapes on a plain background, and the tasks asked about them:
general VQA (colour, shape, count, spatial relation, POPE-style existence, multiple choice),
captions (short, detailed) and grounding (REC, grounded captions, detection).

Colours are unique within a scene, so "the red object" and "the red circle" always name one object.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from sphinx_x.data.geometry import format_phrase
from sphinx_x.data.synth.common import (
    BACKGROUND,
    COLORS,
    Sample,
    box_text,
    canvas_box,
    image_size,
    join_words,
    plural,
)

SHAPES = ["circle", "square", "triangle", "star"]

# SPHINX's task prompts.
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {}"
GROUNDED_CAPTION_PROMPT = "Describe the image concisely. Include the bounding box for each mentioned object."
DETECTION_PROMPT = "Detect all {} shown in the image."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


@dataclass
class Obj:
    color: str
    shape: str
    box: tuple[int, int, int, int]  # tight pixel box of what was drawn (x1, y1, x2, y2)

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def a_name(self) -> str:  # with its indefinite article
        return f"{'an' if self.color[0] in 'aeiou' else 'a'} {self.name}"

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


@dataclass
class Scene:
    size: tuple[int, int]
    objects: list[Obj]


# ---- drawing -----------------------------------------------------------------------------------
def _star(x: int, y: int, s: int) -> list[tuple[int, int]]:
    cx, cy, r_out = x + s / 2, y + s / 2, s / 2
    pts = []
    for k in range(10):
        r = r_out if k % 2 == 0 else r_out * 0.45
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((round(cx + r * math.cos(a)), round(cy + r * math.sin(a))))
    return pts


def _shape_points(shape: str, x: int, y: int, s: int) -> list[tuple[int, int]]:
    if shape == "triangle":
        return [(x + s // 2, y), (x + s, y + s), (x, y + s)]
    if shape == "star":
        return _star(x, y, s)
    return [(x, y), (x + s, y + s)]  # circle and square: their bounding square


def draw_object(draw: ImageDraw.ImageDraw, shape: str, color: tuple[int, int, int], x: int, y: int, s: int) -> None:
    pts = _shape_points(shape, x, y, s)
    if shape == "circle":
        draw.ellipse(pts, fill=color)
    elif shape == "square":
        draw.rectangle(pts, fill=color)
    else:
        draw.polygon(pts, fill=color)


def _tight_box(shape: str, x: int, y: int, s: int) -> tuple[int, int, int, int]:
    pts = _shape_points(shape, x, y, s)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def make_scene(rng: random.Random, n_objects: int | None = None, size: tuple[int, int] | None = None) -> Scene:
    """Place 1-4 non-overlapping objects with distinct colours (fewer if they do not fit)."""
    w, h = size or image_size(rng)
    n = n_objects or rng.choice([1, 2, 2, 3, 3, 4])
    short, ratio = min(w, h), max(w, h) / min(w, h)
    # Object side as a fraction of the short side: larger on elongated images, whose short side is a
    # small part of the canvas, so every object stays >= ~30 canvas pixels.
    if ratio >= 2.5:
        lo, hi = 0.55, 0.85
    elif ratio >= 1.8:
        lo, hi = 0.4, 0.65
    else:
        lo, hi = 0.3, 0.55 if n <= 2 else 0.42
    colors = rng.sample(list(COLORS), n)
    objects: list[Obj] = []
    gap = max(4, short // 20)
    for color in colors:
        shape = rng.choice(SHAPES)
        for _ in range(60):
            s = int(short * rng.uniform(lo, hi))
            x, y = rng.randrange(gap, max(gap + 1, w - s - gap)), rng.randrange(gap, max(gap + 1, h - s - gap))
            if all(x + s + gap <= o.box[0] or o.box[2] + gap <= x or y + s + gap <= o.box[1] or o.box[3] + gap <= y
                   for o in objects):
                objects.append(Obj(color, shape, (x, y, x + s, y + s)))  # square slot; tightened when drawn
                break
    return Scene((w, h), objects)


def render_scene(scene: Scene) -> Image.Image:
    """Draw the scene; each object's box becomes the tight box of its drawn shape."""
    img = Image.new("RGB", scene.size, BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x, y, s = o.box[0], o.box[1], o.box[2] - o.box[0]
        draw_object(draw, o.shape, COLORS[o.color], x, y, s)
        o.box = _tight_box(o.shape, x, y, s)
    return img


# ---- questions ---------------------------------------------------------------------------------
def _among(scene: Scene, subjects: list[Obj] | None) -> list[Obj]:
    return scene.objects if subjects is None else subjects


def revealed(scene: Scene, turns: list[tuple[str, str]]) -> list[Obj]:
    """Objects whose colour and shape words both occur in the dialogue so far: a later question about
    one of them ("What shape is the red object?" after "What color is the circle?" - "red") could be
    answered by copying from the text instead of reading the image. Conservative: colours are unique
    in a scene, so this never misses a named object (it may also catch an object named only in parts)."""
    text = " ".join(q + " " + a for q, a in turns).lower()
    return [o for o in scene.objects if o.color in text and o.shape in text]


def _left_to_right(scene: Scene) -> list[Obj]:
    return sorted(scene.objects, key=lambda o: (o.center[0], o.center[1]))


# `subjects` (training dialogues): the objects a question may be about; None = any. A dialogue leaves out
# objects its earlier turns already named, whose answers could be copied from the text (see `revealed`).
def ask_color(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str] | None:
    unique = [o for o in _among(scene, subjects) if sum(p.shape == o.shape for p in scene.objects) == 1]
    if not unique:
        return None
    o = rng.choice(unique)
    return f"What color is the {o.shape}?", o.color


def ask_shape(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str] | None:
    candidates = _among(scene, subjects)
    if not candidates:
        return None
    o = rng.choice(candidates)
    return f"What shape is the {o.color} object?", o.shape


def ask_count(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str]:
    if rng.random() < 0.3:
        return "How many objects are there?", str(len(scene.objects))
    present = [o.shape for o in scene.objects]
    shape = rng.choice(present) if rng.random() < 0.85 else rng.choice(SHAPES)
    return f"How many {plural(shape, 2)} are there?", str(present.count(shape))


def ask_spatial(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str] | None:
    """Left/right or above/below between two objects whose centres are clearly apart on that axis."""
    options = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            dx, dy = b.center[0] - a.center[0], b.center[1] - a.center[1]
            size = (a.box[2] - a.box[0] + b.box[2] - b.box[0]) / 2
            if abs(dx) > 0.6 * size:
                options.append((f"Is the {a.name} to the left or to the right of the {b.name}?",
                                "left" if dx > 0 else "right"))
            if abs(dy) > 0.6 * size:
                options.append((f"Is the {a.name} above or below the {b.name}?", "above" if dy > 0 else "below"))
    return rng.choice(options) if options else None


def ask_pope(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str] | None:
    """Existence with a 50% chance of an absent object; absent ones often share a colour or a shape
    with a present one (POPE's adversarial setting)."""
    if rng.random() < 0.5:
        candidates = _among(scene, subjects)
        return (f"Is there {rng.choice(candidates).a_name} in the image?", "yes") if candidates else None
    present = {o.name for o in scene.objects}
    near = [f"{o.color} {s}" for o in scene.objects for s in SHAPES] + [
        f"{c} {o.shape}" for o in scene.objects for c in COLORS
    ]
    absent = sorted({n for n in near if n not in present})
    name = rng.choice(absent)
    return f"Is there {'an' if name[0] in 'aeiou' else 'a'} {name} in the image?", "no"


def ask_mc(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str] | None:
    candidates = _among(scene, subjects)
    if not candidates:
        return None
    o = rng.choice(candidates)
    options = SHAPES[:]
    rng.shuffle(options)
    letters = "ABCD"
    lines = "\n".join(f"{letters[i]}. {s}" for i, s in enumerate(options))
    return f"What shape is the {o.color} object?\n{lines}\n{MC_SUFFIX}", letters[options.index(o.shape)]


def _where(scene: Scene, o: Obj) -> str:
    """Where the object's centre falls in a 3x3 split of the image, as a phrase."""
    w, h = scene.size
    cx, cy = o.center
    col = "left" if cx < w / 3 else "right" if cx > 2 * w / 3 else ""
    row = "top" if cy < h / 3 else "bottom" if cy > 2 * h / 3 else ""
    if row and col:
        return f"at the {row} {col}"
    if row or col:
        return f"on the {row or col}"
    return "in the center"


def caption_short(scene: Scene) -> str:
    names = [o.a_name for o in _left_to_right(scene)]
    text = join_words(names)
    return text[0].upper() + text[1:] + "."


def caption_detailed(scene: Scene) -> str:
    n = len(scene.objects)
    parts = [f"There {'is' if n == 1 else 'are'} {n} {plural('object', n)} on a white background."]
    parts += [f"{o.a_name.capitalize()} is {_where(scene, o)}." for o in _left_to_right(scene)]
    return " ".join(parts)


def ask_caption(scene: Scene, rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.5:
        return "Describe the image briefly.", caption_short(scene)
    return "Describe the image in detail.", caption_detailed(scene)


def ask_rec(scene: Scene, rng: random.Random, subjects: list[Obj] | None = None) -> tuple[str, str, Obj] | None:
    candidates = _among(scene, subjects)
    if not candidates:
        return None
    o = rng.choice(candidates)
    return REC_PROMPT.format(f"the {o.name}"), box_text(scene.size, o.box), o


def grounded_caption(scene: Scene) -> str:
    names = [format_phrase(o.a_name, canvas_box(scene.size, o.box)) for o in _left_to_right(scene)]
    text = join_words(names)
    return "<p>" + text[3:4].upper() + text[4:] + "."


def ask_detection(scene: Scene, rng: random.Random) -> tuple[str, str, list[Obj]]:
    """Detection of one shape: (question, answer, the objects it boxes)."""
    shape = rng.choice([o.shape for o in scene.objects]) if rng.random() < 0.85 else rng.choice(SHAPES)
    found = [o for o in _left_to_right(scene) if o.shape == shape]
    question = DETECTION_PROMPT.format(plural(shape, 2))
    if not found:
        return question, f"There are no {plural(shape, 2)} in the image.", []
    return question, format_phrase(plural(shape, len(found)), [canvas_box(scene.size, o.box) for o in found]), found


def boxed(scene: Scene, turns: list[tuple[str, str]]) -> list[Obj]:
    """Objects whose box an earlier answer already gave (a later turn could copy it)."""
    text = " ".join(a for _, a in turns)
    return [o for o in scene.objects if box_text(scene.size, o.box)[1:-1] in text]


def ask_grounding(scene: Scene, rng: random.Random, turns: list[tuple[str, str]]) -> tuple[str, str] | None:
    """A grounding turn whose answer gives no box that `turns` already gave (None if the kind drawn
    would): REC of an object not boxed yet, the grounded caption only first, detection of a shape
    none of whose objects is boxed yet."""
    done = boxed(scene, turns)
    r = rng.random()
    if r < 0.5:
        rec = ask_rec(scene, rng, [o for o in scene.objects if o not in done])
        return rec[:2] if rec is not None else None
    if r < 0.75:
        return (GROUNDED_CAPTION_PROMPT, grounded_caption(scene)) if not turns else None
    q, a, found = ask_detection(scene, rng)
    return (q, a) if not any(o in done for o in found) else None


# ---- domain generators -------------------------------------------------------------------------
VQA_ASKERS = {"color": ask_color, "shape": ask_shape, "count": ask_count, "spatial": ask_spatial,
              "pope": ask_pope, "mc": ask_mc}
VQA_TURNS = [4, 5, 6]  # questions per training scene
# Questions that must find the object the question names among several ("What color is the star?"). nano's LLM
# learns that lookup only after ~10,000-13,000 of them (the ladder's rungs 3 and 9), so training dialogues ask
# them first, on scenes that more often hold several objects than the benchmark's (docs/experiments.md, stop 30).
LOOKUP_ASKERS = ("color", "shape", "mc")
VQA_SCENE_OBJECTS = [1, 2, 3, 3, 4, 4]  # objects per training scene (make_scene's default draws 1, 2, 2, 3, 3, 4)
BENCH_METRICS = {"color": "exact", "shape": "exact", "count": "exact", "spatial": "exact", "pope": "pope",
                 "mc": "mc"}


def distinct_turns(askers: Iterable[Callable[[], tuple[str, str] | None]], want: int,
                   turns: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Call `askers` in order (lazily: each draws from the sample's RNG) and append answers to questions
    not asked yet to `turns` (a new list by default), until `want` turns; an asker may return None (no
    suitable object). Askers may look at `turns` as it grows."""
    turns = [] if turns is None else turns
    asked: set[str] = set()
    for ask in askers:
        qa = ask()
        if qa is not None and qa[0] not in asked:
            asked.add(qa[0])
            turns.append(qa)
        if len(turns) == want:
            break
    return turns


def _scene_sample(domain: str, rng: random.Random, n_objects: int | None = None) -> tuple[Sample, Scene]:
    scene = make_scene(rng, n_objects)
    img = render_scene(scene)
    meta = {"objects": [{"color": o.color, "shape": o.shape, "box": list(o.box)} for o in scene.objects]}
    return Sample(domain, [], img, meta=meta), scene


def _ask_unnamed(scene: Scene, rng: random.Random, turns: list[tuple[str, str]], name: str) -> tuple[str, str] | None:
    """A question of kind `name` about an object the dialogue's turns so far have not named."""
    named = revealed(scene, turns)
    return VQA_ASKERS[name](scene, rng, [o for o in scene.objects if o not in named])


def generate_vqa(rng: random.Random, task: str | None = None, lookups_first: bool = True) -> Sample:
    """Training: 4-6 different questions about one scene, lookup questions first. Bench: one question of `task`.
    `lookups_first=False`: the dialogues before that change (any kinds in random order, make_scene's object counts,
    no added count question), which the shipped nano tokenizer was trained on."""
    if task is not None:
        sample, scene = _scene_sample("vqa", rng)
        asker = VQA_ASKERS[task]
        qa = asker(scene, rng)
        while qa is None:  # color / spatial need a suitable scene: draw another one
            sample, scene = _scene_sample("vqa", rng)
            qa = asker(scene, rng)
        sample.turns = [qa]
        sample.bench = {"task": task, "metric": BENCH_METRICS[task], "answer": qa[1]}
        return sample
    if not lookups_first:
        sample, scene = _scene_sample("vqa", rng)
        names = list(VQA_ASKERS)
        want = rng.choice(VQA_TURNS)
        rng.shuffle(names)
        turns: list[tuple[str, str]] = []
        sample.turns = distinct_turns((lambda n=n: _ask_unnamed(scene, rng, turns, n) for n in names * 2), want, turns)
        return sample
    sample, scene = _scene_sample("vqa", rng, rng.choice(VQA_SCENE_OBJECTS))
    # Many questions per image: the image costs ~95 tokens of compute whatever the number of turns,
    # and each turn adds supervision for ~12 tokens, so dense dialogues learn faster per CPU second.
    # Questions about objects that earlier turns named are left out (`revealed`): their answers could
    # be copied from the dialogue, which teaches nothing about the image and is never possible in a
    # single-question evaluation.
    want = rng.choice(VQA_TURNS)
    names = [n for n in VQA_ASKERS if n not in LOOKUP_ASKERS]
    rng.shuffle(names)
    lookups = list(LOOKUP_ASKERS)
    rng.shuffle(lookups)
    turns = []
    # Lookup questions first, as long as an object is left to ask about; then rounds of the other kinds.
    sample.turns = distinct_turns((lambda n=n: _ask_unnamed(scene, rng, turns, n) for n in lookups * 3 + names * 2),
                                  want, turns)
    # Every dialogue counts something, at a random place: otherwise scenes of many objects, whose turns the lookups
    # fill, would rarely be counted and the answers would lean to small counts (the model then answers "1").
    if not any(q.startswith("How many") for q, _ in sample.turns):
        sample.turns.insert(rng.randrange(len(sample.turns) + 1), ask_count(scene, rng))
    return sample


def generate_caption(rng: random.Random, task: str | None = None) -> Sample:
    sample, scene = _scene_sample("caption", rng)
    q, a = ask_caption(scene, rng)
    sample.turns = [(q, a)]
    if task is not None:
        sample.bench = {"task": "caption", "metric": "anls", "answers": [a]}
    return sample


def generate_grounding(rng: random.Random, task: str | None = None, rec_first: bool = True) -> Sample:
    """Training: 2-3 different grounding questions about one scene, the first a box question (REC) about one of its
    objects. Bench: one question of `task` ("rec"). `rec_first=False`: the dialogues before that change (the grounded
    caption, detection or REC first), which the shipped nano tokenizer was trained on."""
    sample, scene = _scene_sample("grounding", rng)
    if task == "rec":
        q, a, o = ask_rec(scene, rng)
        sample.turns = [(q, a)]
        w, h = scene.size
        sample.bench = {"task": "rec", "metric": "rec", "gt_box": list(o.box), "width": w, "height": h}
        return sample
    turns: list[tuple[str, str]] = []
    if rec_first:
        # A box question first, as lookups come first in the VQA dialogues: from a start that knows boxes, the
        # quickstart's REC was 42.5 against 30.0 with the usual dialogues (docs/experiments.md, stop 36, seed 0).
        # The grounded caption, asked only first, then no longer occurs.
        turns.append(ask_rec(scene, rng)[:2])
    want = rng.choice([2, 3])  # different questions, none answerable by copying an earlier box
    sample.turns = distinct_turns((lambda: ask_grounding(scene, rng, turns) for _ in range(12)), want, turns)
    return sample
