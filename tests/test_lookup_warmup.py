"""The stand-in LLM's lookup warm-up (sphinx_x/standins/lookup_warmup.py): its questions, corpus and settings.
The warm-up inside `build_standins` is tested in tests/test_standins.py, inside the quickstart in
tests/test_quickstart.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sphinx_x.data.synth.scenes import COLORS, SHAPES
from sphinx_x.standins.lookup_warmup import (
    MIX_FILE,
    ROW_FILE,
    box_kinds,
    lookup_corpus,
    lookup_question,
    scored_kinds,
    warmup_stages,
)
from sphinx_x.standins.settings import LookupWarmupConfig


def test_questions_are_seeded_lookups_among_several_objects():
    for i in range(12):
        image, question, answer = lookup_question(0, "lookup-train", i, "shape")
        assert question.startswith("What shape is the ") and answer in SHAPES
        colour = question.removeprefix("What shape is the ").removesuffix(" object?")
        assert colour in COLORS
        image, question, answer = lookup_question(0, "lookup-train", i, "color")
        assert question.startswith("What color is the ") and answer in COLORS
        assert question.removeprefix("What color is the ").removesuffix("?") in SHAPES
        assert isinstance(image, Image.Image)
    # the same (seed, split, index) makes the same sample; another split or seed another one
    first = lookup_question(3, "lookup-train", 5, "color")
    again = lookup_question(3, "lookup-train", 5, "color")
    assert first[1:] == again[1:] and first[0].tobytes() == again[0].tobytes()
    others = [lookup_question(3, "lookup-test", 5, "color"), lookup_question(4, "lookup-train", 5, "color")]
    assert all(o[0].tobytes() != first[0].tobytes() for o in others)


def test_rec_questions_ask_for_the_named_objects_box():
    from sphinx_x.data.geometry import parse_box
    from sphinx_x.standins.lookup_warmup import answer_right

    _, question, answer = lookup_question(0, "lookup-train", 0, "rec")
    box = parse_box(answer)
    assert box is not None and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    assert answer_right("rec", f"It is {answer}.", answer)  # a box with IoU >= 0.5 counts, in any words
    x1, y1, x2, y2 = box
    shifted = answer.replace(answer.strip("[]").split(",")[0].strip(), f"{x1 + 0.9 * (x2 - x1):.2f}", 1)
    assert not answer_right("rec", shifted, answer) and not answer_right("rec", "no box", answer)
    assert answer_right("color", " Red ", "red") and not answer_right("shape", "star", "circle")


def test_ocr_questions_ask_for_the_word_on_a_synth_bench_page():
    from sphinx_x.data.synth.common import sample_rng
    from sphinx_x.data.synth.ocr import TRANSCRIBE_PROMPT, WORDS, generate_ocr
    from sphinx_x.standins.lookup_warmup import scored_kinds

    for i in range(6):
        image, question, answer = lookup_question(2, "box-more-train", i, "ocr")
        page = generate_ocr(sample_rng(2, "box-more-train", i), task="ocr")  # the page synth-bench would render
        assert (question, answer) == (TRANSCRIBE_PROMPT, page.bench["answer"]) and answer in WORDS
        assert image.tobytes() == page.image.tobytes()
    # a held-out split draws its own pages
    assert lookup_question(2, "lookup-test", 0, "ocr")[0].tobytes() != lookup_question(2, "box-more-train", 0,
                                                                                      "ocr")[0].tobytes()
    # a round that reads is scored on reading too
    assert scored_kinds(LookupWarmupConfig(rec_kinds=("rec", "ocr")))[-1] == "ocr"
    assert "ocr" not in scored_kinds(LookupWarmupConfig(rec_kinds=("rec", "shape"), read_steps=0))


def test_box_questions_ask_for_the_only_objects_box(monkeypatch):
    from sphinx_x.data.synth import scenes
    from sphinx_x.data.synth.common import box_text

    made = []
    real = scenes.make_scene
    monkeypatch.setattr(scenes, "make_scene", lambda rng, n=None: made.append(real(rng, n)) or made[-1])
    for i in range(6):
        _, question, answer = lookup_question(0, "box-train", i, "box")
        (only,) = made[-1].objects
        assert question == scenes.REC_PROMPT.format(f"the {only.name}")
        assert answer == box_text(made[-1].size, only.box)


def test_box_stages_mix_lone_and_named_boxes_with_the_lookups():
    cfg = LookupWarmupConfig(box_steps=800, box_mix_steps=1600, kinds=("shape", "color"), read_steps=0)
    kinds = box_kinds(cfg)
    # a third lone boxes, a third named boxes among 2-4, the lookups the rest (docs/experiments.md, stop 35)
    assert (kinds.count("box"), kinds.count("rec"), kinds.count("shape"), kinds.count("color")) == (2, 2, 1, 1)
    assert scored_kinds(cfg) == ("shape", "color", "rec", "box")
    # the packaged set's warm-up: shape twice as often as colour, both box stages (docs/experiments.md, stop 37), the
    # reading stage last (stop 41)
    packaged = LookupWarmupConfig()
    assert box_kinds(packaged) == ("box", "rec", "box", "rec", "shape", "shape", "color")
    assert scored_kinds(packaged) == ("shape", "color", "rec", "box", "ocr") and packaged.text_share == 0.2
    unread = {"read_steps": 0}
    assert scored_kinds(LookupWarmupConfig(box_steps=0, box_mix_steps=0, rec_rounds=0, **unread)) == ("shape", "color")
    assert scored_kinds(LookupWarmupConfig(box_steps=0, box_mix_steps=0, rec_steps=5, **unread)) == (
        "shape", "color", "rec", "box")
    # named boxes more often: the mixed stage's own kinds
    assert box_kinds(LookupWarmupConfig(box_mix_kinds=("box", "rec", "rec", "shape", "color"))) == (
        "box", "rec", "rec", "shape", "color")


def test_the_stages_run_in_order_and_the_named_box_rounds_repeat():
    """The packaged set's stages: lookups, lone boxes, the mixed stage, then three named-box rounds with their own
    questions (the splits of the runs that measured them, docs/experiments.md, stop 38), then the reading stage
    (stops 40-41); stages of 0 steps drop."""
    stages = warmup_stages(LookupWarmupConfig())
    assert [(name, steps, split) for name, steps, _, split in stages] == [
        ("", 4000, "lookup-train"), ("-boxes", 1000, "box-train"), ("-box-mix", 2000, "box-mix-train"),
        ("-rec1", 2000, "box-more-train"), ("-rec2", 2000, "box-more2-train"), ("-rec3", 2000, "box-more3-train"),
        ("-read", 6000, "read-train")]
    assert stages[-2][2] == stages[-3][2] == ("box", "rec", "rec", "shape", "color")
    assert stages[-1][2] == ("ocr", "rec", "box", "ocr", "rec", "shape", "color")
    cfg = LookupWarmupConfig(steps=3, box_steps=0, box_mix_steps=2, rec_steps=1, rec_rounds=3, rec_kinds=("rec",),
                             read_steps=0)
    assert [(name, steps, kinds) for name, steps, kinds, _ in warmup_stages(cfg)] == [
        ("", 3, cfg.kinds), ("-box-mix", 2, box_kinds(cfg)), ("-rec1", 1, ("rec",)), ("-rec2", 1, ("rec",)),
        ("-rec3", 1, ("rec",))]
    assert [split for *_, split in warmup_stages(cfg)][2:] == ["box-more-train", "box-more2-train", "box-more3-train"]
    assert len(warmup_stages(LookupWarmupConfig(rec_steps=0))) == len(warmup_stages(LookupWarmupConfig(rec_rounds=0))) \
        == len(stages) - 3
    # the reading stage comes last, on its own questions, and is scored on what it asks; 0 steps: none
    cfg = LookupWarmupConfig(read_steps=5, read_kinds=("ocr", "rec"))
    assert warmup_stages(cfg)[:-1] == stages[:-1] and warmup_stages(cfg)[-1] == ("-read", 5, ("ocr", "rec"),
                                                                                  "read-train")
    assert scored_kinds(cfg)[-1] == "ocr" and "ocr" not in scored_kinds(LookupWarmupConfig(read_steps=0))
    assert warmup_stages(LookupWarmupConfig(read_steps=0)) == stages[:-1]


def test_the_answer_is_the_named_objects_own(monkeypatch):
    """The scene behind each question holds 2-4 objects and the answer belongs to the object the question names."""
    from sphinx_x.data.synth import scenes

    made = []
    real = scenes.make_scene
    monkeypatch.setattr(scenes, "make_scene", lambda rng, n=None: made.append(real(rng, n)) or made[-1])
    for i in range(20):
        _, question, answer = lookup_question(1, "lookup-train", i, ("shape", "color")[i % 2])
        scene = made[-1]
        assert 2 <= len(scene.objects) <= 4
        if question.startswith("What shape"):
            colour = question.removeprefix("What shape is the ").removesuffix(" object?")
            assert [o.shape for o in scene.objects if o.color == colour] == [answer]
        else:
            shape = question.removeprefix("What color is the ").removesuffix("?")
            assert [o.color for o in scene.objects if o.shape == shape] == [answer]


def test_corpus_takes_kinds_in_turn_and_loads_as_a_mix(tmp_path):
    from sphinx_x.data.readers import load_mix

    mix = lookup_corpus(tmp_path, LookupWarmupConfig(samples=10, seed=2, kinds=("shape", "color")))
    assert mix == tmp_path / MIX_FILE
    rows = [json.loads(line) for line in (tmp_path / ROW_FILE).read_text().splitlines()]
    assert len(rows) == 10
    kinds = [r["conversations"][0]["value"].split()[1] for r in rows]
    assert kinds == ["shape", "color"] * 5  # the kinds in turn
    for i, r in enumerate(rows):
        _, question, answer = lookup_question(2, "lookup-train", i, kinds[i])
        assert r["conversations"] == [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        assert (tmp_path / r["image"]).is_file()
    sources = load_mix(mix).sources
    assert [(s.path, s.type, s.root) for s in sources] == [(tmp_path / ROW_FILE, "image_text", tmp_path)]


def test_text_share_adds_the_corpus_text_dialogues_as_a_text_source(tmp_path):
    from sphinx_x.data.readers import load_mix
    from sphinx_x.data.synth.common import sample_rng
    from sphinx_x.data.synth.text import generate_text
    from sphinx_x.standins.lookup_warmup import TEXT_FILE, stage_rows

    cfg = LookupWarmupConfig(samples=12, seed=2, text_share=0.25)
    questions, text_rows = stage_rows(cfg, 12)
    assert (questions, text_rows) == (12, 4)  # text makes a quarter of the stage's rows
    assert stage_rows(LookupWarmupConfig(text_share=0.0), 12) == (12, 0)
    mix = lookup_corpus(tmp_path, cfg, None, questions, "box-train", text_rows)
    sources = load_mix(mix).sources
    assert [(s.path, s.type) for s in sources] == [(tmp_path / ROW_FILE, "image_text"), (tmp_path / TEXT_FILE, "text")]
    rows = [json.loads(line) for line in (tmp_path / TEXT_FILE).read_text().splitlines()]
    assert len(rows) == 4 and all("image" not in r for r in rows)
    for i, r in enumerate(rows):  # the text domain's dialogues, seeded by (seed, split + "-text", index)
        turns = generate_text(sample_rng(2, "box-train-text", i)).turns
        assert [(c["from"], c["value"]) for c in r["conversations"]] == [
            x for q, a in turns for x in (("human", q), ("gpt", a))]
    assert len(set(json.dumps(r["conversations"]) for r in rows)) == 4


def test_settings_are_checked():
    with pytest.raises(ValueError, match="warm-up steps must be >= 0"):
        LookupWarmupConfig(steps=-1)
    with pytest.raises(ValueError, match=r"samples must be >= 8 \(one batch of nano's recipe\), got 7"):
        LookupWarmupConfig(samples=7)
    with pytest.raises(ValueError, match="kinds must be among color, shape, rec, box, ocr, got"):
        LookupWarmupConfig(kinds=("count",))
    with pytest.raises(ValueError, match="box_mix_kinds must be among color, shape, rec, box, ocr, got"):
        LookupWarmupConfig(box_mix_kinds=("box", "count"))
    with pytest.raises(ValueError, match="warm-up box_mix_steps must be >= 0, got -2"):
        LookupWarmupConfig(box_mix_steps=-2)
    with pytest.raises(ValueError, match="warm-up rec_rounds must be >= 0, got -1"):
        LookupWarmupConfig(rec_rounds=-1)
    with pytest.raises(ValueError, match="rec_kinds must be among color, shape, rec, box, ocr, got"):
        LookupWarmupConfig(rec_kinds=("rec", "count"))
    with pytest.raises(ValueError, match="rec_kinds must name at least one kind"):
        LookupWarmupConfig(rec_kinds=())
    assert LookupWarmupConfig(rec_kinds=(), rec_rounds=0).rec_kinds == ()  # no rounds: no kinds needed
    with pytest.raises(ValueError, match="warm-up read_steps must be >= 0, got -3"):
        LookupWarmupConfig(read_steps=-3)
    with pytest.raises(ValueError, match="read_kinds must be among color, shape, rec, box, ocr, got"):
        LookupWarmupConfig(read_kinds=("ocr", "count"))
    with pytest.raises(ValueError, match="read_kinds must name at least one kind when read_steps is > 0"):
        LookupWarmupConfig(read_steps=1, read_kinds=())
    for share in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"text_share must be in \[0, 1\)"):
            LookupWarmupConfig(text_share=share)
    assert LookupWarmupConfig(steps=0).steps == 0  # 0: no warm-up


@pytest.mark.slow
def test_a_warm_up_without_text_steps_scores_the_warmed_llm(tmp_path, monkeypatch):
    """text_steps 0 (what a tiny --from-scratch budget plans): the warmed LLM is written as it is, its held-out
    answers scored; with text_share, every stage's corpus holds text dialogues in that share."""
    from sphinx_x.standins import lookup_warmup
    from sphinx_x.standins.build import BuildSettings, build_standins
    from sphinx_x.standins.expert_reading import ReadingSettings
    from sphinx_x.standins.settings import LlmPretrainConfig
    from sphinx_x.train import expert_pretrain

    monkeypatch.setattr(expert_pretrain, "HELD_OUT", 8)
    corpora, real = [], lookup_warmup.lookup_corpus
    monkeypatch.setattr(lookup_warmup, "lookup_corpus",
                        lambda out, cfg, kinds, n, split, text: corpora.append((split, n, text)) or real(
                            out, cfg, kinds, n, split, text))
    manifest = build_standins(tmp_path / "set", BuildSettings(
        seed=1, expert_steps=1, expert_batch=2, llm=LlmPretrainConfig(steps=2, batch_size=2, seed=1, eval_per_kind=2),
        warmup=LookupWarmupConfig(steps=1, samples=8, text_steps=0, seed=1, eval_per_kind=2, box_steps=2,
                                  box_mix_steps=0, text_share=0.5, rec_steps=1, rec_rounds=1, read_steps=0),
        reading=ReadingSettings(steps=0)), log=lambda m: None)
    # the lookups: their 8 questions and as many text dialogues; the lone boxes: two steps of 8, half of them text;
    # the named-box round: one step, still one batch of questions
    assert corpora == [("lookup-train", 8, 8), ("box-train", 8, 8), ("box-more-train", 8, 8)]
    assert manifest["made"]["command"].endswith(
        "--warmup-steps 1 --warmup-samples 8 --warmup-box-steps 2 --warmup-box-mix-steps 0 --warmup-text-share 0.5"
        " --warmup-rec-steps 1 --warmup-rec-rounds 1 --warmup-read-steps 0")
    assert "text dialogues (the corpus's text domain) 50% of every stage's samples" in (
        tmp_path / "set" / "MODEL_CARD.md").read_text()
    assert manifest["made"]["llm"]["lookup_warmup"]["text_wall_s"] == 0.0
    assert set(manifest["scores"]["llm_held_out_answer_accuracy"]) == {"text", "arithmetic", "scene"}
    summary = json.loads((tmp_path / "set" / "llm" / "pretrain_llm.json").read_text())
    assert summary["steps"] == 0 and summary["lookup_warmup"]["text_steps"] == 0


def test_every_stage_averages_its_loss_over_tokens_whatever_the_recipe(monkeypatch, tmp_path):
    """The warm-up's stages were measured with token averaging; nano's one-stage recipe averages per turn: the
    warm-up pins its own (WARMUP_LOSS_REDUCTION), so the packaged set stays reproducible from its command."""
    import sphinx_x.train.loop as loop
    from sphinx_x.standins.lookup_warmup import warm_up_lookups
    from sphinx_x.standins.settings import WARMUP_LOSS_REDUCTION
    from sphinx_x.train.recipe import RECIPE

    seen = []

    class Stop(Exception):
        pass

    def train(cfg):
        seen.append((Path(cfg.output.dir).name, cfg.optim.loss_reduction))
        if len(seen) == 2:
            raise Stop
        return tmp_path / "final"

    monkeypatch.setattr(loop, "train", train)
    cfg = LookupWarmupConfig(samples=8, steps=1, box_steps=1, box_mix_steps=0, rec_rounds=0, read_steps=0)
    with pytest.raises(Stop):
        warm_up_lookups(tmp_path / "llm", {"clip_convnext": "a", "dinov2": "b"}, tmp_path / "work", cfg)
    assert RECIPE["optim"]["loss_reduction"] == "turn" and WARMUP_LOSS_REDUCTION == "token"
    assert seen == [("train", "token"), ("train-boxes", "token")]
