"""Convert standard benchmark annotations into benchmark row files (`sphinx-x convert-bench`).

Input layouts (as distributed by LLaMA2-Accessory `accessory/eval_mm/annotations/`, plus POPE's own):

eval_mm unified list -- one JSON array per benchmark, e.g. `textvqa_val.json`, `docvqa_val.json`,
`chartqa_test_human.json`, `gqa_testdev_balanced.json`, `MME_benchmark.json`, `refcoco_val.json`:
    [{"image_path": "data/textvqa/train_images/003a8ae2ef43b901.jpg", "question": "what is the brand ...?",
      "question_id": 34602, "dataset_name": "textvqa_val", "gt_answers": "dakota"}, ...]
  `image_path` is relative to the eval_mm directory (the parent of `annotations/`), which is the default
  --image-root. Per benchmark:
  - VQAv2 / OK-VQA / TextVQA / VizWiz (metric vqa): `gt_answers` is ONE answer; eval_mm scores with the
    official annotation file instead. Pass it with --official (VQA layout: {"annotations": [{"question_id",
    "answers": [{"answer": ...}, ...]}, ...]}) to get all 10 answers per question; without it each row has
    the single answer, which the vqa metric scores as a normalised exact match.
  - DocVQA (anls): same, with the official `val_v1.0.json` ({"data": [{"questionId", "answers": [...]}]}).
  - ChartQA (relaxed), GQA (exact): `gt_answers` is the answer; `question_id` is -1 (ChartQA) or the
    image id (GQA), so it is kept as `source_id` and rows get their own ids.
  - MME (mme): `gt_answers` "Yes"/"No"; the sub-task is `dataset_name` minus its "MME_" prefix;
    `image_path` is the image id (MME's acc+ pairs the two questions of one image).
  - RefCOCO / RefCOCO+ / RefCOCOg (rec): `question` is the referring expression (the benchmark's prompt
    adds SPHINX's REC instruction), `gt_answers` the box [x1, y1, x2, y2] in pixels of the original image,
    and `question_id` "height{H}_width{W}" the image size.

POPE (AoiDragon/POPE `output/coco/coco_pope_{random,popular,adversarial}.json`) -- JSON lines:
    {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a snowboard in the image?",
     "label": "yes"}
  `image` is relative to the COCO val2014 directory (--image-root, default: the file's directory); the
  category (split) comes from the benchmark name (pope_random, ...), else from the file name.
  An eval_mm-style list with yes/no `gt_answers` is read as well.

Output: one JSON row per question (see `sphinx_x.eval.benchmarks`): `id` ("NAME-000000", ...), `source_id`
(the original question_id), `question`, `image` (relative to the output file's directory), the metric's
ground-truth fields and, where there is one, `category`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sphinx_x.errors import RowError
from sphinx_x.eval.benchmarks import BENCHMARKS, BenchmarkError, BenchmarkSpec
from sphinx_x.eval.metrics import check_row
from sphinx_x.fileio import write_atomic

Item = dict[str, Any]
_HW = re.compile(r"height(\d+)_width(\d+)")
POPE_SPLITS = ("random", "popular", "adversarial")


def convertible() -> list[str]:
    return [name for name, spec in BENCHMARKS.items() if spec.source]


# ---- reading inputs -----------------------------------------------------------------------------
def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise BenchmarkError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_items(path: Path) -> list[tuple[str, Item]]:
    """(where, item) pairs from a JSON array (eval_mm) or a JSON-lines file (POPE)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else None
    if text is None:
        raise BenchmarkError(f"{path}: annotation file not found")
    if text.lstrip().startswith("["):
        data = _load_json(path)
        pairs = [(f"{path}: item {i}", item) for i, item in enumerate(data)]
    else:
        pairs = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    pairs.append((f"{path}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BenchmarkError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    for where, item in pairs:
        if not isinstance(item, dict):
            raise BenchmarkError(f"{where}: expected a JSON object, got {type(item).__name__}")
    if not pairs:
        raise BenchmarkError(f"{path}: no annotations")
    return pairs


def _need(where: str, item: Item, *names: str) -> list[Any]:
    for name in names:
        if name not in item:
            raise BenchmarkError(f"{where}: missing field '{name}' (has: {', '.join(item) or 'nothing'})")
    return [item[n] for n in names]


def read_official_answers(path: Path) -> dict[str, list[str]]:
    """question id -> all answers, from a VQA annotation file or a DocVQA `val_v1.0.json`."""
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):  # VQAv2 / OK-VQA / TextVQA / VizWiz
        out = {}
        for i, ann in enumerate(data["annotations"]):
            qid, answers = _need(f"{path}: annotations[{i}]", ann, "question_id", "answers")
            out[str(qid)] = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
        return out
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # DocVQA
        out = {}
        for i, ann in enumerate(data["data"]):
            qid, answers = _need(f"{path}: data[{i}]", ann, "questionId", "answers")
            out[str(qid)] = [str(a) for a in answers]
        return out
    raise BenchmarkError(f"{path}: not an official answer file (expected {{'annotations': [...]}} for VQA or "
                         "{'data': [...]} for DocVQA)")


# ---- per-benchmark converters -------------------------------------------------------------------
def _answers(where: str, item: Item, official: dict[str, list[str]] | None) -> dict[str, Any]:
    (gt,) = _need(where, item, "gt_answers")
    if official is not None:
        qid = str(item.get("question_id"))
        if qid not in official:
            raise BenchmarkError(f"{where}: question_id {qid} is not in the official answer file")
        return {"answers": official[qid]}
    return {"answers": [str(a) for a in gt] if isinstance(gt, list) else [str(gt)]}


def _answer(where: str, item: Item, official: Any) -> dict[str, Any]:
    (gt,) = _need(where, item, "gt_answers")
    return {"answer": str(gt[0] if isinstance(gt, list) and len(gt) == 1 else gt)}


def _mme(where: str, item: Item, official: Any) -> dict[str, Any]:
    gt, image = _need(where, item, "gt_answers", "image_path")
    name = str(item.get("dataset_name") or "")
    folder = Path(image).parent  # MME keeps a sub-task's images in <task>/ or <task>/images/
    category = name[4:] if name.startswith("MME_") else (folder.parent if folder.name == "images" else folder).name
    return {"answer": str(gt).strip().lower(), "category": category, "image_id": image}


def _rec(where: str, item: Item, official: Any) -> dict[str, Any]:
    gt, qid = _need(where, item, "gt_answers", "question_id")
    m = _HW.search(str(qid))
    if not m:
        raise BenchmarkError(f"{where}: field 'question_id' must hold the image size as 'height{{H}}_width{{W}}', "
                             f"got {qid!r}")
    return {"gt_box": [float(v) for v in gt] if isinstance(gt, list) else gt,
            "width": int(m.group(2)), "height": int(m.group(1))}


def _pope(where: str, item: Item, official: Any) -> dict[str, Any]:
    label = item["label"] if "label" in item else _need(where, item, "gt_answers")[0]
    return {"answer": str(label).strip().lower()}


CONVERTERS: dict[str, Callable[[str, Item, Any], dict[str, Any]]] = {
    "vqa": _answers, "docvqa": _answers, "answer": _answer, "mme": _mme, "rec": _rec, "pope": _pope,
}


def _pope_split(spec: BenchmarkSpec, input_path: Path, category: str | None) -> str | None:
    if category:
        return category
    if spec.name.startswith("pope_"):
        return spec.name[len("pope_"):]
    return next((s for s in POPE_SPLITS if s in input_path.stem), None)


def default_image_root(input_path: Path) -> Path:
    """eval_mm paths start at the eval_mm directory, the parent of `annotations/`; otherwise the file's own."""
    parent = input_path.resolve().parent
    return parent.parent if parent.name == "annotations" else parent


def convert(
    bench_name: str,
    input_path: str | Path,
    out_path: str | Path,
    *,
    image_root: str | Path | None = None,
    official: str | Path | None = None,
    category: str | None = None,
) -> dict[str, Any]:
    """Convert one annotation file into benchmark rows at `out_path`; returns a summary."""
    if bench_name not in BENCHMARKS or not BENCHMARKS[bench_name].source:
        raise BenchmarkError(f"cannot convert {bench_name!r}; convertible benchmarks: {', '.join(convertible())}")
    spec = BENCHMARKS[bench_name]
    input_path, out_path = Path(input_path), Path(out_path)
    if official is not None and spec.source not in ("vqa", "docvqa"):
        raise BenchmarkError(f"--official applies to VQA-style and DocVQA benchmarks, not {bench_name!r}")
    answers = read_official_answers(Path(official)) if official is not None else None
    root = Path(image_root).resolve() if image_root else default_image_root(input_path)
    out_dir = out_path.resolve().parent
    split = _pope_split(spec, input_path, category) if spec.source == "pope" else category
    rows = []
    for i, (where, item) in enumerate(read_items(input_path)):
        if spec.source == "pope" and "text" in item:  # POPE's own layout
            question, image = _need(where, item, "text", "image")
        else:
            question, image = _need(where, item, "question", "image_path")
        row: dict[str, Any] = {"id": f"{bench_name}-{i:06d}", "source_id": item.get("question_id"),
                               "question": str(question),
                               "image": os.path.relpath(root / str(image).removeprefix("./"), out_dir)}
        row.update(CONVERTERS[spec.source](where, item, answers))
        if split and "category" not in row:
            row["category"] = split
        try:
            check_row(spec.metric, {**row, "prediction": ""})
        except RowError as e:
            raise BenchmarkError(f"{where}: {e.message}") from None
        rows.append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    missing = sum(not (out_dir / r["image"]).is_file() for r in rows)
    summary: dict[str, Any] = {"benchmark": bench_name, "rows": len(rows), "out": str(out_path),
                               "image_root": str(root), "missing_images": missing}
    if spec.source in ("vqa", "docvqa") and answers is None:
        summary["note"] = ("one ground-truth answer per question (no --official file): the metric falls back to "
                           "normalised exact match")
    return summary
