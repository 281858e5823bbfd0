"""`sphinx-x eval` and the harness: files written, resume, scores equal to re-scoring the predictions,
exact scores with known predictions, prompts/budgets from the registry, and errors that name file:line:field."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from sphinx_x.cli import main
from sphinx_x.eval import harness
from sphinx_x.eval.benchmarks import SHORT_ANSWER, BenchmarkError, load_rows, resolve_benchmark
from sphinx_x.eval.harness import HarnessError, evaluate
from sphinx_x.eval.metrics import score_rows

N_ROWS = 13  # one synth-bench row per task


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from sphinx_x.data.synth import generate_corpus

    out = tmp_path_factory.mktemp("synth")
    generate_corpus(out, 0, 0, N_ROWS, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def nano_dir(tmp_path_factory) -> Path:
    from sphinx_x.commands.init import init_model

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("nano")
    init_model("nano", str(out), seed=0)
    return out


@pytest.fixture
def counting_generate(monkeypatch):
    """The real generation function, counting the rows it is asked to answer."""
    calls: list[int] = []
    real = harness.generate_answers

    def counted(model, requests, max_new_tokens):
        calls.append(len(requests))
        return real(model, requests, max_new_tokens)

    monkeypatch.setattr(harness, "generate_answers", counted)
    return calls


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rescore(predictions: list[dict], anchor: str) -> dict[str, float]:
    """Independent re-scoring: per task, `score_rows` over the task's rows."""
    by_task: dict[str, list[dict]] = {}
    for p in predictions:
        by_task.setdefault(p["task"], []).append(p)
    return {t: score_rows(rows[0]["metric"], rows, **({"anchor": anchor} if rows[0]["metric"] == "rec" else {})).score
            for t, rows in by_task.items()}


# ---- end to end with a random nano model ---------------------------------------------------------------
@pytest.mark.slow
def test_eval_end_to_end_files_resume_and_rescoring(corpus, nano_dir, tmp_path, capsys, counting_generate):
    out = tmp_path / "eval"
    common = ["--model", str(nano_dir), "--synth-dir", str(corpus), "--output", str(out), "--batch-size", "4",
              "--max-new-tokens", "3", "--quiet"]
    bench_rows = read_jsonl(corpus / "bench.jsonl")

    # First run on 5 rows only.
    code, stdout, err = run_eval(capsys, *common, "--limit", "5")
    assert code == 0, err
    assert sum(counting_generate) == 5
    preds = read_jsonl(out / "synth-bench" / "predictions.jsonl")
    assert sorted(p["id"] for p in preds) == sorted(r["id"] for r in bench_rows[:5])

    # Full run: only the 8 missing rows are generated.
    counting_generate.clear()
    code, stdout, err = run_eval(capsys, *common)
    assert code == 0, err
    assert sum(counting_generate) == N_ROWS - 5
    preds = read_jsonl(out / "synth-bench" / "predictions.jsonl")
    assert len(preds) == N_ROWS and {p["id"] for p in preds} == {r["id"] for r in bench_rows}
    by_id = {r["id"]: r for r in bench_rows}
    for p in preds:
        row = by_id[p["id"]]
        assert p["question"] == row["question"] and p["prompt"] == row["question"]  # synth-bench: no suffix
        assert p["task"] == row["task"] and p["metric"] == row["metric"]
        assert isinstance(p["prediction"], str)
        for gt in ("answer", "answers", "gt_box", "width", "height"):
            assert p.get(gt) == row.get(gt)

    # scores.json: one entry per task with its count, the overall mean, and equal to re-scoring the file.
    scores = json.loads((out / "scores.json").read_text())["benchmarks"]["synth-bench"]
    tasks = scores["tasks"]
    assert set(tasks) == {r["task"] for r in bench_rows} and len(tasks) == N_ROWS
    assert all(t["n"] == 1 for t in tasks.values()) and scores["n"] == N_ROWS
    expected = rescore(preds, anchor="top-left")  # nano's pad anchor
    assert {t: v["score"] for t, v in tasks.items()} == pytest.approx(expected)
    assert scores["score"] == pytest.approx(sum(expected.values()) / len(expected))
    assert scores["settings"]["decoding"] == "greedy" and scores["settings"]["max_new_tokens"] == 3

    md = (out / "scores.md").read_text().splitlines()
    assert md[0] == "| benchmark | task | metric | n | score |"
    assert len([line for line in md if line.startswith("| synth-bench |")]) == N_ROWS + 1  # tasks + overall
    assert f"| synth-bench | color | exact | 1 | {tasks['color']['score']:.2f} |" in md
    assert "| synth-bench | color | exact | 1 |" in stdout  # the same table is printed

    # Second identical run: nothing new is generated, the file is unchanged.
    before = (out / "synth-bench" / "predictions.jsonl").read_text()
    counting_generate.clear()
    assert run_eval(capsys, *common)[0] == 0
    assert counting_generate == []
    assert (out / "synth-bench" / "predictions.jsonl").read_text() == before

    # A run interrupted mid-write: 3 complete lines and half of the 4th. The rest is completed.
    lines = before.splitlines(keepends=True)
    (out / "synth-bench" / "predictions.jsonl").write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])
    counting_generate.clear()
    code, _, err = run_eval(capsys, *common)
    assert code == 0, err
    assert sum(counting_generate) == N_ROWS - 3
    preds2 = read_jsonl(out / "synth-bench" / "predictions.jsonl")
    assert sorted(p["id"] for p in preds2) == sorted(by_id)
    # Greedy decoding is deterministic: regenerated rows repeat the first answers exactly.
    assert {p["id"]: p["prediction"] for p in preds2} == {p["id"]: p["prediction"] for p in preds}

    # Changing a setting that alters predictions refuses to mix them.
    code, _, err = run_eval(capsys, *common[:-3], "--max-new-tokens", "5", "--quiet")
    assert code == 2 and "max_new_tokens" in err and "--overwrite" in err


# ---- known predictions -> known scores -----------------------------------------------------------------
def write_image(path: Path, size=(200, 100)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path.name


def fake_model(anchor: str = "top-left"):
    return SimpleNamespace(config=SimpleNamespace(vision=SimpleNamespace(canvas=SimpleNamespace(pad_anchor=anchor))))


def answer_book(answers: dict[str, str], seen: list):
    """A stand-in for generation: the answer for each prompt, recording what was asked."""
    def generate(model, requests, max_new_tokens):
        seen.extend((r["question"], tuple(r["images"]), max_new_tokens) for r in requests)
        return [(answers[r["question"]], "stop") for r in requests]

    return generate


@pytest.fixture
def mixed_bench(tmp_path) -> Path:
    img = write_image(tmp_path / "bench" / "red.png")  # 200 x 100
    rows = [
        {"id": "c1", "question": "Colour of the box?", "image": img, "task": "color", "metric": "exact",
         "answer": "red"},
        {"id": "c2", "question": "Colour of the sky?", "image": img, "task": "color", "metric": "exact",
         "answer": "blue"},
        {"id": "v1", "question": "How many?", "image": img, "task": "vqa", "metric": "vqa",
         "answers": ["2"] * 2 + ["3"] * 8},
        # Box = bottom-left quarter; on the top-left padded 200 px canvas: [0, 0.25, 0.5, 0.5].
        {"id": "r1", "question": "Where is the box?", "image": img, "task": "rec", "metric": "rec",
         "gt_box": [0, 50, 100, 100], "width": 200, "height": 100},
        {"id": "t1", "question": "What is 2 + 2?", "task": "arithmetic", "metric": "exact", "answer": "4",
         "category": "add"},
        {"id": "t2", "question": "What is 3 * 3?", "task": "arithmetic", "metric": "exact", "answer": "9",
         "category": "mul"},
    ]
    path = tmp_path / "bench" / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ANSWERS = {"Colour of the box?": "Red.", "Colour of the sky?": "green", "How many?": "two",
           "Where is the box?": "[0.00, 0.25, 0.50, 0.50]", "What is 2 + 2?": "4", "What is 3 * 3?": "6"}


def test_known_predictions_give_exact_scores(mixed_bench, tmp_path):
    seen: list = []
    bench = load_rows(resolve_benchmark(str(mixed_bench)))
    scores = evaluate(fake_model("top-left"), [bench], tmp_path / "out", batch_size=4,
                      generate_fn=answer_book(ANSWERS, seen), progress=False)
    s = scores["benchmarks"]["mixed"]
    tasks = s["tasks"]
    assert tasks["color"]["score"] == pytest.approx(50.0) and tasks["color"]["n"] == 2
    assert tasks["vqa"]["score"] == pytest.approx(60.0)  # "two" -> "2": 2 matches, 10 leave-one-out subsets
    assert tasks["rec"]["score"] == pytest.approx(100.0)
    assert tasks["arithmetic"]["score"] == pytest.approx(50.0)
    assert tasks["arithmetic"]["categories"] == {"add": {"n": 1, "score": 100.0}, "mul": {"n": 1, "score": 0.0}}
    assert s["score"] == pytest.approx((50 + 60 + 100 + 50) / 4) and s["score_is"] == "mean over tasks"
    # A file benchmark with no registered spec: prompt is the bare question, rows batched 4 + 2.
    assert sorted(q for q, _, _ in seen) == sorted(ANSWERS)
    assert {n for _, _, n in seen} == {32}
    assert dict((q, ims) for q, ims, _ in seen)["What is 2 + 2?"] == ()  # text-only row: no image
    assert dict((q, ims) for q, ims, _ in seen)["How many?"] == (str(mixed_bench.parent / "red.png"),)


def test_rec_uses_the_models_pad_anchor(mixed_bench, tmp_path):
    # Read with centred padding (50 px above the image) the same answer is the top-left quarter: IoU 0.
    bench = load_rows(resolve_benchmark(str(mixed_bench)))
    scores = evaluate(fake_model("center"), [bench], tmp_path / "out", generate_fn=answer_book(ANSWERS, []),
                      progress=False)
    rec = scores["benchmarks"]["mixed"]["tasks"]["rec"]
    assert rec["score"] == 0.0 and rec["details"]["anchor"] == "center"
    assert rec["details"]["mean_iou"] == 0.0


def test_registered_benchmark_prompt_budget_and_multiple_benches(tmp_path):
    img = write_image(tmp_path / "b" / "x.png")
    (tmp_path / "b" / "gqa_testdev.jsonl").write_text(
        json.dumps({"id": 1, "question": "What colour?", "image": img, "answer": "red"}) + "\n")
    (tmp_path / "b" / "chartqa_test_human.jsonl").write_text(
        json.dumps({"id": "a", "question": "Value of A?", "image": img, "answer": "100"}) + "\n")
    benches = [load_rows(resolve_benchmark(name, bench_root=tmp_path / "b"))
               for name in ("gqa_testdev", "chartqa_test_human")]
    seen: list = []
    answers = {SHORT_ANSWER.format(question="What colour?"): "red",
               SHORT_ANSWER.format(question="Value of A?"): "104"}  # within 5% of 100
    scores = evaluate(fake_model(), benches, tmp_path / "out", generate_fn=answer_book(answers, seen), progress=False)
    assert {q for q, _, _ in seen} == set(answers)
    assert {n for _, _, n in seen} == {10}  # eval_mm's budget for both
    assert scores["benchmarks"]["gqa_testdev"]["score"] == 100.0
    assert scores["benchmarks"]["chartqa_test_human"]["tasks"]["all"]["metric"] == "relaxed"
    assert scores["benchmarks"]["chartqa_test_human"]["score"] == 100.0
    md = (tmp_path / "out" / "scores.md").read_text()
    assert "| gqa_testdev | all | exact | 1 | 100.00 |" in md and "| chartqa_test_human | all | relaxed | 1 |" in md


# ---- errors ------------------------------------------------------------------------------------------
def test_unknown_benchmark_lists_the_registered_ones(nano_dir, tmp_path, capsys):
    code, _, err = run_eval(capsys, "--model", str(nano_dir), "--bench", "no-such-bench", "--output",
                            str(tmp_path / "o"))
    assert code == 2
    assert "unknown benchmark 'no-such-bench'" in err
    for name in ("synth-bench", "vqav2_val", "textvqa_val", "docvqa_val", "mme", "pope_random", "refcocog_test"):
        assert name in err


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"id": "b", "question": "q?", "metric": "exact"}, "missing field 'answer'"),
        ({"id": "b", "question": "q?", "metric": "vqa", "answers": "red"}, "field 'answers' must be a non-empty list"),
        ({"id": "b", "question": "q?", "answer": "x"}, "missing field 'metric'"),
        ({"id": "b", "question": "q?", "metric": "exact", "answer": "x", "image": "missing.png"},
         "field 'image': file not found"),
        ({"id": "a", "question": "q?", "metric": "exact", "answer": "x"}, "field 'id' 'a' repeats line 1"),
        ({"question": "q?", "metric": "exact", "answer": "x"}, "missing field 'id'"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, bad_row, message):
    path = tmp_path / "bench.jsonl"
    good = {"id": "a", "question": "q?", "metric": "exact", "answer": "x"}
    path.write_text(json.dumps(good) + "\n" + (bad_row if isinstance(bad_row, str) else json.dumps(bad_row)) + "\n")
    with pytest.raises(BenchmarkError) as e:
        load_rows(resolve_benchmark(str(path)))
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_missing_registered_file_says_how_to_make_it(tmp_path):
    with pytest.raises(BenchmarkError, match="sphinx-x convert-bench textvqa_val"):
        resolve_benchmark("textvqa_val", bench_root=tmp_path)
    with pytest.raises(BenchmarkError, match="sphinx-x data synth"):
        resolve_benchmark("synth-bench", synth_dir=tmp_path)


def test_corrupt_predictions_in_the_middle_are_refused(mixed_bench, tmp_path):
    bench = load_rows(resolve_benchmark(str(mixed_bench)))
    pred_dir = tmp_path / "out" / "mixed"
    pred_dir.mkdir(parents=True)
    (pred_dir / "predictions.jsonl").write_text('{"id": "c1", "prediction": "red"}\n{broken\n{"id": "c2"}\n')
    with pytest.raises(HarnessError, match=r"predictions.jsonl:2: not valid JSON"):
        evaluate(fake_model(), [bench], tmp_path / "out", generate_fn=answer_book(ANSWERS, []), progress=False)


def test_resume_after_a_complete_last_line_without_newline(mixed_bench, tmp_path):
    bench = load_rows(resolve_benchmark(str(mixed_bench)))
    pred_dir = tmp_path / "out" / "mixed"
    pred_dir.mkdir(parents=True)
    first = {"id": "c1", "question": "Colour of the box?", "prediction": "red", "answer": "red", "task": "color",
             "metric": "exact"}
    (pred_dir / "predictions.jsonl").write_text(json.dumps(first))  # no trailing newline
    seen: list = []
    scores = evaluate(fake_model(), [bench], tmp_path / "out", generate_fn=answer_book(ANSWERS, seen), progress=False)
    assert "Colour of the box?" not in {q for q, _, _ in seen} and len(seen) == 5
    lines = (pred_dir / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0]) == first
    assert scores["benchmarks"]["mixed"]["tasks"]["color"]["score"] == pytest.approx(50.0)
