"""The stand-in LLM's lookup warm-up: after text pretraining, nano's LLM learns to find the object a question names
in image tokens and to give its box, with text dialogues beside the questions so that it keeps its text.

Why (docs/experiments.md, stops 30-37): in the one-stage run on the multi-domain mix, nano's LLM learns one lookup
("What color is the star?") and then never learns the other ("What shape is the red object?"); swapping parts
between models showed the block is in the LLM, not the projector, and no one-stage lever (loss weights, holding
colour back, learning rates, heads, an untied head) removed it. An LLM that first learnt both lookups from single
questions alone starts the one-stage run with both, and keeps them when the warm-up's projector comes with it
(stops 34-35). Boxes need their own stages: without lone boxes first every box is one wide prior box (stops
35-36). Text steps after the warm-up brought the text back but moved the LLM off the warm-up's connector, and the
one-stage run then lost the boxes (stop 36); text dialogues inside every stage keep the text (87.8% held-out
against 64.9%) and the connector fitting (stop 37). Boxing the named object among several is learnt slowest: rounds
of a stage that asks it more often take it from 18% to 52% (stop 38).

The warm-up is a plain one-stage run (nano's recipe, sphinx_x/train/recipe.py) with the stand-in experts frozen and
a fresh projector, on `samples` single questions about scenes of 2-4 objects, shape and colour lookups in turn
(`lookup_corpus`), then more stages, each from the model before (`warmup_stages`): boxes of a scene's only object;
those, boxes of the named object among 2-4 and the lookups together; `rec_rounds` rounds with the named boxes 2 in 5;
with `read_steps`, a reading stage (the word on a page beside the boxes and lookups) for experts that read.
Text dialogues make `text_share` of every stage's corpus. The last model's LLM and connector (projector and image
tags, sphinx_x/connector.py) are kept: the one-stage run starts from both. A text stage after it (`text_steps`, 0
by default) is `pretrain_llm` again with the text pretraining's own settings; it changes the LLM only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sphinx_x.standins.settings import WARMUP_BATCH, WARMUP_LOSS_REDUCTION, LlmPretrainConfig, LookupWarmupConfig

ROW_FILE = "train/lookups.jsonl"
TEXT_FILE = "train/text.jsonl"
MIX_FILE = "train.yaml"


def lookup_question(seed: int, split: str, index: int, kind: str) -> tuple[Any, str, str]:
    """Sample `index` of `split`: (image, question, answer), a `kind` lookup about a scene of 2-4 objects ("color":
    the colour of the named shape, "shape": the shape of the named colour, "rec": the box of the named object) or
    "box": the box of a scene's only object, or "ocr": the word on a page rendered as synth-bench's OCR rows are,
    made only from `sample_rng(seed, split, index)` (scenes without a suitable object are redrawn)."""
    from sphinx_x.data.synth.common import sample_rng
    from sphinx_x.data.synth.ocr import generate_ocr
    from sphinx_x.data.synth.scenes import VQA_ASKERS, ask_rec, make_scene, render_scene

    def rec(scene: Any, rng: Any) -> tuple[str, str] | None:  # ask_rec's (question, answer, object) without the object
        asked = ask_rec(scene, rng)
        return None if asked is None else asked[:2]

    askers = {**VQA_ASKERS, "rec": rec, "box": rec}
    rng, lone = sample_rng(seed, split, index), kind == "box"
    if kind == "ocr":
        page = generate_ocr(rng, task="ocr")
        return page.image, *page.turns[0]
    while True:
        scene = make_scene(rng, 1 if lone else rng.choice([2, 3, 3, 4, 4]))
        image = render_scene(scene)  # first: it makes each object's box the tight box of its drawn shape
        qa = askers[kind](scene, rng) if lone or len(scene.objects) >= 2 else None
        if qa is not None:
            return image, qa[0], qa[1]


def lookup_corpus(out: str | Path, cfg: LookupWarmupConfig, kinds: tuple[str, ...] | None = None,
                  samples: int | None = None, split: str = "lookup-train", text_rows: int = 0) -> Path:
    """`samples` (default `cfg.samples`) single questions of `kinds` (default `cfg.kinds`) in turn, from `split`, and
    `text_rows` of the synthetic corpus's text-only dialogues (from `split` + "-text", a mix entry of their own), as a
    LLaVA-format corpus in `out`; returns its mix."""
    from sphinx_x.data.synth.common import sample_rng
    from sphinx_x.data.synth.corpus import conversation_row, encode_png
    from sphinx_x.data.synth.text import generate_text

    out, kinds = Path(out), kinds or cfg.kinds
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / ROW_FILE).parent.mkdir(parents=True, exist_ok=True)
    with open(out / ROW_FILE, "w", encoding="utf-8") as rows:
        for i in range(cfg.samples if samples is None else samples):
            image, question, answer = lookup_question(cfg.seed, split, i, kinds[i % len(kinds)])
            rel = f"images/{i:06d}.png"
            (out / rel).write_bytes(encode_png(image))
            rows.write(json.dumps({"id": f"lookup-{i:06d}", "image": rel, "conversations": [
                {"from": "human", "value": question}, {"from": "gpt", "value": answer}]}, sort_keys=True) + "\n")
    mix = f"META:\n- path: {ROW_FILE}\n  type: image_text\n  root: .\n"
    if text_rows:
        with open(out / TEXT_FILE, "w", encoding="utf-8") as rows:
            for i in range(text_rows):
                row = conversation_row(generate_text(sample_rng(cfg.seed, f"{split}-text", i)), f"text-{i:06d}", None)
                rows.write(json.dumps(row, sort_keys=True) + "\n")
        mix += f"- path: {TEXT_FILE}\n  type: text\n  root: .\n"
    (out / MIX_FILE).write_text(mix, encoding="utf-8")
    return out / MIX_FILE


def stage_rows(cfg: LookupWarmupConfig, questions: int) -> tuple[int, int]:
    """(questions, text dialogues) of a stage whose corpus holds `questions` questions plus text in `cfg.text_share`
    of all its rows."""
    return questions, round(questions * cfg.text_share / (1.0 - cfg.text_share))


def box_kinds(cfg: LookupWarmupConfig) -> tuple[str, ...]:
    """The mixed box stage's kinds in turn: `cfg.box_mix_kinds` when given, else lone boxes, boxes among 2-4 and the
    lookup stage's kinds (with two lookup kinds, the boxes a third each)."""
    return cfg.box_mix_kinds or ("box", "rec", "box", "rec", *cfg.kinds)


def warmup_stages(cfg: LookupWarmupConfig) -> list[tuple[str, int, tuple[str, ...], str]]:
    """The warm-up's stages in order, those with steps: (name, steps, kinds in turn, corpus split). Each starts from
    the model before it with a fresh learning-rate schedule."""
    stages = [("", cfg.steps, cfg.kinds, "lookup-train"),
              ("-boxes", cfg.box_steps, ("box",), "box-train"),
              ("-box-mix", cfg.box_mix_steps, box_kinds(cfg), "box-mix-train")]
    # the rounds' splits are those of the runs that measured them (docs/experiments.md, stop 38)
    stages += [(f"-rec{r + 1}", cfg.rec_steps, cfg.rec_kinds, f"box-more{r + 1 if r else ''}-train")
               for r in range(cfg.rec_rounds)]
    stages.append(("-read", cfg.read_steps, cfg.read_kinds, "read-train"))
    return [stage for stage in stages if stage[1] > 0]


def scored_kinds(cfg: LookupWarmupConfig) -> tuple[str, ...]:
    """What the warm-up model is scored on: its kinds, both box kinds when it had box stages, then any other kind a
    stage trained (reading)."""
    boxes = ("rec", "box") if cfg.box_steps or cfg.box_mix_steps or cfg.rec_steps * cfg.rec_rounds else ()
    return tuple(dict.fromkeys((*cfg.kinds, *boxes, *(k for stage in warmup_stages(cfg) for k in stage[2]))))


def answer_right(kind: str, prediction: str, answer: str) -> bool:
    """Exact match (case-insensitive); for "rec" and "box", a box with IoU >= 0.5 (both in canvas coordinates)."""
    if kind not in ("rec", "box"):
        return prediction.strip().lower() == answer.lower()
    from sphinx_x.data.geometry import parse_box
    from sphinx_x.eval.metrics import box_iou

    box = parse_box(prediction)
    return box is not None and box_iou(box, parse_box(answer)) >= 0.5


def lookup_accuracy(model: Any, cfg: LookupWarmupConfig, batch_size: int = 16) -> dict[str, float]:
    """Greedy accuracy per kind of `scored_kinds` (`answer_right`) on `cfg.eval_per_kind` held-out questions
    (split "lookup-test", never trained on)."""
    from sphinx_x.infer.chat import generate

    accuracy = {}
    for kind in scored_kinds(cfg):
        rows = [lookup_question(cfg.seed, "lookup-test", i, kind) for i in range(cfg.eval_per_kind)]
        right = 0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            results = generate(model, [{"question": q, "images": [img]} for img, q, _ in chunk], max_new_tokens=32)
            right += sum(answer_right(kind, r.text, a) for r, (_, _, a) in zip(results, chunk, strict=True))
        accuracy[kind] = right / max(len(rows), 1)
    return accuracy


@dataclass
class WarmupResult:
    steps: int  # one-stage steps of all its stages
    seconds: float  # the corpora, the runs and the evaluation
    accuracy: dict[str, float]  # kind -> held-out share right (`answer_right`) of the warm-up model, its own projector


def warm_up_lookups(llm_dir: str | Path, expert_paths: dict[str, str | Path], workdir: str | Path,
                    cfg: LookupWarmupConfig, progress: bool = False, preset: str = "nano") -> tuple[Any, WarmupResult]:
    """Train `preset` with the experts in `expert_paths` (frozen) and its LLM from `llm_dir` on the lookup corpus
    for `cfg.steps` steps, then its box stages, rounds and reading stage (in `workdir`); returns the trained model (a
    SphinxX) and the result."""
    import torch

    from sphinx_x.config import SphinxXConfig
    from sphinx_x.model import SphinxX
    from sphinx_x.train.loop import train
    from sphinx_x.train.recipe import train_config

    started = time.perf_counter()
    workdir = Path(workdir)
    config = SphinxXConfig.from_name(preset)
    experts = [{"checkpoint": str(Path(expert_paths[e.name]).resolve()), "frozen": True}
               for e in config.vision.experts]
    config = config.with_overrides({"vision": {"experts": experts}, "llm": {"path": str(Path(llm_dir).resolve())}})
    config.save(workdir / "model.yaml")
    final = None
    # the lookups, then the box stages and rounds (each from the last stage's model, one fresh question per sample);
    # with text_share, text dialogues make that share of each corpus, and a box stage's steps still make one pass over
    # it (at least one batch of questions: every global batch holds one type, so a stage needs one full batch of them)
    for name, steps, kinds, split in warmup_stages(cfg):
        samples = (cfg.samples if name == ""
                   else max(WARMUP_BATCH, round(WARMUP_BATCH * steps * (1.0 - cfg.text_share))))
        questions, text_rows = stage_rows(cfg, samples)
        mix = lookup_corpus(workdir / f"corpus{name}", cfg, kinds, questions, split, text_rows)
        train_cfg = train_config(workdir / f"train{name}", mix, steps, cfg.seed, progress, workdir / "model.yaml")
        train_cfg.optim.loss_reduction = WARMUP_LOSS_REDUCTION
        if final is not None:
            train_cfg.model.path = str(final)
        final = train(train_cfg)
    threads = torch.get_num_threads()
    model = SphinxX.from_pretrained(final).eval()
    accuracy = lookup_accuracy(model, cfg)
    torch.set_num_threads(threads)
    return model, WarmupResult(sum(stage[1] for stage in warmup_stages(cfg)), time.perf_counter() - started, accuracy)


def warm_up_llm_dir(llm_dir: Path, expert_paths: dict[str, Path], tokenizer: Any, llm_cfg: LlmPretrainConfig,
                    warm: LookupWarmupConfig, text_accuracy: dict[str, float], connector: Path, progress: bool = False,
                    preset: str = "nano") -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The LLM in `llm_dir` (made by text pretraining with `llm_cfg`, which scored `text_accuracy`) through the
    lookup warm-up and `warm.text_steps` steps of that text pretraining again, written back to `llm_dir` (its
    SUMMARY_NAME records all three stages); the warm-up's connector (projector and image tags) is written to
    `connector` (safetensors). Returns the record of the two stages and their scores (the lookups
    after the warm-up; the LLM's held-out answers after the text steps and before the warm-up)."""
    import shutil
    import tempfile

    from sphinx_x.connector import save_connector
    from sphinx_x.standins.llm_pretrain import pretrain_llm, write_llm_dir

    work = Path(tempfile.mkdtemp(prefix=".warmup-", dir=Path(llm_dir).parent))
    try:
        model, warmed = warm_up_lookups(llm_dir, expert_paths, work, warm, progress=progress, preset=preset)
        save_connector(model, connector)
        llm = model.llm
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # no text steps: the summary keeps the text pretraining's settings (its `steps` then says 0 were run)
    text_cfg = replace(llm_cfg, steps=warm.text_steps) if warm.text_steps else llm_cfg
    result = pretrain_llm(llm.train(), tokenizer, text_cfg, progress=progress) if warm.text_steps else None
    made = {**asdict(warm), "kinds": list(warm.kinds), "box_mix_kinds": list(warm.box_mix_kinds),
            "rec_kinds": list(warm.rec_kinds), "read_kinds": list(warm.read_kinds),
            "wall_s": round(warmed.seconds, 1),
            "text_wall_s": round(result.seconds, 1) if result else 0.0}
    if result is None:  # no text stage: the held-out answers of the warmed LLM itself
        from sphinx_x.standins.llm_pretrain import LlmPretrainResult, held_out_accuracy

        result = LlmPretrainResult(0, 0.0, held_out_accuracy(llm, tokenizer, llm_cfg))
    write_llm_dir(llm, tokenizer, llm_dir, text_cfg, result,
                  extra={"lookup_warmup": made, "lookup_accuracy": warmed.accuracy, "text_pretraining": asdict(llm_cfg),
                         "text_pretraining_accuracy": text_accuracy})
    return made, {"llm_lookup_warmup_accuracy": warmed.accuracy, "llm_held_out_answer_accuracy": result.accuracy,
                  "llm_text_pretraining_answer_accuracy": text_accuracy}
