"""The synthetic corpus: determinism, domains, geometry of the text against the drawn pixels, bench rows."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from sphinx_x.canvas import CanvasGeometry
from sphinx_x.constants import IMAGE_PLACEHOLDER
from sphinx_x.data.geometry import parse_box, parse_boxes, parse_marks, parse_phrases
from sphinx_x.data.synth import BENCH_TASKS, DOMAINS, generate_corpus, make_sample
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import REC_PROMPT

SIZES = dict(train=30, val=8, test=2 * len(BENCH_TASKS))


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    generate_corpus(out, **SIZES, seed=3)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_identical_files_whatever_the_workers(corpus: Path, tmp_path: Path) -> None:
    generate_corpus(tmp_path / "b", **SIZES, seed=3, workers=2)
    a, b = tree_hashes(corpus), tree_hashes(tmp_path / "b")
    assert len(a) > SIZES["train"] and a == b
    # a rerun into an existing corpus directory replaces it with the same bytes
    generate_corpus(tmp_path / "b", **SIZES, seed=3)
    assert tree_hashes(tmp_path / "b") == a


def test_seed_changes_output(corpus: Path, tmp_path: Path) -> None:
    generate_corpus(tmp_path / "c", **SIZES, seed=4)
    a, c = tree_hashes(corpus), tree_hashes(tmp_path / "c")
    assert a.keys() == c.keys()
    assert a["bench.jsonl"] != c["bench.jsonl"]
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) > 0.9 * sum(k.endswith(".png") for k in a)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_corpus(tmp_path, 1, 0, 0)
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_mixes_cover_every_domain_and_rows_are_well_formed(corpus: Path) -> None:
    for split in ("train", "val"):
        meta = yaml.safe_load((corpus / f"{split}.yaml").read_text())["META"]
        assert [m["path"] for m in meta] == [f"{split}/{d}.jsonl" for d in DOMAINS]
        for m in meta:
            domain = Path(m["path"]).stem
            assert m["type"] == DOMAINS[domain].type and m["root"] == "."
            rows = read_jsonl(corpus / m["path"])
            assert rows
            for row in rows:
                conv = row["conversations"]
                assert [c["from"] for c in conv] == ["human", "gpt"] * (len(conv) // 2) and conv
                has_image = m["type"] == "image_text"
                assert ("image" in row) == has_image
                # images go after BOS, as at inference: no placeholder anywhere
                assert sum(c["value"].count(IMAGE_PLACEHOLDER) for c in conv) == 0
                if has_image:
                    assert (corpus / row["image"]).is_file()
    summary = json.loads((corpus / "synth.json").read_text())
    assert sum(summary["domains"]["train"].values()) == SIZES["train"]


def test_aspect_ratios_and_skipped_cells() -> None:
    ratios, skipping = set(), 0
    for i in range(150):
        s = make_sample(0, "train", i)
        if s.image is None:
            continue
        w, h = s.image.size
        ratios.add(min((abs(w / h - r), name) for r, name in
                       [(1, "1:1"), (4 / 3, "4:3"), (3 / 4, "3:4"), (2, "2:1"), (1 / 2, "1:2"), (3, "3:1"),
                        (1 / 3, "1:3")])[1])
        skipping += any(CanvasGeometry(w, h).skipped_cells(2))
    assert ratios == {"1:1", "4:3", "3:4", "2:1", "1:2", "3:1", "1:3"}
    assert skipping >= 20  # elongated images leave whole 2x2 cells empty: skip tokens get exercised


def _tight_color_box(img: Image.Image, rgb: tuple[int, int, int]) -> list[int]:
    ys, xs = np.nonzero(np.all(np.asarray(img) == np.array(rgb, dtype=np.uint8), axis=-1))
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_grounding_boxes_match_the_drawn_objects() -> None:
    checked = 0
    for i in range(120):
        s = make_sample(1, "train", i)
        if s.domain != "grounding":
            continue
        geom = CanvasGeometry(*s.image.size)
        objects = s.meta["objects"]
        drawn = {o["color"]: _tight_color_box(s.image, COLORS[o["color"]]) for o in objects}
        for o in objects:  # the recorded box is where the pixels of that colour are (within 1 px)
            assert max(abs(a - b) for a, b in zip(o["box"], drawn[o["color"]])) <= 1
        targets = [geom.to_canvas(o["box"]) for o in objects]
        for _, answer in s.turns:
            boxes = parse_boxes(answer)
            assert boxes or answer.startswith("There are no")
            for box in boxes:  # every box stated is one drawn object's box, to 0.01 of the canvas
                assert min(max(abs(a - b) for a, b in zip(box, t)) for t in targets) <= 0.01
                checked += 1
        for phrase, boxes in parse_phrases(" ".join(a for _, a in s.turns)):
            for box in boxes:  # grounded captions name the object whose box follows them
                named = [o for o in objects if o["color"] in phrase and o["shape"] in phrase]
                if named:
                    assert max(abs(a - b) for a, b in zip(box, geom.to_canvas(named[0]["box"]))) <= 0.01
    assert checked >= 20


def test_rec_bench_rows_map_back_to_pixels() -> None:
    for i in range(len(BENCH_TASKS) * 4):
        s = make_sample(2, "test", i)
        if s.bench["task"] != "rec":
            continue
        question, answer = s.turns[0]
        assert question.startswith(REC_PROMPT.format(""))
        w, h = s.image.size
        assert (s.bench["width"], s.bench["height"]) == (w, h)
        pixels = CanvasGeometry(w, h).to_pixels(parse_box(answer))
        assert max(abs(a - b) for a, b in zip(pixels, s.bench["gt_box"])) <= 0.01 * max(w, h)


def test_som_marks_point_at_their_objects() -> None:
    checked = 0
    for i in range(240):  # SoM is 1 of the schedule's 63 indices
        s = make_sample(0, "train", i)
        if s.domain != "som":
            continue
        geom = CanvasGeometry(*s.image.size)
        centres = [geom.to_canvas([(o["box"][0] + o["box"][2]) / 2, (o["box"][1] + o["box"][3]) / 2])
                   for o in s.meta["objects"]]
        for q, a in s.turns:
            for _, point in parse_marks(q) + parse_marks(a):
                assert min(max(abs(p - c) for p, c in zip(point, ctr)) for ctr in centres) <= 0.01
                checked += 1
    assert checked >= 10


def test_ocr_spotting_boxes_hold_the_ink() -> None:
    """Every spotted word's box holds ink, and together the boxes hold all the ink of the image."""
    checked = 0
    for i in range(200):
        s = make_sample(0, "train", i)
        spotting = [a for q, a in s.turns if q.startswith("Detect all regions")]
        if s.domain != "ocr" or not spotting:
            continue
        arr = np.asarray(s.image).astype(int)
        ink = np.abs(arr - arr[0, 0]).sum(-1) > 60  # differs clearly from the paper colour
        covered = np.zeros_like(ink)
        geom = CanvasGeometry(*s.image.size)
        phrases = parse_phrases(spotting[0])
        assert sorted(t for t, _ in phrases) == sorted(w["text"] for w in s.meta["words"])
        for _, boxes in phrases:
            x1, y1, x2, y2 = (round(v) for v in geom.to_pixels(boxes[0]))
            box = (slice(max(0, y1 - 2), y2 + 3), slice(max(0, x1 - 2), x2 + 3))  # 2 decimals ~ 1-2 px
            assert ink[box].sum() > 50
            covered[box] = True
        assert not (ink & ~covered).any()
        checked += 1
    assert checked >= 3


def test_bench_rows_have_their_metric_fields(corpus: Path) -> None:
    from sphinx_x.eval.metrics import score_rows

    rows = read_jsonl(corpus / "bench.jsonl")
    assert len(rows) == SIZES["test"]
    assert {r["task"] for r in rows} == set(BENCH_TASKS)
    by_metric: dict[str, list[dict]] = {}
    for r in rows:
        assert {"id", "question", "task", "metric"} <= r.keys()
        assert ("image" in r) == (BENCH_TASKS[r["task"]] != "text")
        if "image" in r:
            assert (corpus / r["image"]).is_file() and IMAGE_PLACEHOLDER not in r["question"]
        if r["metric"] in ("exact", "mc", "pope", "relaxed"):
            assert isinstance(r["answer"], str) and r["answer"]
            prediction = r["answer"]
        elif r["metric"] in ("vqa", "anls"):
            assert r["answers"] and all(isinstance(a, str) for a in r["answers"])
            prediction = r["answers"][0]
        else:
            assert r["metric"] == "rec"
            w, h = r["width"], r["height"]
            x1, y1, x2, y2 = r["gt_box"]
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            prediction = "[" + ", ".join(f"{v:.2f}" for v in CanvasGeometry(w, h).to_canvas(r["gt_box"])) + "]"
        by_metric.setdefault(r["metric"], []).append({**r, "prediction": prediction})
    assert set(by_metric) == {"exact", "mc", "pope", "relaxed", "anls", "rec"}
    for metric, metric_rows in by_metric.items():  # the ground truth, read as a prediction, scores 100
        assert score_rows(metric, metric_rows).score == pytest.approx(100.0), metric


def test_training_dialogues_are_dense_and_cannot_be_answered_from_their_own_text() -> None:
    """An image costs the same compute whatever its number of turns, so training scenes carry several
    different questions. None may be answerable by copying from earlier turns: a VQA question never asks
    the colour or shape of an object whose colour and shape earlier turns both named, and a grounding
    answer never repeats a box an earlier answer gave."""
    expected = {"vqa": (2, 7), "grounding": (1, 3), "chart": (2, 3), "text": (3, 5)}
    lengths: dict[str, list[int]] = {d: [] for d in expected}
    asked_about_named = 0
    for i in range(240):
        s = make_sample(5, "train", i)
        questions = [q for q, _ in s.turns]
        if s.domain in expected:
            lo, hi = expected[s.domain]
            assert lo <= len(s.turns) <= hi, (s.domain, len(s.turns))
            lengths[s.domain].append(len(s.turns))
        if s.domain in ("vqa", "grounding"):
            assert len(set(questions)) == len(questions), (s.domain, questions)
        if s.domain == "vqa":
            objects = s.meta["objects"]
            for k, (q, _) in enumerate(s.turns):
                earlier = " ".join(f"{x} {y}" for x, y in s.turns[:k])
                if m := re.match(r"What color is the (\w+)\?", q):
                    subject = next(o for o in objects if o["shape"] == m[1])
                elif m := re.match(r"What shape is the (\w+) object\?", q):  # also the multiple-choice form
                    subject = next(o for o in objects if o["color"] == m[1])
                else:
                    continue
                asked_about_named += subject["color"] in earlier and subject["shape"] in earlier
        if s.domain == "grounding":
            given: set[str] = set()
            for _, a in s.turns:
                boxes = re.findall(r"\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d", a)
                assert not given & set(boxes), (a, given)
                given |= set(boxes)
    assert asked_about_named == 0
    assert set(lengths["vqa"]) >= {4, 5, 6} and sum(lengths["vqa"]) / len(lengths["vqa"]) > 4
    assert max(lengths["grounding"]) == 3


def test_grounding_dialogues_ask_a_box_first_and_the_tokenizer_mix_keeps_its_own() -> None:
    """Training grounding dialogues open with the box of one named object (REC), then up to 2 other grounding turns;
    the tokenizer's mix (what the shipped nano tokenizer was trained on) keeps grounding at weight 3 without that."""
    from sphinx_x.data.synth.corpus import DOMAINS, TOKENIZER_SCHEDULE, tokenizer_sample
    from sphinx_x.data.synth.scenes import REC_PROMPT

    rec = re.compile("^" + re.escape(REC_PROMPT).replace(re.escape("{}"), "the (\\w+) (\\w+)") + "$")
    grounding = [s for s in (make_sample(3, "train", i) for i in range(200)) if s.domain == "grounding"]
    assert len(grounding) >= 60  # 24 of the schedule's 58
    for s in grounding:
        (question, answer), *rest = s.turns
        m = rec.match(question)
        assert m is not None and len(rest) <= 2, s.turns
        named = [o for o in s.meta["objects"] if (o["color"], o["shape"]) == (m[1], m[2])]
        assert len(named) == 1 and re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", answer)
    assert DOMAINS["grounding"].weight == 24 and TOKENIZER_SCHEDULE.count("grounding") == 3
    firsts = [tokenizer_sample(3, i).turns[0][0] for i in range(200)
              if TOKENIZER_SCHEDULE[i % len(TOKENIZER_SCHEDULE)] == "grounding"]
    assert any(not rec.match(q) for q in firsts) and any(rec.match(q) for q in firsts)


def test_vqa_dialogues_ask_lookups_first_and_always_count() -> None:
    """Training VQA dialogues open with questions that must find a named object (colour of a shape, shape of a
    colour, their multiple-choice form) while one is left to ask about, and every dialogue counts something, so
    scenes of many objects are counted as often as small ones; scenes hold 1-4 objects, most of them several."""
    lookup = re.compile(r"What (color is the \w+|shape is the \w+ object)\?")
    sizes, counted, opened_with_lookup, multi = [], 0, 0, 0
    for i in range(400):
        s = make_sample(7, "train", i)
        if s.domain != "vqa":
            continue
        sizes.append(len(s.meta["objects"]))
        questions = [q for q, _ in s.turns]
        counted += any(q.startswith("How many") for q in questions)
        first = next(q for q in questions if not q.startswith("How many"))
        if len(s.meta["objects"]) >= 2:
            multi += 1
            opened_with_lookup += bool(lookup.match(first))
    assert counted == len(sizes) > 100
    assert opened_with_lookup == multi > 50
    assert set(sizes) <= {1, 2, 3, 4} and 1 in sizes and sum(n >= 2 for n in sizes) > 0.75 * len(sizes)


def test_drills_add_arithmetic_dialogues_to_the_training_mix_only(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    summary = generate_corpus(out, **SIZES, seed=3, drills=5)
    meta = yaml.safe_load((out / "train.yaml").read_text())["META"]
    assert [m["path"] for m in meta] == [f"train/{d}.jsonl" for d in DOMAINS] + ["train/drills.jsonl"]
    assert meta[-1]["type"] == "text"
    assert "drills" not in (out / "val.yaml").read_text()
    rows = read_jsonl(out / "train" / "drills.jsonl")
    assert [r["id"] for r in rows] == [f"drill-{i:06d}" for i in range(5)]
    for r in rows:
        assert "image" not in r and 8 <= len(r["conversations"]) <= 16  # 4-8 question/answer pairs
        for q, a in zip(r["conversations"][::2], r["conversations"][1::2]):
            x, op, y = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", q["value"]).groups()
            assert int(a["value"]) == (int(x) + int(y) if op == "+" else int(x) - int(y))
    assert summary["sizes"]["drills"] == 5 and summary["domains"]["train"]["drills"] == 5
    # everything else is the corpus without drills, byte for byte
    plain, drilled = tree_hashes(corpus), tree_hashes(out)
    assert {k: v for k, v in drilled.items() if k not in ("train/drills.jsonl", "train.yaml", "synth.json")} == \
        {k: v for k, v in plain.items() if k not in ("train.yaml", "synth.json")}
    with pytest.raises(ValueError, match="--drills must be >= 0"):
        generate_corpus(tmp_path / "e", 1, 0, 0, drills=-1)


def test_ocr_kinds_are_drawn_by_their_weights() -> None:
    """Training OCR samples are single words in KIND_WEIGHTS's share (9 in 15), the other kinds in theirs; explicit
    weights replace them (the tokenizer's mix keeps 3:2:2:2); a benchmark row is always one word."""
    import random

    from sphinx_x.data.synth.ocr import KIND_WEIGHTS, TRANSCRIBE_PROMPT, generate_ocr

    def kinds(n: int, weights: dict[str, int] | None = None) -> dict[str, int]:
        counts = {"word": 0, "line": 0, "other": 0}
        for i in range(n):
            s = generate_ocr(random.Random(f"kinds:{i}"), kind_weights=weights)
            answer = dict(s.turns).get(TRANSCRIBE_PROMPT)
            kind = "other" if answer is None or s.meta["words"][2:] else ("word", "line")[len(answer.split()) > 1]
            counts[kind] += 1
        return counts

    assert KIND_WEIGHTS == {"word": 9, "line": 2, "spotting": 2, "page": 2}
    shares = kinds(300)
    assert 0.5 < shares["word"] / 300 < 0.7 and 0.07 < shares["line"] / 300 < 0.2
    assert kinds(40, {"word": 1, "line": 0, "spotting": 0, "page": 0}) == {"word": 40, "line": 0, "other": 0}
    old = kinds(300, {"word": 3, "line": 2, "spotting": 2, "page": 2})
    assert 0.25 < old["word"] / 300 < 0.42
    row = generate_ocr(random.Random("row"), task="ocr", kind_weights={"word": 0, "line": 1, "spotting": 0, "page": 0})
    assert len(row.meta["words"]) == 1 and row.bench["answer"] == row.meta["words"][0]["text"]
