"""The Set-of-Mark set: marks drawn on annotated objects, descriptions per mark, training samples on
the UNMARKED image whose text names each mark by a point inside its object, "<Mark i> [x, y]".

Without a captioner the descriptions are templated from the annotations (category, position, size);
with one, the marked image is captioned (the annotation categories are given as hints) and each
"Mark i: ..." line of the answer becomes "<Mark i> [x, y]: ...". Marks missing from the answer
fall back to the template and are counted.

Output directory:
    marked/<id>.jpg     the marked images (what the captioner sees)
    som.jsonl           training samples; "image" is the annotation's file_name under --images
    marks.jsonl         per image: every mark's annotation id, points, label box (for inspection)
    mix.yaml, summary.json, caption_cache/
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from sphinx_x.canvas import CanvasGeometry, ImageError, load_image
from sphinx_x.curate.captioner import Captioner, CaptionError
from sphinx_x.curate.coco import AnnotationError, CocoImage, CocoObject, decode_mask, load_coco, mark_point
from sphinx_x.curate.marks import draw_marks, font_size_for, label_size, place_labels
from sphinx_x.curate.ocr_builder import DATA_TYPE
from sphinx_x.data.geometry import format_mark
from sphinx_x.data.synth.som import SOM_PROMPT
from sphinx_x.fileio import write_atomic

CAPTION_INSTRUCTION = (
    "The image has {n} numbered marks, coloured labels placed on objects. For each mark, write one detailed "
    "sentence about the marked object: what it is, its appearance (colour, material, pose, action) and where it "
    "is relative to other objects. Answer with exactly one line per mark, in the form 'Mark N: description', "
    "for marks 1 to {n}. Hints from the annotations: {hints}."
)
_CAPTION_LINE = re.compile(r"^\W*mark\s*(\d+)\s*[>\])]?\s*[:.\-\u2013\u2014]\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SomOptions:
    style: str = "mask"  # what is drawn besides the label: "mask" (tint + outline), "box", or "label"
    max_marks: int = 20  # per image; the largest objects are kept
    min_area_fraction: float = 0.001  # objects smaller than this part of the image get no mark
    anchor: str = "top-left"
    jpeg_quality: int = 90

    def __post_init__(self):
        if self.style not in ("mask", "box", "label"):
            raise ValueError(f"style must be 'mask', 'box' or 'label', got {self.style!r}")
        if self.max_marks < 1:
            raise ValueError(f"max_marks must be >= 1, got {self.max_marks}")


@dataclass
class Mark:
    number: int
    obj: CocoObject
    mask: np.ndarray
    point_px: tuple[float, float]
    point: list[float]  # canvas-normalised
    area_fraction: float


def _region(x: float, y: float) -> str:
    """Where a point (fractions of the image) is, in words."""
    col = "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "")
    row = "top" if y < 1 / 3 else ("bottom" if y > 2 / 3 else "")
    return f"{row} {col}".strip() or "centre"


def template_description(mark: Mark, width: int, height: int) -> str:
    size = "small" if mark.area_fraction < 0.01 else ("medium-sized" if mark.area_fraction < 0.1 else "large")
    what = f"a group of {mark.obj.category}" if mark.obj.iscrowd else f"a {size} {mark.obj.category}"
    x, y = mark.point_px
    return f"{what} in the {_region(x / width, y / height)} of the image."


def parse_caption(text: str) -> dict[int, str]:
    """{mark number: description} from "Mark N: ..." lines; the first line for a number wins."""
    out: dict[int, str] = {}
    for line in text.splitlines():
        m = _CAPTION_LINE.match(line)
        if m and m.group(2) and int(m.group(1)) not in out:
            out[int(m.group(1))] = m.group(2)
    return out


def select_marks(image: CocoImage, options: SomOptions, skipped: Counter) -> list[Mark]:
    """Decode, filter and number an image's objects (numbered top to bottom, then left to right)."""
    geom = CanvasGeometry(image.width, image.height, options.anchor)
    total = float(image.width * image.height)
    cands = []
    for obj in image.objects:
        try:
            mask = decode_mask(obj, image.height, image.width)
        except AnnotationError:
            skipped["objects:bad_segmentation"] += 1
            continue
        area = float(mask.sum()) / total
        if area < options.min_area_fraction:
            skipped["objects:too_small"] += 1
            continue
        cands.append((obj, mask, area))
    if len(cands) > options.max_marks:
        skipped["objects:over_max_marks"] += len(cands) - options.max_marks
        cands = sorted(cands, key=lambda c: -c[2])[: options.max_marks]
    marks = []
    for obj, mask, area in cands:
        px = mark_point(mask, obj.box)
        marks.append(Mark(0, obj, mask, px, geom.to_canvas(px), area))
    marks.sort(key=lambda m: (m.point_px[1], m.point_px[0]))
    for i, m in enumerate(marks, start=1):
        m.number = i
    return marks


def marks_prompt(marks: list[Mark]) -> str:
    return SOM_PROMPT.format(", ".join(format_mark(m.number, m.point) for m in marks))


def _image_id(image: CocoImage) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image.file_name).stem)[:60] or "image"
    return f"{image.image_id}-{stem}"


def build_som(annotations: str | Path, images_dir: str | Path, out: str | Path, options: SomOptions | None = None,
              captioner: Captioner | None = None, progress: bool = True) -> dict:
    """Build the Set-of-Mark set; returns the run summary (also written to summary.json)."""
    options = options or SomOptions()
    images_dir, out = Path(images_dir), Path(out)
    (out / "marked").mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    samples, mark_records, problems = [], [], []
    for image in tqdm(load_coco(annotations), desc="curate som", unit="img", disable=not progress):
        try:
            pixels = load_image(images_dir / image.file_name)
        except ImageError as e:
            counts["images:unreadable"] += 1
            problems.append({"image": image.file_name, "reason": str(e)})
            continue
        if pixels.size != (image.width, image.height):
            counts["images:size_mismatch"] += 1
            problems.append({"image": image.file_name, "reason": f"file is {pixels.width}x{pixels.height}, "
                             f"annotations say {image.width}x{image.height}"})
            continue
        marks = select_marks(image, options, counts)
        if not marks:
            counts["images:no_objects"] += 1
            continue
        fs = font_size_for(image.width, image.height)
        placement = place_labels([m.point_px for m in marks], [label_size(m.number, fs) for m in marks],
                                 [m.area_fraction for m in marks], image.width, image.height)
        counts["labels:overlapping"] += placement.overlapping
        marked = draw_marks(pixels, [m.point_px for m in marks], placement.boxes, [m.number for m in marks],
                            boxes=[m.obj.box for m in marks] if options.style == "box" else None,
                            masks=[m.mask for m in marks] if options.style == "mask" else None)
        buf = io.BytesIO()
        # 4:4:4 chroma: subsampling smears the small saturated labels the captioner has to read.
        marked.save(buf, format="JPEG", quality=options.jpeg_quality, subsampling=0)
        image_id = _image_id(image)
        write_atomic(out / "marked" / f"{image_id}.jpg", buf.getvalue())
        descriptions = {m.number: template_description(m, image.width, image.height) for m in marks}
        if captioner is not None:
            hints = "; ".join(f"Mark {m.number}: {m.obj.category}" for m in marks)
            try:
                answer = captioner.caption(buf.getvalue(), CAPTION_INSTRUCTION.format(n=len(marks), hints=hints))
            except CaptionError as e:  # not written: a rerun asks again (cached answers are kept)
                counts["images:caption_failed"] += 1
                problems.append({"image": image.file_name, "reason": str(e)})
                continue
            parsed = parse_caption(answer)
            for m in marks:
                if m.number in parsed:
                    descriptions[m.number] = parsed[m.number]
                    counts["marks:captioned"] += 1
                else:
                    counts["marks:caption_missing_template_used"] += 1
        answer_text = "\n".join(f"{format_mark(m.number, m.point)}: {descriptions[m.number]}" for m in marks)
        samples.append({"id": f"som-{image_id}", "image": image.file_name, "conversations": [
            {"from": "human", "value": marks_prompt(marks)},  # no placeholder: the image goes after BOS
            {"from": "gpt", "value": answer_text}]})
        mark_records.append({"id": f"som-{image_id}", "image": image.file_name,
                             "marked_image": f"marked/{image_id}.jpg", "marks": [
                                 {"number": m.number, "ann_id": m.obj.ann_id, "category": m.obj.category,
                                  "point_px": list(m.point_px), "point": m.point, "box_px": list(m.obj.box),
                                  "label_box_px": list(placement.boxes[k])} for k, m in enumerate(marks)]})
        counts["images:ok"] += 1
        counts["marks:total"] += len(marks)
    write_atomic(out / "som.jsonl", "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_atomic(out / "marks.jsonl", "".join(json.dumps(r) + "\n" for r in mark_records))
    root = os.path.relpath(images_dir.resolve(), out.resolve())
    if samples:
        write_atomic(out / "mix.yaml", yaml.safe_dump({"META": [{"path": "som.jsonl", "type": DATA_TYPE,
                                                                 "root": root}]}, sort_keys=False))
    else:
        (out / "mix.yaml").unlink(missing_ok=True)
    summary = {"samples": len(samples), "counts": dict(counts), "problems": problems,
               "captioner": dict(captioner.stats) if captioner is not None else None}
    write_atomic(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False))
    return summary
