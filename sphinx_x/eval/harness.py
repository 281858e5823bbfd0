"""Run benchmarks: prompts from rows, batched greedy generation, resumable predictions, scores.

Output layout of `evaluate(..., out_dir)`:
    out_dir/<benchmark>/predictions.jsonl  one line per answered row: id, question, prompt, prediction,
                                            the ground-truth fields, task, metric, finish_reason
    out_dir/<benchmark>/run.json            the settings the predictions were made with (checked on resume)
    out_dir/scores.json                     {"benchmarks": {name: per-benchmark scores}} (merged across runs)
    out_dir/scores.md                       markdown table: benchmark | task | metric | n | score

Decoding is greedy, always (README "Evaluation": the public SPHINX evaluation sampled at temperature 0.1).
Resuming: ids already in predictions.jsonl are not generated again; each batch is appended and flushed as
soon as it is done, and a last line cut short by a crash is dropped, so an interrupted run continues
where it stopped. Scores are computed from predictions.jsonl, so they equal `score_rows` over that file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sphinx_x.eval.benchmarks import Benchmark, BenchmarkError, image_paths, load_rows, row_metric
from sphinx_x.eval.metrics import ROW_FIELDS, score_rows
from sphinx_x.fileio import open_jsonl_append, read_jsonl_for_resume, write_atomic, write_json_atomic

# (model, [{"question": prompt, "images": [path, ...]}, ...], max_new_tokens) -> [(answer, finish_reason), ...]
GenerateFn = Callable[[Any, list[dict[str, Any]], int], list[tuple[str, str]]]
GROUND_TRUTH_FIELDS = sorted({f for fields in ROW_FIELDS.values() for f in fields} - {"prediction"})
PASSED_THROUGH = ("task", "category", "source_id", "image", "images")
ALL_TASKS = "all"  # the task name of rows without a `task`
RUN_KEYS = ("model", "benchmark_file", "prompt", "max_new_tokens")  # settings that change the predictions


class HarnessError(RuntimeError):
    """An evaluation cannot go on (inconsistent resume, unreadable predictions); the message says what to do."""


def generate_answers(model: Any, requests: list[dict[str, Any]], max_new_tokens: int) -> list[tuple[str, str]]:
    """Greedy answers for one batch via the inference API (`sphinx_x.infer.chat.generate`)."""
    from sphinx_x.infer.chat import generate
    from sphinx_x.infer.options import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    return [(g.text, g.finish_reason) for g in generate(model, requests, config)]


def model_anchor(model: Any) -> str:
    """The pad anchor REC answers are read with: the model's canvas convention (README)."""
    try:
        return model.config.vision.canvas.pad_anchor
    except AttributeError:
        return "top-left"


# ---- predictions file ---------------------------------------------------------------------------
def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Rows of a predictions file; a last line cut short (an interrupted write) is dropped from the file."""
    rows = []
    for lineno, line in read_jsonl_for_resume(path):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise HarnessError(f"{path}:{lineno}: not valid JSON ({e.msg}); delete the file or use --overwrite"
                               ) from None
        if not isinstance(rows[-1], dict) or "id" not in rows[-1] or "prediction" not in rows[-1]:
            raise HarnessError(f"{path}:{lineno}: a prediction needs 'id' and 'prediction'; delete the file or "
                               "use --overwrite")
    return rows


def prediction_record(bench: Benchmark, row: Mapping[str, Any], prompt: str, answer: str, finish: str
                      ) -> dict[str, Any]:
    record: dict[str, Any] = {"id": row["id"], "question": row["question"], "prompt": prompt, "prediction": answer}
    record.update({k: row[k] for k in GROUND_TRUTH_FIELDS if k in row})
    record.update({k: row[k] for k in PASSED_THROUGH if k in row})
    record["metric"] = row_metric(bench.spec, row)
    record["finish_reason"] = finish
    return record


def _check_run(run_path: Path, settings: dict[str, Any], overwrite: bool) -> None:
    if run_path.exists() and not overwrite:
        old = json.loads(run_path.read_text(encoding="utf-8"))
        changed = [k for k in RUN_KEYS if old.get(k) != settings.get(k)]
        if changed:
            diff = "; ".join(f"{k}: {old.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise HarnessError(f"{run_path.parent}: existing predictions were made with other settings ({diff}); "
                               "use another --output directory or --overwrite")
    write_json_atomic(run_path, settings, sort_keys=True)


# ---- scoring ------------------------------------------------------------------------------------
def _metric_opts(metric: str, anchor: str) -> dict[str, Any]:
    return {"anchor": anchor} if metric == "rec" else {}


def score_predictions(rows: Sequence[Mapping[str, Any]], anchor: str = "top-left") -> dict[str, Any]:
    """Per-task scores of prediction rows (each carries its `metric`) and the overall score: the task score
    when there is one task, else the mean over tasks. Rows with a `category` also get per-category scores
    (MME and POPE break categories down inside their own details)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r.get("task") or ALL_TASKS, r["metric"]), []).append(r)
    tasks: dict[str, Any] = {}
    for (task, metric), group in sorted(groups.items()):
        key = task if sum(t == task for t, _ in groups) == 1 else f"{task}/{metric}"
        result = score_rows(metric, group, **_metric_opts(metric, anchor))
        entry: dict[str, Any] = {"metric": metric, "n": len(group), "score": result.score, "details": result.details}
        cats = sorted({r["category"] for r in group if isinstance(r.get("category"), str)})
        if cats and metric not in ("mme", "pope"):
            entry["categories"] = {
                c: {"n": len(sub), "score": score_rows(metric, sub, **_metric_opts(metric, anchor)).score}
                for c in cats
                for sub in [[r for r in group if r.get("category") == c]]
            }
        tasks[key] = entry
    overall = sum(t["score"] for t in tasks.values()) / len(tasks)
    return {"n": len(rows), "score": overall, "score_is": "mean over tasks" if len(tasks) > 1 else "task score",
            "tasks": tasks}


def scores_markdown(benchmarks: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| benchmark | task | metric | n | score |", "|---|---|---|---:|---:|"]
    for name, b in benchmarks.items():
        for task, t in b["tasks"].items():
            lines.append(f"| {name} | {task} | {t['metric']} | {t['n']} | {t['score']:.2f} |")
        if len(b["tasks"]) > 1:
            lines.append(f"| {name} | **overall** (mean over tasks) | | {b['n']} | **{b['score']:.2f}** |")
    return "\n".join(lines) + "\n"


def write_scores(out_dir: Path, results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Merge `results` into out_dir/scores.json (other benchmarks of earlier runs are kept) and rewrite
    scores.md from the merged scores."""
    path = out_dir / "scores.json"
    merged: dict[str, Any] = {"benchmarks": {}}
    if path.exists():
        try:
            merged = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            merged = {"benchmarks": {}}
    merged.setdefault("benchmarks", {}).update(results)
    write_json_atomic(path, merged)
    write_atomic(out_dir / "scores.md", scores_markdown(merged["benchmarks"]))
    return merged


# ---- running ------------------------------------------------------------------------------------
def run_benchmark(
    model: Any,
    bench: Benchmark,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    anchor: str | None = None,
    model_id: str | None = None,
    overwrite: bool = False,
    generate_fn: GenerateFn | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Answer the benchmark's rows not yet in out_dir/<name>/predictions.jsonl, then score them all.
    Returns the benchmark's scores (also what `evaluate` writes into scores.json)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not bench.rows:
        load_rows(bench, limit)
    bench_dir = Path(out_dir) / bench.name
    bench_dir.mkdir(parents=True, exist_ok=True)
    pred_path = bench_dir / "predictions.jsonl"
    if overwrite and pred_path.exists():
        pred_path.unlink()
    settings = {"model": model_id, "benchmark": bench.name, "benchmark_file": str(bench.path.resolve()),
                "prompt": bench.spec.prompt, "max_new_tokens": bench.spec.max_new_tokens, "decoding": "greedy"}
    _check_run(bench_dir / "run.json", settings, overwrite)

    done = {str(r["id"]): r for r in read_predictions(pred_path)}
    todo = [(row, line) for row, line in zip(bench.rows, bench.linenos) if str(row["id"]) not in done]
    # Rows of one task have answers of similar length: batching them together wastes fewer decode steps.
    todo.sort(key=lambda rl: (rl[0].get("task") or "", rl[1]))
    generate = generate_fn or generate_answers
    bar = _progress(len(bench.rows), len(bench.rows) - len(todo), bench.name, progress)
    with open_jsonl_append(pred_path) as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [bench.spec.format_prompt(row["question"]) for row, _ in batch]
            requests = [{"question": p, "images": image_paths(bench, row)} for p, (row, _) in zip(prompts, batch)]
            try:
                answers = generate(model, requests, bench.spec.max_new_tokens)
            except (OSError, ValueError) as e:  # an unreadable image, a prompt too long for the context
                where = ", ".join(f"{bench.path}:{line}" for _, line in batch)
                raise BenchmarkError(f"generation failed for the batch at {where}: {e}") from e
            for (row, _), prompt, (answer, finish) in zip(batch, prompts, answers):
                record = prediction_record(bench, row, prompt, answer, finish)
                done[str(row["id"])] = record
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))
    bar.close()
    rows = [done[str(r["id"])] for r in bench.rows]
    result = score_predictions(rows, anchor or model_anchor(model))
    return {"benchmark": bench.name, "file": str(bench.path), **result,
            "settings": {k: settings[k] for k in ("prompt", "max_new_tokens", "decoding")}
            | {"anchor": anchor or model_anchor(model)}}


def _progress(total: int, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="q", disable=not enabled, file=sys.stderr)


def evaluate(
    model: Any,
    benchmarks: Sequence[Benchmark],
    out_dir: str | Path,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Run every benchmark (see `run_benchmark` for the options), write scores.json and scores.md, and
    return the merged scores.json content."""
    names = [b.name for b in benchmarks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BenchmarkError(f"benchmark(s) given twice: {', '.join(repeated)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {b.name: run_benchmark(model, b, out, **run_kwargs) for b in benchmarks}
    return write_scores(out, results)
