"""`sphinx-x convert-bench`: tiny annotation files in the real LLaMA2-Accessory eval_mm / POPE layouts become
benchmark rows the harness reads and scores."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from sphinx_x.cli import main
from sphinx_x.eval.benchmarks import BenchmarkError, load_rows, resolve_benchmark
from sphinx_x.eval.convert import convert
from sphinx_x.eval.harness import evaluate


def eval_mm(tmp_path: Path, name: str, items: list[dict]) -> Path:
    """eval_mm/annotations/NAME.json with the images its `image_path`s name (relative to eval_mm/)."""
    root = tmp_path / "eval_mm"
    for item in items:
        image = root / item["image_path"]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (10, 20, 30)).save(image)
    path = root / "annotations" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items))
    return path


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_textvqa_with_official_answers(tmp_path):
    ann = eval_mm(tmp_path, "textvqa_val", [
        {"image_path": "data/textvqa/train_images/003a8ae2ef43b901.jpg",
         "question": "what is the brand of this camera?",
         "question_id": 34602, "dataset_name": "textvqa_val", "gt_answers": "dakota"},
        {"image_path": "data/textvqa/train_images/b9dc400eb20bad64.jpg", "question": "what does the text spell?",
         "question_id": 34603, "dataset_name": "textvqa_val", "gt_answers": "copenhagen"},
    ])
    official = tmp_path / "textvqa_val_annotations.json"
    official.write_text(json.dumps({"annotations": [
        {"question_id": 34602, "answers": [{"answer": "dakota", "answer_id": i} for i in range(7)]
         + [{"answer": "dakota digital", "answer_id": i} for i in range(7, 10)]},
        {"question_id": 34603, "answers": [{"answer": "copenhagen", "answer_id": i} for i in range(10)]},
    ]}))
    out = tmp_path / "bench" / "textvqa_val.jsonl"
    summary = convert("textvqa_val", ann, out, official=official)
    assert summary["rows"] == 2 and summary["missing_images"] == 0 and "note" not in summary
    rows = rows_of(out)
    assert rows[0] == {
        "id": "textvqa_val-000000", "source_id": 34602, "question": "what is the brand of this camera?",
        "image": "../eval_mm/data/textvqa/train_images/003a8ae2ef43b901.jpg",
        "answers": ["dakota"] * 7 + ["dakota digital"] * 3,
    }
    assert rows[1]["answers"] == ["copenhagen"] * 10
    # The file is found by name under --bench-root and scored with the registry's metric and prompt.
    bench = load_rows(resolve_benchmark("textvqa_val", bench_root=out.parent))
    assert bench.spec.metric == "vqa" and bench.spec.max_new_tokens == 10
    scores = evaluate(SimpleNamespace(), [bench], tmp_path / "eval", progress=False,
                      generate_fn=lambda m, reqs, n: [("Dakota", "stop"), ("paris", "stop")])
    assert scores["benchmarks"]["textvqa_val"]["score"] == pytest.approx(50.0)  # 7 of 10 agree: 1.0, then 0


def test_vqa_without_official_keeps_the_single_answer_and_says_so(tmp_path):
    ann = eval_mm(tmp_path, "vqav2_val", [{"image_path": "data/coco/val2014/a.jpg", "question": "what color?",
                                           "question_id": 1, "dataset_name": "vqav2_val", "gt_answers": "red"}])
    summary = convert("vqav2_val", ann, tmp_path / "vqav2_val.jsonl")
    assert rows_of(tmp_path / "vqav2_val.jsonl")[0]["answers"] == ["red"]
    assert "exact match" in summary["note"]


def test_docvqa_official_answers(tmp_path):
    ann = eval_mm(tmp_path, "docvqa_val", [
        {"image_path": "data/docvqa/val/documents/nkbl0226_1.png", "question": "What is name of university?",
         "question_id": 24580, "dataset_name": "docvqa_val", "gt_answers": "university of california"}])
    official = tmp_path / "val_v1.0.json"
    official.write_text(json.dumps({"dataset_split": "val", "data": [
        {"questionId": 24580, "question": "What is name of university?", "image": "documents/nkbl0226_1.png",
         "answers": ["university of california", "University of California, San Diego"]}]}))
    convert("docvqa_val", ann, tmp_path / "docvqa_val.jsonl", official=official)
    row = rows_of(tmp_path / "docvqa_val.jsonl")[0]
    assert row["answers"] == ["university of california", "University of California, San Diego"]


def test_chartqa_and_gqa_single_answers_get_unique_ids(tmp_path):
    ann = eval_mm(tmp_path, "chartqa_test_human", [
        {"image_path": "data/chartqa/ChartQA Dataset/test/png/8127.png",
         "question": "What's the value of the lowest bar?",
         "question_id": -1, "dataset_name": "chartqa_test_human", "gt_answers": "23"},
        {"image_path": "data/chartqa/ChartQA Dataset/test/png/8127.png", "question": "Is A more than B?",
         "question_id": -1, "dataset_name": "chartqa_test_human", "gt_answers": "No"},
    ])
    convert("chartqa_test_human", ann, tmp_path / "c.jsonl")
    rows = rows_of(tmp_path / "c.jsonl")
    assert [r["id"] for r in rows] == ["chartqa_test_human-000000", "chartqa_test_human-000001"]
    assert [r["answer"] for r in rows] == ["23", "No"] and all(r["source_id"] == -1 for r in rows)

    ann = eval_mm(tmp_path, "gqa_testdev_balanced", [
        {"image_path": "data/GQA/images/n161313.jpg", "question": "Is it overcast?", "question_id": "n161313",
         "dataset_name": "gqa", "gt_answers": "no"}])
    convert("gqa_testdev", ann, tmp_path / "g.jsonl")
    assert rows_of(tmp_path / "g.jsonl")[0]["answer"] == "no"


def test_mme_category_and_image_id(tmp_path):
    ann = eval_mm(tmp_path, "MME_benchmark", [
        {"image_path": "./data/MME_Benchmark_release_version/artwork/images/37077.jpg",
         "question": "Does this artwork belong to the type of religious? Please answer yes or no.",
         "question_id": 0, "dataset_name": "MME_artwork", "gt_answers": "Yes"},
        {"image_path": "./data/MME_Benchmark_release_version/artwork/images/37077.jpg",
         "question": "Does this artwork belong to the type of still-life? Please answer yes or no.",
         "question_id": 1, "dataset_name": "MME_artwork", "gt_answers": "No"},
    ])
    convert("mme", ann, tmp_path / "mme.jsonl")
    rows = rows_of(tmp_path / "mme.jsonl")
    assert [(r["answer"], r["category"]) for r in rows] == [("yes", "artwork"), ("no", "artwork")]
    assert rows[0]["image_id"] == rows[1]["image_id"] == "./data/MME_Benchmark_release_version/artwork/images/37077.jpg"
    assert (tmp_path / rows[0]["image"]).is_file()


def test_refcoco_box_and_size_from_question_id(tmp_path):
    ann = eval_mm(tmp_path, "refcoco_val", [
        {"image_path": "data/coco/train2014/COCO_train2014_000000580957.jpg",
         "question": "bowl behind the others can only see part", "question_id": "height428_width640",
         "dataset_name": "refcoco_val", "gt_answers": [468.3, 0.91, 640.0, 117.03]}])
    convert("refcoco_val", ann, tmp_path / "refcoco_val.jsonl")
    row = rows_of(tmp_path / "refcoco_val.jsonl")[0]
    assert row["question"] == "bowl behind the others can only see part"
    assert row["gt_box"] == [468.3, 0.91, 640.0, 117.03] and (row["width"], row["height"]) == (640, 428)
    bench = resolve_benchmark(str(tmp_path / "refcoco_val.jsonl"))  # the stem picks the registered spec
    assert bench.spec.metric == "rec"
    assert bench.spec.format_prompt(row["question"]) == (
        "Please provide the bounding box coordinate of the region this sentence describes: "
        "bowl behind the others can only see part")


def test_refcoco_without_size_names_the_item(tmp_path):
    ann = eval_mm(tmp_path, "refcoco_val", [
        {"image_path": "data/a.jpg", "question": "dog", "question_id": 7, "gt_answers": [1, 2, 3, 4]}])
    with pytest.raises(BenchmarkError, match=r"refcoco_val.json: item 0: field 'question_id' must hold the image size"):
        convert("refcoco_val", ann, tmp_path / "r.jsonl")


def test_bad_ground_truth_names_the_item_and_field(tmp_path):
    ann = eval_mm(tmp_path, "mme", [
        {"image_path": "data/a.jpg", "question": "q", "question_id": 0, "dataset_name": "MME_OCR",
         "gt_answers": "Yes"},
        {"image_path": "data/a.jpg", "question": "q", "question_id": 1, "dataset_name": "MME_OCR"}])
    with pytest.raises(BenchmarkError, match=r"mme.json: item 1: missing field 'gt_answers'"):
        convert("mme", ann, tmp_path / "m.jsonl")


def test_pope_official_jsonl_via_cli(tmp_path, capsys):
    coco = tmp_path / "val2014"
    coco.mkdir()
    Image.new("RGB", (32, 32)).save(coco / "COCO_val2014_000000548882.jpg")
    ann = tmp_path / "coco_pope_adversarial.json"
    ann.write_text(
        '{"question_id": 0, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, '
        '"text": "Is there a dining table in the image?", "label": "yes"}\n'
        '{"question_id": 3, "image": "COCO_val2014_000000548882.jpg", "image_id": 548882, '
        '"text": "Is there a tv in the image?", "label": "no"}\n')
    out = tmp_path / "bench" / "pope.jsonl"
    code = main(["convert-bench", "pope", "--input", str(ann), "--image-root", str(coco), "--out", str(out)])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2
    rows = rows_of(out)
    assert [(r["question"], r["answer"], r["category"]) for r in rows] == [
        ("Is there a dining table in the image?", "yes", "adversarial"), ("Is there a tv in the image?", "no",
                                                                          "adversarial")]
    assert (out.parent / rows[0]["image"]).resolve() == (coco / "COCO_val2014_000000548882.jpg").resolve()


def test_cli_rejects_unknown_name_and_official_for_non_vqa(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert-bench", "imagenet", "--input", "x.json"])
    assert "invalid choice" in capsys.readouterr().err
    ann = eval_mm(tmp_path, "gqa", [{"image_path": "data/a.jpg", "question": "q", "question_id": "n1",
                                     "gt_answers": "no"}])
    code = main(["convert-bench", "gqa_testdev", "--input", str(ann), "--official", str(ann),
                 "--out", str(tmp_path / "g.jsonl")])
    assert code == 2 and "--official applies to VQA-style and DocVQA" in capsys.readouterr().err
