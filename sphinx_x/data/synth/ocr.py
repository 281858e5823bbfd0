"""OCR-intensive samples: rendered words, lines and small pages (DejaVu fonts, several sizes) with
transcription, text spotting with boxes (SPHINX's prompt) and layout blocks (SPHINX's prompt).

Text stays learnable for the nano model: words from a small vocabulary, and fonts sized in *canvas*
pixels (the image's longer side maps to 256), at least 28 px for words, so glyphs are ~20 px tall.
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from sphinx_x.data.geometry import format_phrase
from sphinx_x.data.synth.common import FONT_FILES, Sample, canvas_box, font, image_size

WORDS = [
    "cat", "dog", "sun", "tree", "book", "moon", "fish", "bird", "cake", "milk", "rain", "lamp",
    "door", "ship", "road", "king", "gold", "snow", "leaf", "rose", "frog", "bell", "kite", "wolf",
]
INKS = [(0, 0, 0), (20, 30, 120), (120, 20, 20)]
PAPERS = [(255, 255, 255), (250, 245, 225), (230, 240, 250)]
CANVAS = 256  # the nano canvas side the font sizes are chosen for

# How often each kind of OCR training sample is drawn (a synth-bench row is always one word). Words 9 in 15 rather
# than 3 in 9: the one-stage run forgets less of the stand-ins' reading (the warm-up model reads 74% of 200 held-out
# words, the quickstart's model 50.0 / 50.5 with 3 in 9 and 55.5 / 55.0 with 9 in 15, seeds 0 / 1; stop 42).
KIND_WEIGHTS = {"word": 9, "line": 2, "spotting": 2, "page": 2}
TRANSCRIBE_PROMPT = "What is the text in the image?"
SPOTTING_PROMPT = "Detect all regions in the image that contain text and identify their content."
LAYOUT_PROMPT = "Detect the layout of the document in the image."
TITLE_PROMPT = "What is the title of the document?"

Box = tuple[int, int, int, int]


def _fit(draw: ImageDraw.ImageDraw, text: str, face: str, max_w: float, px_per_canvas: float,
         rng: random.Random, lo: int, hi: int):
    """A font whose size in canvas pixels is drawn from [lo, hi], shrunk to fit `max_w`; None if even
    `lo` does not fit."""
    size = rng.randint(lo, hi)
    while size >= lo:
        f = font(face, max(6, round(size * px_per_canvas)))
        x1, _, x2, _ = draw.textbbox((0, 0), text, font=f)
        if x2 - x1 <= max_w:
            return f
        size -= 2
    return None


def _page(rng: random.Random, aspects_wide: bool) -> tuple[Image.Image, ImageDraw.ImageDraw, float]:
    for _ in range(20):
        w, h = image_size(rng)
        if (w >= h) == aspects_wide or w == h:
            break
    img = Image.new("RGB", (w, h), rng.choice(PAPERS))
    return img, ImageDraw.Draw(img), max(w, h) / CANVAS


def _place_words(rng: random.Random, words: list[str], task: str) -> tuple[Image.Image, list[tuple[str, Box]]] | None:
    """Draw `words` on separate rows (one row for a line), returning their tight ink boxes."""
    img, draw, k = _page(rng, aspects_wide=True)
    w, h = img.size
    face, ink = rng.choice(FONT_FILES), rng.choice(INKS)
    placed: list[tuple[str, Box]] = []
    if task == "line":
        text = " ".join(words)
        f = _fit(draw, text, face, 0.9 * w, k, rng, 28, 44)
        if f is None:
            return None
        x1, y1, x2, y2 = draw.textbbox((0, 0), text, font=f)
        if y2 - y1 > 0.9 * h:
            return None
        x = rng.uniform(0.03 * w, w - (x2 - x1) - 0.03 * w) - x1
        y = rng.uniform(0.03 * h, h - (y2 - y1) - 0.03 * h) - y1
        draw.text((x, y), text, font=f, fill=ink)
        return img, [(text, tuple(round(v) for v in draw.textbbox((x, y), text, font=f)))]
    rows = len(words)
    row_h = h / rows
    for i, word in enumerate(words):
        f = _fit(draw, word, face, 0.9 * w, k, rng, 28, 44 if rows == 1 else 36)
        if f is None:
            return None
        x1, y1, x2, y2 = draw.textbbox((0, 0), word, font=f)
        if y2 - y1 > 0.85 * row_h:
            return None
        x = rng.uniform(0.03 * w, w - (x2 - x1) - 0.03 * w) - x1
        y = i * row_h + rng.uniform(0.05 * row_h, row_h - (y2 - y1) - 0.05 * row_h) - y1
        draw.text((x, y), word, font=f, fill=ink)
        placed.append((word, tuple(round(v) for v in draw.textbbox((x, y), word, font=f))))
    return img, placed


def _union(boxes: list[Box]) -> Box:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _document(rng: random.Random) -> tuple[Image.Image, dict[str, list[tuple[str, Box]]]] | None:
    """A small page: a bold title and a text block of 2-3 one-word lines below it."""
    img, draw, k = _page(rng, aspects_wide=False)
    w, h = img.size
    ink = rng.choice(INKS)
    title = rng.choice(WORDS)
    body = rng.sample([x for x in WORDS if x != title], rng.choice([2, 3]))
    lines = [(title, "DejaVuSans-Bold.ttf", 34, 44)] + [(b, "DejaVuSans.ttf", 26, 30) for b in body]
    heights, fonts = [], []
    for text, face, lo, hi in lines:
        f = _fit(draw, text, face, 0.9 * w, k, rng, lo, hi)
        if f is None:
            return None
        fonts.append(f)
        _, y1, _, y2 = draw.textbbox((0, 0), text, font=f)
        heights.append(y2 - y1)
    gap = 0.25 * heights[-1]
    total = sum(heights) + gap * (len(lines) + 1) + heights[0] * 0.5  # extra space under the title
    if total > 0.95 * h:
        return None
    y = rng.uniform(0.02 * h, h - total) + gap
    blocks: dict[str, list[tuple[str, Box]]] = {"title": [], "text": []}
    for i, ((text, _, _, _), f, lh) in enumerate(zip(lines, fonts, heights)):
        x1, y1, x2, _ = draw.textbbox((0, 0), text, font=f)
        x = 0.05 * w - x1
        draw.text((x, y - y1), text, font=f, fill=ink)
        box = tuple(round(v) for v in draw.textbbox((x, y - y1), text, font=f))
        blocks["title" if i == 0 else "text"].append((text, box))
        y += lh + gap + (heights[0] * 0.5 if i == 0 else 0)
    return img, blocks


def _spotting_answer(size: tuple[int, int], placed: list[tuple[str, Box]]) -> str:
    return ", ".join(format_phrase(t, canvas_box(size, b)) for t, b in placed)


def generate_ocr(rng: random.Random, task: str | None = None, kind_weights: dict[str, int] | None = None) -> Sample:
    """One OCR sample: a benchmark row (`task` "ocr") is one word; a training sample is of a kind drawn with
    `kind_weights` (default KIND_WEIGHTS)."""
    weights = KIND_WEIGHTS if kind_weights is None else kind_weights
    kind = "word" if task == "ocr" else rng.choices(list(weights), list(weights.values()))[0]
    while True:  # a draw that does not fit (rare) is simply redrawn from the same stream
        if kind == "page":
            doc = _document(rng)
            if doc is None:
                continue
            img, blocks = doc
            title, text = blocks["title"], blocks["text"]
            layout = (f"{format_phrase('title', canvas_box(img.size, title[0][1]))}, "
                      f"{format_phrase('text', canvas_box(img.size, _union([b for _, b in text])))}")
            turns = [(TITLE_PROMPT, title[0][0]), (LAYOUT_PROMPT, layout),
                     (TRANSCRIBE_PROMPT, "\n".join(t for t, _ in title + text))]
            rng.shuffle(turns)
            meta = {"words": [{"text": t, "box": list(b)} for t, b in title + text]}
            return Sample("ocr", turns[: rng.choice([1, 2, 3])], img, meta=meta)
        n = {"word": 1, "line": 2, "spotting": rng.choice([2, 3])}[kind]
        words = rng.sample(WORDS, n)
        drawn = _place_words(rng, words, kind)
        if drawn is None:
            continue
        img, placed = drawn
        meta = {"words": [{"text": t, "box": list(b)} for t, b in placed]}
        if kind == "spotting":
            turns = [(SPOTTING_PROMPT, _spotting_answer(img.size, placed))]
        else:
            turns = [(TRANSCRIBE_PROMPT, placed[0][0])]
            if kind == "word" and task is None and rng.random() < 0.3:
                turns.append((SPOTTING_PROMPT, _spotting_answer(img.size, placed)))
        sample = Sample("ocr", turns, img, meta=meta)
        if task is not None:
            sample.bench = {"task": "ocr", "metric": "exact", "answer": placed[0][0]}
        return sample
