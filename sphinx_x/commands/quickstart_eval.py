"""The quickstart's evaluation pieces: synth-bench without its images (the blind baseline), the side-by-side
table, and the demo answer (which row to ask again, asking it, drawing the answer)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

BLIND = "synth-bench-blind"  # the blind evaluation's benchmark name (OUT/eval/synth-bench-blind/)


# ---- the blind baseline --------------------------------------------------------------------------
def blind_benchmark(bench: Any) -> Any:
    """synth-bench with its images removed: every row's question alone (no image tokens), the same prompt,
    metric and answers; evaluated as the benchmark BLIND."""
    rows = [{k: v for k, v in r.items() if k not in ("image", "images")} for r in bench.rows]
    return replace(bench, spec=replace(bench.spec, name=BLIND), rows=rows, linenos=list(bench.linenos))


def scores_side_by_side(result: dict[str, Any], blind: dict[str, Any]) -> str:
    """Per-task markdown table: the score with images, the blind score and the difference (what the images add)."""
    lines = ["| benchmark | task | metric | n | score | blind (question only, no image) | images add |",
             "|---|---|---|---:|---:|---:|---:|"]
    for task, t in result["tasks"].items():
        b = blind["tasks"][task]["score"]
        lines.append(f"| synth-bench | {task} | {t['metric']} | {t['n']} | {t['score']:.2f} | {b:.2f} | "
                     f"{t['score'] - b:+.2f} |")
    lines.append(f"| synth-bench | **overall** (mean over tasks) | | {result['n']} | **{result['score']:.2f}** | "
                 f"**{blind['score']:.2f}** | **{result['score'] - blind['score']:+.2f}** |")
    return "\n".join(lines) + "\n"


# ---- the demo ------------------------------------------------------------------------------------
def row_right(record: dict[str, Any], anchor: str) -> bool:
    """Whether one prediction record earned full marks under its row's metric."""
    from sphinx_x.eval.metrics import score_rows

    return score_rows(record["metric"], [record], **({"anchor": anchor} if record["metric"] == "rec" else {})
                      ).per_row[0] == 1.0


def pick_demo(records: list[dict[str, Any]], blind_records: list[dict[str, Any]], result: dict[str, Any],
              anchor: str) -> dict[str, Any] | None:
    """The demo's synth-bench row: a grounding (REC) row answered right when there is one, the one whose box fits
    the object tightest (highest IoU), so the drawn answer shows the model finding the object; else, from the image
    task with the best score that has a row answered right, a right row whose blind answer was wrong (the image
    made the difference) if there is one, else its first right row; None when no row with an image was answered
    right."""
    blind_right = {r["id"] for r in blind_records if row_right(r, anchor)}
    right = [r for r in records if r.get("image") and row_right(r, anchor)]
    if not right:
        return None
    boxes = [r for r in right if r["task"] == "rec"]
    if boxes:
        return max(boxes, key=lambda r: box_fit(r, anchor))
    best = max({r["task"] for r in right}, key=lambda task: result["tasks"][task]["score"])
    rows = [r for r in right if r["task"] == best]
    return next((r for r in rows if r["id"] not in blind_right), rows[0])


def box_fit(record: dict[str, Any], anchor: str) -> float:
    """IoU of a REC record's predicted box with its ground truth (0.0 when no box can be read)."""
    from sphinx_x.eval.metrics import box_iou, predicted_box_pixels

    box = predicted_box_pixels(record["prediction"], record["width"], record["height"], anchor)
    return 0.0 if box is None else box_iou(box, record["gt_box"])


def expected_answer(record: dict[str, Any]) -> str:
    if "gt_box" in record:
        return f"the box {record['gt_box']} (pixels; right when the boxes overlap by IoU >= 0.5)"
    return json.dumps(record["answer"] if "answer" in record else record["answers"][0])


def demo_answer(model: Any, bench: Any, record: dict[str, Any], out_png: Path) -> tuple[str, str, bool]:
    """Ask `record`'s question again, exactly as synth-bench asked it (same prompt, greedy), about its image;
    draw the answer (its boxes, if any) onto the image. Returns (image path, answer, whether it is right)."""
    from PIL import Image

    from sphinx_x.eval.harness import generate_answers, model_anchor
    from sphinx_x.infer.draw import draw_answer

    image_path = bench.image_root / record["image"]
    [(answer, _)] = generate_answers(model, [{"question": record["prompt"], "images": [str(image_path)]}],
                                     bench.spec.max_new_tokens)
    with Image.open(image_path) as im:
        drawing, _ = draw_answer(im.convert("RGB"), answer, anchor=model_anchor(model))
    drawing.save(out_png)
    return str(image_path), answer, row_right({**record, "prediction": answer}, model_anchor(model))
