"""The benchmark registry and benchmark row files.

A benchmark is a JSONL file of rows plus how to ask and score them (`BenchmarkSpec`): a prompt template
around the row's question, the metric, and the answer budget. Row fields:

    id          str or int, unique in the file
    question    str (the raw question; the spec's `prompt` wraps it)
    image       str path (relative to the file's directory or absolute), or `images`: [str, ...]; optional
    metric      optional: overrides the spec's metric for this row (synth-bench rows all carry one)
    task        optional: rows are scored per task (synth-bench: color, count, ocr, rec, ...)
    category    optional: extra per-category breakdown (and MME sub-task / POPE split)
    + the ground-truth fields of the row's metric (`sphinx_x.eval.metrics.ROW_FIELDS` minus "prediction"):
      vqa/anls "answers"; relaxed/exact/mc/pope "answer"; mme "answer", "category", "image_id";
      rec "gt_box" (pixels), "width", "height".

Names resolve to files: `synth-bench` to `SYNTH_DIR/bench.jsonl` (the held-out split written by
`sphinx-x data synth`), every other registered name to `BENCH_ROOT/NAME.jsonl` (what `sphinx-x
convert-bench` writes); `NAME=PATH` points a registered name at a file (or directory); a plain path to a
JSONL file works too, taking the registered spec whose name is the file's stem, if any.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sphinx_x.errors import RowError
from sphinx_x.eval.metrics import METRICS, check_row
from sphinx_x.eval.rows_io import iter_checked_rows

SHORT_ANSWER = "{question}\nAnswer the question using a single word or phrase."
# SPHINX's REC prompt.
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {question}"
SYNTH_BENCH = "synth-bench"
DEFAULT_BENCHMARK = SYNTH_BENCH
BENCH_ROOT_ENV = "SPHINX_X_BENCH_ROOT"
SYNTH_DIR_ENV = "SPHINX_X_SYNTH_DIR"
DEFAULT_BENCH_ROOT = "benchmarks"
DEFAULT_SYNTH_DIR = "data/synth"


class BenchmarkError(ValueError):
    """A benchmark cannot be resolved or read; the message names the file, line and field where it applies."""


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    metric: str | None  # None: every row names its own metric
    prompt: str = "{question}"  # the question sent to the model; "{question}" is the row's question
    max_new_tokens: int = 32
    source: str | None = None  # which converter reads the LLaMA2-Accessory eval_mm layout (sphinx_x.eval.convert)
    description: str = ""

    def __post_init__(self) -> None:
        if "{question}" not in self.prompt:
            raise BenchmarkError(f"benchmark {self.name!r}: prompt must contain '{{question}}', got {self.prompt!r}")
        if self.metric is not None and self.metric not in METRICS:
            known = ", ".join(METRICS)
            raise BenchmarkError(f"benchmark {self.name!r}: unknown metric {self.metric!r}; known: {known}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise BenchmarkError(f"benchmark {self.name!r}: max_new_tokens must be an int >= 1")

    def format_prompt(self, question: str) -> str:
        return self.prompt.replace("{question}", question)


def _specs() -> dict[str, BenchmarkSpec]:
    specs = [
        BenchmarkSpec(SYNTH_BENCH, None, "{question}", 64, None,
                      "held-out split of the synthetic corpus; questions asked as in training, scored per task"),
        # max_new_tokens and prompts follow LLaMA2-Accessory eval_mm/annotations/annotation_config.json.
        BenchmarkSpec("vqav2_val", "vqa", SHORT_ANSWER, 10, "vqa", "VQAv2 val (VQA accuracy)"),
        BenchmarkSpec("okvqa_val", "vqa", SHORT_ANSWER, 10, "vqa", "OK-VQA val (VQA accuracy)"),
        BenchmarkSpec("textvqa_val", "vqa", SHORT_ANSWER, 10, "vqa", "TextVQA val (VQA accuracy)"),
        BenchmarkSpec("vizwiz_val", "vqa",
                      "{question} When the provided information is insufficient, respond with 'Unanswerable'.\n"
                      "Answer the question using a single word or phrase.", 10, "vqa", "VizWiz val (VQA accuracy)"),
        BenchmarkSpec("docvqa_val", "anls", SHORT_ANSWER, 32, "docvqa", "DocVQA val (ANLS)"),
        BenchmarkSpec("chartqa_test_human", "relaxed", SHORT_ANSWER, 10, "answer", "ChartQA test, human split"),
        BenchmarkSpec("chartqa_test_augmented", "relaxed", SHORT_ANSWER, 10, "answer", "ChartQA test, augmented split"),
        BenchmarkSpec("gqa_testdev", "exact", SHORT_ANSWER, 10, "answer", "GQA test-dev balanced (exact match)"),
        BenchmarkSpec("mme", "mme", SHORT_ANSWER, 10, "mme", "MME (perception + cognition)"),
        BenchmarkSpec("pope", "pope", SHORT_ANSWER, 10, "pope", "POPE, all three splits (category = split)"),
    ]
    specs += [BenchmarkSpec(f"pope_{split}", "pope", SHORT_ANSWER, 10, "pope", f"POPE COCO {split} split")
              for split in ("random", "popular", "adversarial")]
    for name, splits in (("refcoco", ("val", "testA", "testB")), ("refcoco+", ("val", "testA", "testB")),
                         ("refcocog", ("val", "test"))):
        specs += [BenchmarkSpec(f"{name}_{split}", "rec", REC_PROMPT, 32, "rec", f"{name} {split} (Acc@IoU>=0.5)")
                  for split in splits]
    return {s.name: s for s in specs}


BENCHMARKS: dict[str, BenchmarkSpec] = _specs()


@dataclass
class Benchmark:
    """A spec bound to its rows file; `image_root` is where relative image paths start."""

    spec: BenchmarkSpec
    path: Path
    image_root: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    linenos: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


def _unknown(ref: str) -> BenchmarkError:
    return BenchmarkError(
        f"unknown benchmark {ref!r}: not a registered name and not an existing .jsonl file. "
        f"Registered: {', '.join(BENCHMARKS)}"
    )


def _registered_file(spec: BenchmarkSpec, location: Path | None, bench_root: str | Path | None,
                     synth_dir: str | Path | None) -> Path:
    if spec.name == SYNTH_BENCH:
        base = Path(location or synth_dir or os.environ.get(SYNTH_DIR_ENV) or DEFAULT_SYNTH_DIR)
        path = base / "bench.jsonl" if base.suffix != ".jsonl" else base
        hint = "generate it with `sphinx-x data synth --out DIR` and pass --synth-dir DIR (or synth-bench=DIR)"
    else:
        base = Path(location or bench_root or os.environ.get(BENCH_ROOT_ENV) or DEFAULT_BENCH_ROOT)
        path = base / f"{spec.name}.jsonl" if base.suffix != ".jsonl" else base
        hint = f"convert it with `sphinx-x convert-bench {spec.name} --input ANNOTATION.json --out {path}`"
    if not path.is_file():
        raise BenchmarkError(f"benchmark {spec.name!r}: no file {path} ({hint})")
    return path


def resolve_benchmark(
    ref: str,
    *,
    bench_root: str | Path | None = None,
    synth_dir: str | Path | None = None,
    image_root: str | Path | None = None,
    metric: str | None = None,
    prompt: str | None = None,
    max_new_tokens: int | None = None,
) -> Benchmark:
    """`NAME`, `NAME=PATH` or a JSONL path -> a Benchmark (rows not read yet; see `load_rows`).
    `metric`, `prompt`, `max_new_tokens` override the spec's."""
    name, _, location = ref.partition("=")
    if location:
        if name not in BENCHMARKS:
            raise _unknown(name)
        spec = BENCHMARKS[name]
        path = _registered_file(spec, Path(location), bench_root, synth_dir)
    elif ref in BENCHMARKS:
        spec = BENCHMARKS[ref]
        path = _registered_file(spec, None, bench_root, synth_dir)
    elif ref.endswith(".jsonl") or Path(ref).is_file():
        path = Path(ref)
        if not path.is_file():
            raise BenchmarkError(f"{path}: benchmark file not found")
        synth_corpus = path.name == "bench.jsonl" and (path.parent / "synth.json").is_file()
        spec = BENCHMARKS.get(SYNTH_BENCH if synth_corpus else path.stem) or BenchmarkSpec(path.stem, None)
    else:
        raise _unknown(ref)
    overrides: dict[str, Any] = {}
    if metric is not None:
        overrides["metric"] = metric
    if prompt is not None:
        overrides["prompt"] = prompt
    if max_new_tokens is not None:
        overrides["max_new_tokens"] = max_new_tokens
    if overrides:
        spec = replace(spec, **overrides)
    return Benchmark(spec, path, Path(image_root) if image_root else path.parent)


# ---- rows --------------------------------------------------------------------------------------
def row_metric(spec: BenchmarkSpec, row: Mapping[str, Any]) -> str | None:
    return row.get("metric") or spec.metric


def _row_images(row: Mapping[str, Any]) -> list[str]:
    if "images" in row:
        images = row["images"]
        if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
            raise RowError("field 'images' must be a list of image paths")
        return images
    if "image" in row and row["image"] is not None:
        if not isinstance(row["image"], str) or not row["image"]:
            raise RowError("field 'image' must be an image path (string)")
        return [row["image"]]
    return []


def check_bench_row(bench: Benchmark, row: Any) -> None:
    """Raise RowError naming the first problem of one benchmark row (ids are checked by `load_rows`)."""
    if not isinstance(row, dict):
        raise RowError(f"row must be a JSON object, got {type(row).__name__}")
    if "id" not in row:
        raise RowError("missing field 'id'")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise RowError(f"field 'id' must be a string or integer, got {row['id']!r}")
    if not isinstance(row.get("question"), str):
        raise RowError("missing field 'question'" if "question" not in row else "field 'question' must be a string")
    metric = row_metric(bench.spec, row)
    if metric is None:
        raise RowError(f"missing field 'metric' (benchmark {bench.name!r} has no default metric; give each row one "
                       f"or pass --metric)")
    if metric not in METRICS:
        raise RowError(f"field 'metric' is {metric!r}, not one of {', '.join(METRICS)}")
    for key in ("task", "category"):
        if key in row and not isinstance(row[key], str):
            raise RowError(f"field '{key}' must be a string")
    for image in _row_images(row):
        if not (bench.image_root / image).is_file():
            raise RowError(f"field 'image': file not found: {bench.image_root / image}")
    check_row(metric, {**row, "prediction": ""})


def image_paths(bench: Benchmark, row: Mapping[str, Any]) -> list[str]:
    return [str(bench.image_root / p) for p in _row_images(row)]


def load_rows(bench: Benchmark, limit: int | None = None) -> Benchmark:
    """Read and check the rows file (the first `limit` rows when given); fills `bench.rows` / `bench.linenos`."""
    rows, linenos, seen = [], [], {}
    checked = iter_checked_rows(bench.path, lambda r: check_bench_row(bench, r), BenchmarkError)
    for lineno, row in itertools.islice(checked, limit):  # stops before reading past the limit
        key = str(row["id"])
        if key in seen:
            raise BenchmarkError(f"{bench.path}:{lineno}: field 'id' {row['id']!r} repeats line {seen[key]}")
        seen[key] = lineno
        rows.append(row)
        linenos.append(lineno)
    if not rows:
        raise BenchmarkError(f"{bench.path}: no benchmark rows")
    bench.rows, bench.linenos = rows, linenos
    return bench
