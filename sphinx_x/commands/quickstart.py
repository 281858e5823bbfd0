"""`sphinx-x quickstart [--out runs/quickstart] [--minutes 10] [--seed 0] [--drills 3200] [--from-scratch]`: the
embedded default end to end.

Generates the synthetic corpus (plus `--drills` arithmetic drill dialogues, ARITHMETIC_DRILLS by default), takes
nano's pretrained stand-ins shipped in the package (its two vision experts, the stand-ins for the paper's
pretrained CLIP and DINOv2, and its LLM, the stand-in for the paper's pretrained LLM: sphinx_x/assets/standins/nano,
docs/standins.md), trains the `nano` preset on the CPU in one stage with those experts frozen and its LLM
initialised from the stand-in LLM, evaluates it on synth-bench twice, with its images and blind (the question
alone), prints the two per-task columns side by side, answers a question of the task it scored best on about a
synth-bench image it answered right, and ends with what each phase ran and how long it took. `--from-scratch`
makes the stand-ins in the run instead (`sphinx-x pretrain-experts` and the experts' reading stage, then
`sphinx-x pretrain-llm`, then the LLM's
lookup warm-up and text again, as `sphinx-x build-standins` does, each for its share of the budget: SCRATCH_*_SHARE
below).
Everything is written under --out:

    OUT/data/              the corpus (`sphinx-x data synth`) and synth-bench (OUT/data/bench.jsonl)
    OUT/model.yaml         the model config trained: nano with the stand-in experts (frozen) and LLM
    OUT/experts/, OUT/llm/ --from-scratch only: the stand-ins this run pretrained
    OUT/train/final/       the trained model directory (`sphinx-x chat --model OUT/train/final`)
    OUT/train/...          checkpoints, metrics.jsonl, loss_lr.png
    OUT/eval/              predictions (synth-bench/ and synth-bench-blind/), scores.json, scores.md
    OUT/answer.png         the demo answer drawn on its image (its box, for a grounding answer)
    OUT/summary.md         the run summary: what each phase ran, planned and wall minutes, any warning

--minutes plans the work, it does not cut it: the step counts are planned from the budget at the rates
measured on 2 idle CPU cores (the *_PER_MIN constants below), then run in full, and the wall time of
every phase is reported next to its plan, with a warning when the machine was busy enough to overrun it.
Fixed steps rather than a wall-clock cap, because a cap moves the scores with the machine's load (on a
busier machine the 10-minute run trained fewer steps and scored 20.8 overall against 32.7 on idle cores).
With fixed steps the same seed and --minutes train the same recipe on any machine, so runs and seeds stay
comparable, and a busy machine costs time, which is reported, instead of quality, which could only be
warned about. With the packaged stand-ins the one-stage run gets all the training time; with --from-scratch
the experts get SCRATCH_EXPERTS_SHARE of it (their reading stage included), the LLM SCRATCH_LLM_SHARE and its
lookup warm-up SCRATCH_WARMUP_SHARE. The training recipe is configs/nano.yaml's (`RECIPE` in
sphinx_x/train/recipe.py; a test keeps the two equal).

Exit codes: 0 done; 2 bad arguments or an output directory that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sphinx_x.commands.argtypes import non_negative_int, positive_float, positive_int
from sphinx_x.commands.quickstart_eval import (
    BLIND,
    blind_benchmark,
    box_fit,
    demo_answer,
    expected_answer,
    pick_demo,
    scores_side_by_side,
)
from sphinx_x.fileio import write_atomic
from sphinx_x.standins.settings import (
    EXPERT_READ_STEPS,
    WARMUP_BOX_MIX_STEPS,
    WARMUP_BOX_STEPS,
    WARMUP_READ_STEPS,
    WARMUP_REC_ROUNDS,
    WARMUP_REC_STEPS,
    WARMUP_STEPS,
    WARMUP_TEXT_STEPS,
)
from sphinx_x.train.recipe import RECIPE, train_config

TRAIN_SAMPLES = 8000  # distinct training samples (a 10-minute run on the stand-ins sees each about once)
# synth-bench: 100 rows per task. With 40 the table's per-task scores were mostly sampling: one model read 42.5, 62.5
# and 40.0% of the words on the 40-row OCR sets of seeds 0, 1 and 2, and 56.5% of 200 others (docs/experiments.md,
# stop 42). A seed's first 520 rows are the 40-per-task set it had before.
BENCH_ROWS = 1300
# Arithmetic drill dialogues added to the training mix (sphinx_x/data/synth/corpus.py DRILL_TURNS), over 3 seeds at
# 981 steps: arithmetic 18 -> 52 with 1600, 73 with 3200, the visual tasks inside their spreads (docs/experiments.md,
# stops 28-29). Text only: nothing to the plan's steps (a text step costs ~0.66x an image step).
ARITHMETIC_DRILLS = 3200
# Rates on 2 idle CPU cores (docs/experiments.md, 2026-11-26: 545 expert steps of 64 scenes in 2.5 minutes; 900
# one-stage AdamW steps of 8 samples in 5.0 minutes; the corpus and the rest of a 9.6-minute run in 0.5 minutes).
# The one-stage rate is for Muon (optim.name muon): its Newton-Schulz step costs a third of AdamW's step rate,
# measured side by side on one machine (2026-12-03, 2 idle cores: 85 against 127 steps/min), so 180 x 85/127.
# The expert rate is for the per-token objective the stand-ins use since stop 26 (a sub-image crop forwarded too):
# 594 steps in 8.0 minutes on 2 idle cores (2026-12-05, `quickstart --from-scratch`; 218/min was scene-level only).
EXPERT_STEPS_PER_MIN = 74.0
# The experts' reading stage (--from-scratch: SCRATCH_READ_RATIO of the expert steps, after them, when the packaged
# set has one; a short run needs its scene steps more, reading starts from what they learnt): the ConvNeXt alone,
# 64 scenes and 32 pages (3 views each) a step; 800 steps in 11.8 min on 2 cores (stop 39). A first split, not
# measured.
READ_STEPS_PER_MIN = 68.0
SCRATCH_READ_RATIO = 0.25 if EXPERT_READ_STEPS else 0.0  # as the packaged set: no reading stage while it has none
TRAIN_STEPS_PER_MIN = 120.0
# LLM pretraining (--from-scratch): an estimate from CPU time, not yet measured on idle cores (2026-12-02: 0.8
# CPU-seconds per step of 16 samples on one thread, on a shared machine).
LLM_STEPS_PER_MIN = 120.0
CORPUS_SECONDS_PER_SAMPLE = 0.0025  # 8260 samples in about 20 s
# Reserved for the evaluation with images and the blind one (no vision towers): two to three times what they take.
# 520 rows with images and 520 blind took 0.1 min (the run summary's rounding) in every quickstart of 2026-12-04 and
# 2026-12-06, idle or on shared cores (~0.006 s a row with both); 260 rows with images took ~6 s on an AVX2 machine
# (2026-11-26, before the inference speed-ups of issue 15). The reserve before (0.03 + 0.015 s a row, 78 s before
# that) held for 520 rows; at 1300 it would have cost the one-stage run 74 of its 1090 steps.
EVAL_SECONDS_PER_ROW = 0.011
BLIND_SECONDS_PER_ROW = 0.0055
SAVE_RESERVE_S = 10.0  # building and saving the model, the demo answer (its planned time in the summary)
OVERRUN_WARNING = 1.1  # warn when the run took more than this times its planned time
# --from-scratch: shares of the training time spent pretraining the experts (capped at EXPERTS_MAX_STEPS steps
# of 64 scenes) and the LLM (capped at LLM_MAX_STEPS); the one-stage run gets the rest. Before the stand-ins
# shipped, docs/experiments.md (2026-11-26): experts 4.1 of 9.1 minutes read colours better than 2.5 (57.5 vs
# 52.5 on 40 rows); the LLM's share is a first split, not yet measured.
# The LLM's lookup warm-up (sphinx_x/standins/lookup_warmup.py) gets SCRATCH_WARMUP_SHARE: its one-stage steps at
# TRAIN_STEPS_PER_MIN, its box stages and named-box rounds and any text steps after it (at LLM_STEPS_PER_MIN), all in
# the packaged set's ratios to WARMUP_STEPS. At --minutes 10 that is 50 lookup steps (then 12 + 25 + 3 x 25 box
# steps), far from the 4000 that bind both lookups: the chain runs, the binding needs a larger --minutes (or the
# packaged set). First split, not measured.
SCRATCH_EXPERTS_SHARE = 0.3
SCRATCH_LLM_SHARE = 0.15
SCRATCH_WARMUP_SHARE = 0.15
EXPERTS_MAX_STEPS = 2000
LLM_MAX_STEPS = 5000
LLM_EVAL_PER_KIND = 100  # --from-scratch: held-out samples per kind scored after LLM pretraining

clock = time.perf_counter  # every phase's wall time (a test slows it down to see the overrun warning)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="synthetic data -> train nano on CPU -> synth-bench -> a demo answer",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--minutes", type=positive_float, default=10.0,
                   help="plans the steps: what the whole command takes on 2 idle CPU cores (default 10)")
    p.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    p.add_argument("--train-samples", type=positive_int, default=TRAIN_SAMPLES,
                   help=f"training samples to generate (default {TRAIN_SAMPLES})")
    p.add_argument("--drills", type=non_negative_int, default=ARITHMETIC_DRILLS,
                   help=f"arithmetic drill dialogues added to the training mix (default {ARITHMETIC_DRILLS})")
    p.add_argument("--bench-rows", type=positive_int, default=BENCH_ROWS,
                   help=f"synth-bench rows (default {BENCH_ROWS} = 100 per task)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help=f"cap on one-stage optimizer steps (default {RECIPE['train']['max_steps']})")
    p.add_argument("--from-scratch", action="store_true",
                   help="pretrain the stand-in experts and LLM in this run instead of using the packaged ones")
    p.add_argument("--expert-steps", type=positive_int, default=EXPERTS_MAX_STEPS,
                   help=f"--from-scratch: cap on expert pretraining steps (default {EXPERTS_MAX_STEPS})")
    p.add_argument("--llm-steps", type=positive_int, default=LLM_MAX_STEPS,
                   help=f"--from-scratch: cap on LLM pretraining steps (default {LLM_MAX_STEPS})")
    p.add_argument("--warmup-steps", type=non_negative_int, default=WARMUP_STEPS,
                   help=f"--from-scratch: cap on the LLM's lookup warm-up steps (default {WARMUP_STEPS}; 0: none)")
    p.add_argument("--standins", metavar="DIR", default=None,
                   help="start from the stand-ins set in DIR (as `sphinx-x build-standins --out DIR` writes it) "
                        "instead of the packaged one")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


# ---- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What --minutes buys on 2 idle CPU cores: the steps of each training phase and the other phases' time."""

    corpus_s: float
    expert_steps: int  # 0: the packaged stand-ins (no pretraining in this run)
    llm_steps: int
    train_steps: int
    eval_s: float
    reserve_s: float
    starved: bool  # the budget left no training time: one step each (or the caps)
    warmup_steps: int = 0  # --from-scratch: the LLM's lookup warm-up (then warmup_text_steps text steps)

    @property
    def from_scratch(self) -> bool:
        return self.expert_steps > 0

    @property
    def expert_s(self) -> float:
        return 60 * self.expert_steps / EXPERT_STEPS_PER_MIN

    @property
    def read_steps(self) -> int:
        """The experts' reading stage after their pretraining (SCRATCH_READ_RATIO of their steps)."""
        return math.floor(self.expert_steps * SCRATCH_READ_RATIO)

    @property
    def read_s(self) -> float:
        return 60 * self.read_steps / READ_STEPS_PER_MIN

    @property
    def llm_s(self) -> float:
        return 60 * self.llm_steps / LLM_STEPS_PER_MIN

    @property
    def train_s(self) -> float:
        return 60 * self.train_steps / TRAIN_STEPS_PER_MIN

    @property
    def warmup_text_steps(self) -> int:
        return self.warmup_steps * WARMUP_TEXT_STEPS // WARMUP_STEPS

    @property
    def warmup_box_steps(self) -> tuple[int, int]:
        """The warm-up's two box stages (lone boxes; lone, named and lookups together)."""
        return (self.warmup_steps * WARMUP_BOX_STEPS // WARMUP_STEPS,
                self.warmup_steps * WARMUP_BOX_MIX_STEPS // WARMUP_STEPS)

    @property
    def warmup_rec_steps(self) -> int:
        """Each round's steps of the warm-up's named-box rounds (WARMUP_REC_ROUNDS of them)."""
        return self.warmup_steps * WARMUP_REC_STEPS // WARMUP_STEPS

    @property
    def warmup_read_steps(self) -> int:
        """The warm-up's reading stage after the rounds (none while the packaged set has none)."""
        return self.warmup_steps * WARMUP_READ_STEPS // WARMUP_STEPS

    @property
    def warmup_box_text(self) -> str:
        """The box stages and rounds as printed, e.g. "12 + 25 + 3 x 25"; "" when the warm-up has none."""
        box, box_mix = self.warmup_box_steps
        rounds = f" + {WARMUP_REC_ROUNDS} x {self.warmup_rec_steps}" if self.warmup_rec_steps and WARMUP_REC_ROUNDS \
            else ""
        return f"{box} + {box_mix}{rounds}" if box or box_mix or rounds else ""

    @property
    def warmup_s(self) -> float:
        rounds = WARMUP_REC_ROUNDS * self.warmup_rec_steps + self.warmup_read_steps
        return (60 * (self.warmup_steps + sum(self.warmup_box_steps) + rounds) / TRAIN_STEPS_PER_MIN
                + 60 * self.warmup_text_steps / LLM_STEPS_PER_MIN)

    @property
    def total_s(self) -> float:
        return (self.corpus_s + self.expert_s + self.read_s + self.llm_s + self.warmup_s + self.train_s + self.eval_s
                + self.reserve_s)


def plan_run(minutes: float, train_samples: int, bench_rows: int, expert_cap: int = EXPERTS_MAX_STEPS,
             train_cap: int | None = None, from_scratch: bool = False, llm_cap: int = LLM_MAX_STEPS,
             warmup_cap: int = WARMUP_STEPS) -> Plan:
    """The steps --minutes buys on 2 idle cores: all the training time to the one-stage run on the packaged
    stand-ins; with `from_scratch`, SCRATCH_EXPERTS_SHARE, SCRATCH_LLM_SHARE and SCRATCH_WARMUP_SHARE of it to
    making them."""
    corpus_s = (train_samples + bench_rows) * CORPUS_SECONDS_PER_SAMPLE
    eval_s = bench_rows * (EVAL_SECONDS_PER_ROW + BLIND_SECONDS_PER_ROW)
    train_s = minutes * 60 - corpus_s - eval_s - SAVE_RESERVE_S
    shares = (SCRATCH_EXPERTS_SHARE, SCRATCH_LLM_SHARE, SCRATCH_WARMUP_SHARE) if from_scratch else (0.0, 0.0, 0.0)
    # minutes per expert step: one scene step and its share of the reading stage
    per_step = 1 / EXPERT_STEPS_PER_MIN + SCRATCH_READ_RATIO / READ_STEPS_PER_MIN
    experts = math.floor(shares[0] * train_s / 60 / per_step)
    llm = math.floor(shares[1] * train_s / 60 * LLM_STEPS_PER_MIN)
    # minutes per warm-up step: one one-stage step, its share of the box stages' and rounds' and of the text steps
    box_ratio = (WARMUP_BOX_STEPS + WARMUP_BOX_MIX_STEPS + WARMUP_REC_ROUNDS * WARMUP_REC_STEPS
                 + WARMUP_READ_STEPS) / WARMUP_STEPS
    warmup = math.floor(shares[2] * train_s / 60 / ((1 + box_ratio) / TRAIN_STEPS_PER_MIN
                                                    + WARMUP_TEXT_STEPS / WARMUP_STEPS / LLM_STEPS_PER_MIN))
    cap = train_cap or RECIPE["train"]["max_steps"]
    if not from_scratch:
        one_stage = math.floor(train_s / 60 * TRAIN_STEPS_PER_MIN)
        return Plan(corpus_s, 0, 0, min(cap, max(one_stage, 1)), eval_s, SAVE_RESERVE_S, one_stage < 1)
    # the one-stage run gets what the stand-ins' stages leave, their whole-step rounding included (seconds across
    # nine stages)
    made = Plan(corpus_s, max(experts, 0), max(llm, 0), 0, eval_s, SAVE_RESERVE_S, False, max(warmup, 0))
    one_stage = math.floor((train_s - made.expert_s - made.read_s - made.llm_s - made.warmup_s) / 60
                           * TRAIN_STEPS_PER_MIN)
    starved = one_stage < 1 or experts < 1 or llm < 1
    return Plan(corpus_s, min(expert_cap, max(experts, 1)), min(llm_cap, max(llm, 1)), min(cap, max(one_stage, 1)),
                eval_s, SAVE_RESERVE_S, starved, min(warmup_cap, max(warmup, 0)))


@dataclass
class Phase:
    name: str
    work: str  # what it did, e.g. "8000 samples"
    planned_s: float
    wall_s: float
    steps: int | None = None  # training phases: the optimizer steps run, of planned_steps at idle_rate per minute
    planned_steps: int | None = None
    idle_rate: float | None = None


def summary(phases: list[Phase], plan: Plan, minutes: float) -> tuple[str, list[str]]:
    """The run summary (markdown: phase, work, planned and wall minutes, total) and its warnings: a training
    phase that ran fewer steps than planned, and a run that overran its plan by more than OVERRUN_WARNING."""
    lines = ["| phase | work | planned on 2 idle cores | wall |", "|---|---|---:|---:|"]
    lines += [f"| {p.name} | {p.work} | {p.planned_s / 60:.1f} min | {p.wall_s / 60:.1f} min |" for p in phases]
    wall = sum(p.wall_s for p in phases)
    lines.append(f"| **total** | --minutes {minutes:g} | {plan.total_s / 60:.1f} min | **{wall / 60:.1f} min** |")
    trained = [p for p in phases if p.steps is not None]
    warnings = [f"warning: {p.name} ran {p.steps} of its {p.planned_steps} planned steps" for p in trained
                if p.steps < p.planned_steps]
    if wall > OVERRUN_WARNING * plan.total_s:
        rates = ", ".join(f"{p.name} {p.steps / max(p.wall_s / 60, 1e-9):.0f} steps/min against {p.idle_rate:.0f}"
                          for p in trained)
        warnings.append(
            f"warning: this machine was too busy (or slower) for the plan: the run took {wall / 60:.1f} min, "
            f"{wall / plan.total_s:.1f} times the {plan.total_s / 60:.1f} min it takes on 2 idle CPU cores "
            f"({rates}). Every planned step ran, so the model and its scores are the planned ones; only the time "
            "grew.")
    return "\n".join(lines) + "\n", warnings


def pace_note(experts: Phase, plan: Plan, elapsed_s: float) -> str | None:
    """After expert pretraining (--from-scratch): a note when it ran slower than planned, with the time the
    whole run will take at that pace (the user learns it now, not at the end)."""
    slowdown = experts.wall_s / max(plan.expert_s, 1e-9)
    if slowdown <= OVERRUN_WARNING:
        return None
    rest = plan.read_s + plan.llm_s + plan.warmup_s + plan.train_s + plan.eval_s + plan.reserve_s
    eta = elapsed_s + rest * slowdown
    return (f"note: expert pretraining ran {experts.steps / max(experts.wall_s / 60, 1e-9):.0f} steps/min against "
            f"{experts.idle_rate:.0f} on 2 idle CPU cores: this machine is busy (or slower), so at this pace the "
            f"run takes about {eta / 60:.0f} min instead of {plan.total_s / 60:.1f}. It still runs every planned "
            "step; a smaller --minutes plans fewer.")


def steps_run(metrics: Path) -> int:
    """The last optimizer step the trainer logged (it always logs its final step) in metrics.jsonl."""
    steps = [json.loads(line)["step"] for line in metrics.read_text(encoding="utf-8").splitlines()
             if line.strip() and '"step"' in line]
    return int(steps[-1]) if steps else 0


# ---- the stand-ins -------------------------------------------------------------------------------
def use_packaged(out: Path, phases: list[Phase], directory: Path | None = None) -> Path:
    """OUT/model.yaml: nano with the packaged stand-in experts (frozen) and LLM, or those of the set in
    `directory` (--standins); says what they scored."""
    from sphinx_x.standins import nano_model_yaml, read_manifest, standins_dir

    t = clock()
    which = "packaged" if directory is None else "given (--standins)"
    directory = standins_dir("nano") if directory is None else directory.resolve()
    manifest = read_manifest(directory)
    model_yaml = nano_model_yaml(out / "model.yaml", directory)
    scores = manifest["scores"]
    print(f"[2/5] starting from the {which} pretrained stand-ins in {directory} (made by "
          f"`{manifest['made']['command']}`, MODEL_CARD.md; --from-scratch pretrains them in the run instead)",
          flush=True)
    print("      held-out: experts name shapes " + ", ".join(
        f"{n} {100 * a:.0f}%" for n, a in scores["experts_held_out_shape_accuracy"].items()) + " (chance 20%); LLM "
        "answers " + ", ".join(f"{k} {100 * a:.0f}%" for k, a in scores["llm_held_out_answer_accuracy"].items()),
        flush=True)
    parts = "experts + LLM + projector" if manifest.get("connector") else "experts + LLM"
    phases.append(Phase("stand-ins", f"{which.split()[0]} ({directory.name}: {parts}, no pretraining)", 0.0,
                        clock() - t))
    return model_yaml


def pretrain_standins(out: Path, plan: Plan, seed: int, progress: bool, phases: list[Phase]) -> Path:
    """--from-scratch: pretrain nano's experts (OUT/experts) then its LLM (OUT/llm) for the planned steps, as
    `sphinx-x build-standins` does; returns OUT/model.yaml, nano with both."""
    from sphinx_x.config import SphinxXConfig
    from sphinx_x.standins.llm_pretrain import build_nano_llm, pretrain_llm, write_llm_dir
    from sphinx_x.standins.settings import EXPERT_LR, EXPERT_SCENE_WEIGHT, EXPERT_TOKEN_WEIGHT, LlmPretrainConfig
    from sphinx_x.tokenizer import load_tokenizer
    from sphinx_x.train.expert_pretrain import write_pretrained

    nano = SphinxXConfig.from_name("nano")
    print(f"[2/5] pretraining nano's vision experts on synthetic scenes: {plan.expert_steps} steps of 64 scenes",
          flush=True)
    t = clock()
    experts, experts_yaml = write_pretrained(nano, out / "experts", steps=plan.expert_steps, seed=seed,
                                             lr=EXPERT_LR, scene_weight=EXPERT_SCENE_WEIGHT,
                                             token_weight=EXPERT_TOKEN_WEIGHT, progress=progress)
    phases.append(Phase("expert pretraining", f"{experts.steps} of {plan.expert_steps} planned steps", plan.expert_s,
                        clock() - t, experts.steps, plan.expert_steps, EXPERT_STEPS_PER_MIN))
    print("      held-out: " + ", ".join(f"{n} names {100 * a:.0f}% of the objects' shapes"
                                         for n, a in experts.accuracy.items()) + " (chance 20%)", flush=True)
    note = pace_note(phases[-1], plan, sum(p.wall_s for p in phases))
    if note:
        print(note, file=sys.stderr, flush=True)
    expert_paths = experts.paths
    if plan.read_steps > 0:  # written over the trunks it tunes: experts_yaml stays right
        from sphinx_x.standins.expert_reading import ReadingSettings, read_stage

        read = ReadingSettings(steps=plan.read_steps)
        print(f"[2/5] the experts' reading stage ({', '.join(read.experts)}): {read.steps} steps of 64 scenes and 32 "
              "OCR pages", flush=True)
        t = clock()
        expert_paths, scores, record = read_stage(nano.vision, experts.paths, out / "experts", read, seed,
                                                  EXPERT_SCENE_WEIGHT, EXPERT_TOKEN_WEIGHT, progress)
        phases.append(Phase("expert reading stage", f"{record['steps']} steps", plan.read_s, clock() - t,
                            record["steps"], plan.read_steps, READ_STEPS_PER_MIN))
        print("      held-out: " + ", ".join(
            f"{n} reads the word of {100 * a:.0f}% of the pages from the global view, "
            f"{100 * scores['experts_held_out_word_view_accuracy'][n]:.0f}% from the sub-image view holding it"
            for n, a in scores["experts_held_out_word_accuracy"].items()) + " (chance 4%)", flush=True)

    cfg = LlmPretrainConfig(steps=plan.llm_steps, seed=seed, template=nano.template, eval_per_kind=LLM_EVAL_PER_KIND)
    print(f"[2/5] pretraining nano's LLM on text dialogues and arithmetic drills: {cfg.steps} steps of "
          f"{cfg.batch_size} samples", flush=True)
    t = clock()
    tokenizer = load_tokenizer(nano.tokenizer)
    llm = build_nano_llm(nano, seed=seed)
    result = pretrain_llm(llm, tokenizer, cfg, progress=progress)
    write_llm_dir(llm, tokenizer, out / "llm", cfg, result)
    phases.append(Phase("LLM pretraining", f"{result.steps} of {plan.llm_steps} planned steps", plan.llm_s,
                        clock() - t, result.steps, plan.llm_steps, LLM_STEPS_PER_MIN))
    print("      held-out answers right: " + ", ".join(f"{k} {100 * a:.0f}%" for k, a in result.accuracy.items()),
          flush=True)
    connector = {}
    if plan.warmup_steps > 0:
        connector = {"connector": str(warm_up(out, plan, seed, progress, phases, expert_paths, tokenizer, cfg,
                                              result.accuracy).resolve())}
    model_yaml = out / "model.yaml"
    SphinxXConfig.load(experts_yaml).with_overrides({"llm": {"path": str((out / "llm").resolve())},
                                                     **connector}).save(model_yaml)
    return model_yaml


def warm_up(out: Path, plan: Plan, seed: int, progress: bool, phases: list[Phase], expert_paths: dict[str, Path],
            tokenizer: Any, llm_cfg: Any, text_accuracy: dict[str, float]) -> Path:
    """--from-scratch: the LLM in OUT/llm through its lookup warm-up and text again, as `sphinx-x build-standins`
    does (sphinx_x/standins/lookup_warmup.py), for the planned steps; returns the warm-up's connector file."""
    from sphinx_x.standins import CONNECTOR_NAME
    from sphinx_x.standins.lookup_warmup import warm_up_llm_dir
    from sphinx_x.standins.settings import WARMUP_BATCH, WARMUP_TEXT_SHARE, LookupWarmupConfig

    box, box_mix = plan.warmup_box_steps
    # one pass over the questions and the text dialogues beside them (the packaged set's share)
    questions = max(WARMUP_BATCH, round(WARMUP_BATCH * plan.warmup_steps * (1 - WARMUP_TEXT_SHARE)))
    warm = LookupWarmupConfig(steps=plan.warmup_steps, samples=questions,
                              text_steps=plan.warmup_text_steps, seed=seed, eval_per_kind=LLM_EVAL_PER_KIND,
                              box_steps=box, box_mix_steps=box_mix, rec_steps=plan.warmup_rec_steps,
                              read_steps=plan.warmup_read_steps)
    boxes = f", then {plan.warmup_box_text} on boxes" if plan.warmup_box_text else ""
    boxes += f", then {warm.read_steps} reading" if warm.read_steps else ""
    text = f", then {warm.text_steps} text steps" if warm.text_steps else ""
    print(f"[2/5] nano's LLM: lookup warm-up on single colour / shape questions, {warm.steps} one-stage steps{boxes} "
          f"with {100 * warm.text_share:g}% text dialogues (experts frozen; its projector and tags are kept){text}",
          flush=True)
    t = clock()
    _, scores = warm_up_llm_dir(out / "llm", expert_paths, tokenizer, llm_cfg, warm, text_accuracy,
                                out / CONNECTOR_NAME, progress)
    boxes = f"{plan.warmup_box_text} box steps + " if plan.warmup_box_text else ""
    boxes += f"{warm.read_steps} reading steps + " if warm.read_steps else ""
    phases.append(Phase("LLM lookup warm-up", f"{warm.steps} of {plan.warmup_steps} planned steps + {boxes}"
                        f"{warm.text_steps} text steps", plan.warmup_s, clock() - t, warm.steps, plan.warmup_steps,
                        TRAIN_STEPS_PER_MIN))
    print("      held-out lookups right: " + ", ".join(
        f"{k} {100 * a:.0f}%" for k, a in scores["llm_lookup_warmup_accuracy"].items()) + "; the LLM's text answers "
        "right: " + ", ".join(f"{k} {100 * a:.0f}%" for k, a in scores["llm_held_out_answer_accuracy"].items()),
        flush=True)
    return out / CONNECTOR_NAME


# ---- the command ---------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"sphinx-x quickstart: error: {out}: exists and is not a directory", file=sys.stderr)
        return 2
    if out.is_dir() and (out / "train").exists() and not (out / "data" / "synth.json").is_file():
        print(f"sphinx-x quickstart: error: {out}: holds a train/ folder that no quickstart wrote", file=sys.stderr)
        return 2

    import shutil

    import torch

    from sphinx_x.config import SphinxXConfig
    from sphinx_x.data.synth import generate_corpus
    from sphinx_x.eval.benchmarks import load_rows, resolve_benchmark
    from sphinx_x.eval.harness import model_anchor, read_predictions, run_benchmark, write_scores
    from sphinx_x.model import SphinxX
    from sphinx_x.standins import has_standins, standins_dir
    from sphinx_x.train.loop import train

    progress = not args.quiet
    from_scratch = args.from_scratch
    given = Path(args.standins) if args.standins else None
    if given is not None:
        if from_scratch:
            print("sphinx-x quickstart: error: --standins and --from-scratch exclude each other", file=sys.stderr)
            return 2
        if not has_standins(given):
            from sphinx_x.standins import StandinsError, read_manifest

            try:
                read_manifest(given)
            except StandinsError as e:
                print(f"sphinx-x quickstart: error: --standins: {e}", file=sys.stderr)
            return 2
    elif not from_scratch and not has_standins():
        print(f"note: the packaged stand-ins ({standins_dir()}) are missing or incomplete; pretraining them in this "
              "run (as --from-scratch)", file=sys.stderr, flush=True)
        from_scratch = True
    plan = plan_run(args.minutes, args.train_samples, args.bench_rows, args.expert_steps, args.max_steps,
                    from_scratch, args.llm_steps, args.warmup_steps)
    boxes = f"{plan.warmup_box_text} box, " if plan.warmup_box_text else ""
    boxes += f"{plan.warmup_read_steps} reading, " if plan.warmup_read_steps else ""
    reading = f", {plan.read_steps} reading" if plan.read_steps else ""
    pretraining = (f"{plan.expert_steps} expert{reading} and {plan.llm_steps} LLM pretraining steps, "
                   f"{plan.warmup_steps} lookup warm-up, {boxes}{plan.warmup_text_steps} text steps, " if from_scratch
                   else "the packaged pretrained stand-ins, " if given is None else "the given pretrained stand-ins, ")
    print(f"plan for --minutes {args.minutes:g} on 2 idle CPU cores: {pretraining}{plan.train_steps} one-stage steps "
          "(fixed: a busier machine takes longer, it does not train less)", flush=True)
    if plan.starved:
        print(f"note: --minutes {args.minutes:g} leaves no time to train after data generation and the evaluation "
              "reserve; training one step (or the --expert-steps / --llm-steps / --max-steps caps)", file=sys.stderr)
    phases: list[Phase] = []
    corpus = out / "data"
    print(f"[1/5] generating the synthetic corpus ({args.train_samples} training samples + {args.drills} arithmetic "
          f"drills, {args.bench_rows} synth-bench rows) into {corpus}", flush=True)
    t = clock()
    try:
        generate_corpus(corpus, args.train_samples, 0, args.bench_rows, seed=args.seed, progress=progress,
                        drills=args.drills)
    except (FileExistsError, ValueError) as e:
        print(f"sphinx-x quickstart: error: {e}", file=sys.stderr)
        return 2
    phases.append(Phase("corpus", f"{args.train_samples} samples + {args.drills} drills + {args.bench_rows} bench rows",
                        plan.corpus_s, clock() - t))

    shutil.rmtree(out / "train", ignore_errors=True)  # a fresh model every time
    model_yaml = (pretrain_standins(out, plan, args.seed, progress, phases) if from_scratch
                  else use_packaged(out, phases, given))

    cfg = train_config(out / "train", corpus / "train.yaml", plan.train_steps, args.seed, progress, model_yaml)
    start = "LLM and projector" if SphinxXConfig.load(model_yaml).connector else "LLM"
    print(f"[3/5] training nano (experts frozen, {start} from the stand-ins) on CPU: {plan.train_steps} steps of "
          f"{cfg.train.global_batch} samples", flush=True)
    t = clock()
    final = train(cfg)
    ran = steps_run(out / "train" / "metrics.jsonl")
    phases.append(Phase("one-stage training", f"{ran} of {plan.train_steps} planned steps", plan.train_s,
                        clock() - t, ran, plan.train_steps, TRAIN_STEPS_PER_MIN))

    print("[4/5] evaluating on synth-bench, with the images and blind (the questions alone)", flush=True)
    t = clock()
    torch.set_num_threads(cfg.train.cpu_threads or torch.get_num_threads())
    model = SphinxX.from_pretrained(final).eval()
    bench = load_rows(resolve_benchmark("synth-bench", synth_dir=str(corpus)))
    blind_bench = blind_benchmark(bench)
    kwargs = {"batch_size": 16, "overwrite": True, "model_id": str(final.resolve()), "progress": progress}
    results = {b.name: run_benchmark(model, b, out / "eval", **kwargs) for b in (bench, blind_bench)}
    results[BLIND]["images"] = "none: each row's question alone, without image tokens"
    write_scores(out / "eval", results)
    table = scores_side_by_side(results[bench.name], results[BLIND])
    write_atomic(out / "eval" / "scores.md", table)  # the side-by-side table replaces the harness's
    print(table, end="", flush=True)
    phases.append(Phase("evaluation", f"{args.bench_rows} rows with images + {args.bench_rows} blind", plan.eval_s,
                        clock() - t))

    t = clock()
    anchor = model_anchor(model)
    records = read_predictions(out / "eval" / bench.name / "predictions.jsonl")
    record = pick_demo(records, read_predictions(out / "eval" / BLIND / "predictions.jsonl"), results[bench.name],
                       anchor)
    if record is not None and record["task"] == "rec":
        print(f"[5/5] a demo answer: a grounding question (REC {results[bench.name]['tasks']['rec']['score']:.0f}%), "
              f"the synth-bench row whose box it drew tightest (IoU {box_fit(record, anchor):.2f})", flush=True)
    elif record is not None:
        task = record["task"]
        print(f"[5/5] a demo answer: a {task} question (the task it scored best on among those it answered right, "
              f"{results[bench.name]['tasks'][task]['score']:.0f}%), on a synth-bench image it answered right",
              flush=True)
    else:
        record = next((r for r in records if r.get("task") == "rec"), None) or next(r for r in records
                                                                                   if r.get("image"))
        print("[5/5] a demo answer: no synth-bench question with an image was answered right in this run, so "
              f"there is no right answer to show; asking a {record['task']} question anyway", flush=True)
    image, answer, right = demo_answer(model, bench, record, out / "answer.png")
    verdict = "right" if right else "wrong"
    print(f"image:    {image}\nquestion: {record['question']}\nanswer:   {answer}\n"
          f"          {verdict}: synth-bench's answer is {expected_answer(record)}")
    print(f"drawn to {out / 'answer.png'}")
    print(f"model: {final}  (try: sphinx-x chat --model {final} --image {image})")
    phases.append(Phase("demo answer", "1 question", plan.reserve_s, clock() - t))

    table, warnings = summary(phases, plan, args.minutes)
    made = ("pretrained in this run (--from-scratch)" if from_scratch else f"packaged ({standins_dir()})"
            if given is None else f"given (--standins {given.resolve()})")
    print(f"run summary (stand-in experts and LLM: {made}):\n" + table, end="", flush=True)
    for w in warnings:
        print(w, file=sys.stderr, flush=True)
    write_atomic(out / "summary.md", f"stand-in experts and LLM: {made}\n\n{table}" + "".join(f"\n{w}\n"
                                                                                          for w in warnings))
    print(f"scores in {out / 'eval' / 'scores.md'}", flush=True)
    return 0
