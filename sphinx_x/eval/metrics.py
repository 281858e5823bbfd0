"""Standard evaluation metrics (README "Evaluation"), each a plain function over rows of predictions and ground truth.

Row shapes (the same as `sphinx-x score` reads from JSONL, see `ROW_FIELDS`):
    vqa, anls                  {"prediction": str, "answers": [str, ...]}
    relaxed, exact, mc, pope   {"prediction": str, "answer": str}
    mme                        {"prediction": str, "answer": "yes"|"no", "category": str, "image_id": str|int}
    rec                        {"prediction": str, "gt_box": [x1, y1, x2, y2] (pixels), "width": W, "height": H}

Every metric returns a `MetricResult`: `score` in percent (0-100) except `mme`, whose score is the summed
MME score (perception + cognition, up to 2800); `per_row` in [0, 1]; `details` with the breakdown.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from rapidfuzz.distance import Levenshtein
from torchvision.ops import box_iou as _tv_box_iou

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.data.geometry import parse_box
from sphinx_x.errors import RowError
from sphinx_x.eval.vqa_normalize import normalize_vqa_answer


@dataclass(frozen=True)
class MetricResult:
    """A metric's result: `score` (percent, or MME's summed score), one value in [0, 1] per row, `details`."""

    score: float
    per_row: list[float]
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, metric: str) -> dict[str, Any]:
        """The JSON shape `sphinx-x score --json` prints: {"metric", "score", "per_row", "details"}."""
        return {"metric": metric, "score": self.score, "per_row": self.per_row, "details": self.details}


# ---- row validation ----------------------------------------------------------------------------
_TEXT_ANSWER = ("prediction", "answer")
ROW_FIELDS: dict[str, tuple[str, ...]] = {
    "vqa": ("prediction", "answers"),
    "anls": ("prediction", "answers"),
    "relaxed": _TEXT_ANSWER,
    "exact": _TEXT_ANSWER,
    "mc": _TEXT_ANSWER,
    "pope": _TEXT_ANSWER,
    "mme": ("prediction", "answer", "category", "image_id"),
    "rec": ("prediction", "gt_box", "width", "height"),
}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one field's value, or None."""
    if name in ("prediction", "answer", "category"):
        return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"
    if name == "answers":
        if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
            return "must be a non-empty list of strings"
        return None
    if name == "image_id":
        return None if isinstance(value, (str, int)) and not isinstance(value, bool) else "must be a string or integer"
    if name in ("width", "height"):
        return None if _is_number(value) and value > 0 else f"must be a positive number, got {value!r}"
    if name == "gt_box":
        if not isinstance(value, list) or len(value) != 4 or not all(_is_number(v) for v in value):
            return f"must be [x1, y1, x2, y2] in pixels, got {value!r}"
        if value[2] <= value[0] or value[3] <= value[1]:
            return f"must have x2 > x1 and y2 > y1, got {value!r}"
        return None
    return None


def check_row(metric: str, row: Any) -> None:
    """Raise RowError naming the first missing or malformed field of `row` for `metric`."""
    if not isinstance(row, Mapping):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    for name in ROW_FIELDS[metric]:
        if name not in row:
            raise RowError(f"missing field '{name}' (a {metric} row needs {', '.join(ROW_FIELDS[metric])})")
        problem = _field_problem(name, row[name])
        if problem:
            raise RowError(f"field '{name}' {problem}")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _percent_result(per_row: list[float], **details: Any) -> MetricResult:
    return MetricResult(100.0 * _mean(per_row), per_row, {"rows": len(per_row), **details})


# ---- VQA accuracy ------------------------------------------------------------------------------
def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy: mean over leave-one-out subsets of the answers of min(1, matches / 3).

    With the usual 10 answers that is the 10 subsets of 9; with fewer answers, the leave-one-out runs over
    the answers given. A single answer has no leave-one-out subset, so it scores as a normalised exact match."""
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    if len(gts) == 1:
        return float(pred == gts[0])
    matching = sum(g == pred for g in gts)
    # Leaving out a matching answer removes one match; leaving out any other keeps them all.
    accs = [min(1.0, (matching - (g == pred)) / 3.0) for g in gts]
    return _mean(accs)


def vqa(rows: Sequence[Mapping]) -> MetricResult:
    """VQA accuracy over rows {"prediction", "answers"} (VQAv2, OK-VQA, TextVQA, VizWiz); `score` in percent."""
    per_row = [vqa_accuracy(r["prediction"], r["answers"]) for r in rows]
    return _percent_result(per_row, single_answer_rows=sum(len(r["answers"]) == 1 for r in rows))


# ---- ANLS --------------------------------------------------------------------------------------
def _anls_text(text: str) -> str:
    """Strip, lower-case and collapse runs of whitespace, as the DocVQA evaluation script does."""
    return " ".join(text.strip().lower().split())


def anls_score(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer, as the official DocVQA / InfographicVQA
    evaluation script (and lmms-eval's `anls`) computes it.

    The edit distance is taken between the normalised texts (`_anls_text`) but divided by the longer of
    the two texts *as given* (before stripping), a quirk of the official script kept so that scores
    match it. The best answer wins; a similarity `1 - distance / length` below `threshold` scores 0,
    so a distance of exactly half the length still scores 0.5."""
    best = 0.0
    for answer in answers:
        distance = Levenshtein.distance(_anls_text(prediction), _anls_text(answer))
        length = max(len(answer.upper()), len(prediction.upper()))
        similarity = 1.0 - (distance / length if length else 0.0)
        best = max(best, similarity if similarity >= threshold else 0.0)
    return best


def anls(rows: Sequence[Mapping], threshold: float = 0.5) -> MetricResult:
    """ANLS over rows {"prediction", "answers"} (DocVQA); `score` in percent."""
    per_row = [anls_score(r["prediction"], r["answers"], threshold) for r in rows]
    return _percent_result(per_row, threshold=threshold)


# ---- relaxed accuracy (ChartQA) ----------------------------------------------------------------
def _to_number(text: str) -> float | None:
    """A number as the ChartQA reference reads it: Python's float(), and a trailing '%' divides by 100
    ('25%' -> 0.25). Thousands separators are not read ('1,000' is text), as in the reference."""
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_match(prediction: str, answer: str, tolerance: float = 0.05) -> bool:
    """ChartQA relaxed correctness, as pix2struct's `relaxed_correctness` (used by lmms-eval) decides it.

    When both texts read as numbers (`_to_number`) and the ground truth `answer` is not 0, the prediction
    is right within `tolerance` relative to the ground truth (the public SPHINX code swaps the arguments,
    measuring relative to the prediction). Otherwise the texts must match exactly, ignoring case; so a
    ground truth of 0 needs the same text. Surrounding whitespace is ignored, as in Qwen-VL's evaluator,
    which strips the prediction before this comparison."""
    prediction, answer = prediction.strip(), answer.strip()
    pred, gt = _to_number(prediction), _to_number(answer)
    if pred is not None and gt:  # gt of 0 (or not a number) falls through to the text comparison
        return abs(pred - gt) / abs(gt) <= tolerance
    return prediction.lower() == answer.lower()


def relaxed(rows: Sequence[Mapping], tolerance: float = 0.05) -> MetricResult:
    """ChartQA relaxed accuracy over rows {"prediction", "answer"}; `score` in percent."""
    per_row = [float(relaxed_match(r["prediction"], r["answer"], tolerance)) for r in rows]
    return _percent_result(per_row, tolerance=tolerance)


# ---- exact match -------------------------------------------------------------------------------
def normalize_exact(text: str) -> str:
    """Lower-case, whitespace collapsed, trailing punctuation removed."""
    return " ".join(text.lower().split()).rstrip(".!?,;:").rstrip()


def exact(rows: Sequence[Mapping]) -> MetricResult:
    """Exact match after `normalize_exact` over rows {"prediction", "answer"} (GQA); `score` in percent."""
    per_row = [float(normalize_exact(r["prediction"]) == normalize_exact(r["answer"])) for r in rows]
    return _percent_result(per_row)


# ---- multiple choice ---------------------------------------------------------------------------
# "B", "(B)", "[B]", "B.", "B)", "B:" and "B. cat": a letter at the start, bracketed or followed by a mark.
_LEADING_LETTER = re.compile(r"^\s*(?:[(\[]([A-Z])[)\]]|([A-Z])(?:[.:)](?!\w)|$))")
_ANSWER_IS = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*)?[:\-]?\s*[(\[]?([A-Z])(?![A-Za-z])")
_STANDALONE = re.compile(r"(?<![A-Za-z'])([(\[])?([A-Z])(?(1)[)\]])(?![A-Za-z'])")


def extract_choice(text: str) -> str | None:
    """The option letter a free-form answer picks, or None when there is none or it is ambiguous."""
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        m = pattern.search(text)
        if m:
            return next(g for g in m.groups() if g)
    # Last resort ("C dog", "I think D"): exactly one distinct standalone capital letter; a bare "A" or "I"
    # reads as a word, not an option.
    letters = {m.group(2) for m in _STANDALONE.finditer(text) if m.group(1) or m.group(2) not in "AI"}
    return letters.pop() if len(letters) == 1 else None


def mc(rows: Sequence[Mapping]) -> MetricResult:
    """Multiple-choice accuracy: the option letter of the prediction (`extract_choice`) against the answer's;
    an answer that names no letter is a RowError, a prediction that names none counts as wrong."""
    per_row, unparsed = [], 0
    for i, r in enumerate(rows):
        gt = extract_choice(r["answer"])
        if gt is None:
            raise RowError(f"field 'answer' must be an option letter such as 'B', got {r['answer']!r}", i)
        pred = extract_choice(r["prediction"])
        unparsed += pred is None
        per_row.append(float(pred == gt))
    return _percent_result(per_row, unparsed=unparsed)


# ---- yes/no (MME, POPE) ------------------------------------------------------------------------
_NEGATIONS = frozenset({"no", "not", "none", "don't", "doesn't", "isn't", "aren't", "cannot", "can't"})


def extract_yes_no(text: str) -> str | None:
    """'yes' / 'no' from a free answer: the first word if it is one, else a negation in the first sentence
    means 'no' and a 'yes' there means 'yes'; None when neither appears (then the row counts as wrong)."""
    words = re.findall(r"[a-z']+", text.lower().split(".")[0])
    if words and words[0] in ("yes", "no"):
        return words[0]
    if _NEGATIONS.intersection(words):
        return "no"
    return "yes" if "yes" in words else None


def _yes_no_answer(i: int, answer: str) -> str:
    gt = answer.strip().lower().rstrip(".")
    if gt not in ("yes", "no"):
        raise RowError(f"field 'answer' must be 'yes' or 'no', got {answer!r}", i)
    return gt


# ---- MME ---------------------------------------------------------------------------------------
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_MME_GROUP = {c.lower(): "perception" for c in MME_PERCEPTION} | {c.lower(): "cognition" for c in MME_COGNITION}


def mme(rows: Sequence[Mapping]) -> MetricResult:
    """Per sub-task: accuracy over questions + accuracy+ over images (all questions of the image right),
    both x100; the sub-task scores are summed into perception and cognition, and `score` is their sum."""
    per_row = []
    by_image: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(rows):
        correct = float(extract_yes_no(r["prediction"]) == _yes_no_answer(i, r["answer"]))
        per_row.append(correct)
        by_image[r["category"]][r["image_id"]].append(correct)
    categories, totals, unknown = {}, {"perception": 0.0, "cognition": 0.0}, []
    for cat, images in sorted(by_image.items()):
        group = _MME_GROUP.get(cat.lower())
        if group is None:
            unknown.append(cat)
            group = "perception"
        answers = [c for cs in images.values() for c in cs]
        acc = 100.0 * _mean(answers)
        acc_plus = 100.0 * _mean([float(all(cs)) for cs in images.values()])
        categories[cat] = {
            "group": group,
            "acc": acc,
            "acc_plus": acc_plus,
            "score": acc + acc_plus,
            "questions": len(answers),
            "images": len(images),
        }
        totals[group] += acc + acc_plus
    details: dict[str, Any] = {"rows": len(per_row), **totals, "categories": categories}
    if unknown:
        details["unknown_categories"] = unknown
        details["note"] = "categories outside the standard MME lists are counted under perception"
    return MetricResult(totals["perception"] + totals["cognition"], per_row, details)


# ---- POPE --------------------------------------------------------------------------------------
def _pope_stats(preds: Sequence[str | None], gts: Sequence[str]) -> dict[str, Any]:
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, gts))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, gts))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, gts))
    fn = sum(p != "yes" and g == "yes" for p, g in zip(preds, gts))  # an unreadable answer misses a "yes"
    n = len(gts)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * sum(p == "yes" for p in preds) / n if n else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "unparsed": sum(p is None for p in preds),
    }


def pope(rows: Sequence[Mapping]) -> MetricResult:
    """`score` is accuracy; details give accuracy, precision, recall, F1 (positive = "yes") and the yes-ratio,
    all in percent, the confusion counts, and the same per `category` (random/popular/adversarial) if rows have one."""
    preds = [extract_yes_no(r["prediction"]) for r in rows]
    gts = [_yes_no_answer(i, r["answer"]) for i, r in enumerate(rows)]
    per_row = [float(p == g) for p, g in zip(preds, gts)]
    details: dict[str, Any] = {"rows": len(rows), **_pope_stats(preds, gts)}
    cats = sorted({r["category"] for r in rows if isinstance(r.get("category"), str)})
    if cats:
        details["categories"] = {
            c: _pope_stats(*zip(*[(p, g) for p, g, r in zip(preds, gts, rows) if r.get("category") == c])) for c in cats
        }
    return MetricResult(details["accuracy"], per_row, details)


# ---- REC ---------------------------------------------------------------------------------------
ANCHORS = ("top-left", "center")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two [x1, y1, x2, y2] boxes; a box with no area (or inverted corners) has IoU 0."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 0.0
    return float(_tv_box_iou(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64))[0, 0])


def predicted_box_pixels(
    prediction: str, width: float, height: float, anchor: str = "top-left", coords: str = "canvas"
) -> list[float] | None:
    """The first box of the answer in original-image pixels, or None when the answer holds none.

    coords="canvas": the box is canvas-normalised (README) and mapped with the model's pad anchor;
    coords="pixels": the answer already gives original-image pixels."""
    if coords == "canvas":
        box = parse_box(prediction)
        return None if box is None else CanvasGeometry(width, height, anchor).to_pixels(box)
    if coords == "pixels":
        box = parse_box_pixels(prediction)
        return None if box is None else list(box)
    raise ValueError(f"coords must be 'canvas' or 'pixels', got {coords!r}")


def parse_box_pixels(text: str) -> list[float] | None:
    """The first box of `text` read as pixels: the geometry parser without its clamp to [0, 1]."""
    return parse_box(text, clamp=False)


def rec(
    rows: Sequence[Mapping], anchor: str = "top-left", coords: str = "canvas", iou_threshold: float = 0.5
) -> MetricResult:
    """Acc@IoU>=0.5 against `gt_box` (pixels); an answer without a readable box scores 0."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {', '.join(ANCHORS)}, got {anchor!r}")
    if coords not in ("canvas", "pixels"):
        raise ValueError(f"coords must be 'canvas' or 'pixels', got {coords!r}")
    ious, unparsed = [], 0
    for r in rows:
        box = predicted_box_pixels(r["prediction"], r["width"], r["height"], anchor, coords)
        unparsed += box is None
        ious.append(0.0 if box is None else box_iou(box, r["gt_box"]))
    per_row = [float(iou >= iou_threshold) for iou in ious]
    return _percent_result(
        per_row, mean_iou=_mean(ious), unparsed=unparsed, anchor=anchor, coords=coords, iou_threshold=iou_threshold
    )


# ---- registry ----------------------------------------------------------------------------------
METRICS: dict[str, Callable[..., MetricResult]] = {
    "vqa": vqa,
    "anls": anls,
    "relaxed": relaxed,
    "exact": exact,
    "mc": mc,
    "mme": mme,
    "pope": pope,
    "rec": rec,
}


def score_rows(metric: str, rows: Sequence[Mapping], **opts: Any) -> MetricResult:
    """Validate `rows` for `metric` and score them; `opts` go to the metric (e.g. anchor= for rec)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not rows:
        raise ValueError(f"no rows to score with {metric!r}")
    for i, row in enumerate(rows):
        try:
            check_row(metric, row)
        except RowError as e:
            raise RowError(e.message, i) from None
    return METRICS[metric](rows, **opts)
