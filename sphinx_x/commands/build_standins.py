"""`sphinx-x build-standins --out DIR [--seed 0] [--expert-steps N] [--llm-steps M]`: nano's pretrained stand-ins
from nothing.

Runs `pretrain-experts`, then (with `--expert-read-steps`) the experts' reading stage
(sphinx_x/standins/expert_reading.py), then `pretrain-llm`, then the LLM's lookup warm-up (single colour / shape
questions with the new experts frozen, then text again: sphinx_x/standins/lookup_warmup.py) with fixed seeds
(sphinx_x/standins/build.py) and writes, atomically,

    DIR/experts/<expert>.safetensors   the vision experts' trunks
    DIR/llm/                           the LLM (a transformers model directory)
    DIR/manifest.json, DIR/MODEL_CARD.md   how they were made (command, steps, seed, wall time, machine) and
                                           what they score on held-out data

The set shipped in the package is sphinx_x/assets/standins/nano (rebuild it with the command its
MODEL_CARD.md quotes, `--out sphinx_x/assets/standins/nano`); `sphinx-x quickstart` starts from it.

Exit codes: 0 done; 2 bad arguments or an output directory that is not a previous stand-ins set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sphinx_x.commands.argtypes import (
    comma_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from sphinx_x.standins.build import BuildSettings


def register(subparsers: argparse._SubParsersAction) -> None:
    from sphinx_x.standins import settings as defaults

    d = defaults.LlmPretrainConfig()
    p = subparsers.add_parser("build-standins", help="pretrain nano's stand-in experts and LLM into one folder",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="seed of both pretraining runs (default 0)")
    p.add_argument("--expert-steps", type=positive_int, default=defaults.EXPERT_STEPS,
                   help=f"expert pretraining steps of 64 scenes (default {defaults.EXPERT_STEPS})")
    p.add_argument("--expert-lr", type=positive_float, default=defaults.EXPERT_LR,
                   help=f"expert AdamW learning rate (default {defaults.EXPERT_LR:g})")
    p.add_argument("--expert-scene-weight", type=float, default=defaults.EXPERT_SCENE_WEIGHT,
                   help=f"weight of the experts' scene-level objective (default {defaults.EXPERT_SCENE_WEIGHT:g})")
    p.add_argument("--expert-token-weight", type=float, default=defaults.EXPERT_TOKEN_WEIGHT,
                   help=f"weight of the experts' per-token objective (default {defaults.EXPERT_TOKEN_WEIGHT:g})")
    p.add_argument("--expert-ocr-weight", type=float, default=defaults.EXPERT_OCR_WEIGHT,
                   help=f"weight of the experts' reading objective (default {defaults.EXPERT_OCR_WEIGHT:g})")
    p.add_argument("--expert-read-steps", type=non_negative_int, default=defaults.EXPERT_READ_STEPS,
                   help=f"the experts' reading stage after their scene pretraining: steps of 64 scenes and 32 OCR "
                        f"pages fine-tuning {', '.join(defaults.EXPERT_READ_EXPERTS)} (default "
                        f"{defaults.EXPERT_READ_STEPS}; 0: none)")
    p.add_argument("--expert-read-lr", type=positive_float, default=defaults.EXPERT_READ_LR,
                   help=f"the reading stage's AdamW learning rate (default {defaults.EXPERT_READ_LR:g})")
    p.add_argument("--expert-read-keep-weight", type=non_negative_float, default=defaults.EXPERT_READ_KEEP_WEIGHT,
                   help="the reading stage holds the scenes' tokens near the trunk it starts from with this weight "
                        f"(relative squared distance; default {defaults.EXPERT_READ_KEEP_WEIGHT:g})")
    p.add_argument("--llm-steps", type=positive_int, default=defaults.LLM_STEPS,
                   help=f"LLM pretraining steps (default {defaults.LLM_STEPS})")
    p.add_argument("--llm-batch", type=positive_int, default=d.batch_size,
                   help=f"LLM samples per step (default {d.batch_size})")
    p.add_argument("--llm-lr", type=positive_float, default=d.lr, help=f"LLM peak learning rate (default {d.lr:g})")
    p.add_argument("--scene-share", type=float, default=d.scene_share,
                   help=f"share of the LLM's draws that are slot scenes (default {d.scene_share:g})")
    p.add_argument("--arithmetic-share", type=float, default=d.arithmetic_share,
                   help=f"share of the LLM's draws that are arithmetic drills (default {d.arithmetic_share:g})")
    w = defaults.LookupWarmupConfig()
    p.add_argument("--warmup-steps", type=non_negative_int, default=w.steps,
                   help=f"the LLM's lookup warm-up after text pretraining: one-stage steps of 8 single colour / shape "
                        f"questions, experts frozen (default {w.steps}; 0: no warm-up)")
    p.add_argument("--warmup-samples", type=positive_int, default=w.samples,
                   help=f"distinct warm-up questions (default {w.samples})")
    p.add_argument("--warmup-kinds", type=comma_list, default=",".join(w.kinds),
                   help=f"the warm-up questions' kinds, taken in turn, comma-separated among "
                        f"{', '.join(defaults.WARMUP_KINDS)} (default {','.join(w.kinds)})")
    p.add_argument("--warmup-text-steps", type=non_negative_int, default=w.text_steps,
                   help=f"text pretraining steps after the warm-up (default {w.text_steps})")
    p.add_argument("--warmup-box-steps", type=non_negative_int, default=w.box_steps,
                   help=f"warm-up steps on boxes of a scene's only object, after the lookups (default {w.box_steps})")
    p.add_argument("--warmup-box-mix-steps", type=non_negative_int, default=w.box_mix_steps,
                   help=f"then warm-up steps on those boxes, boxes of the named object among 2-4 and the lookups "
                        f"together (default {w.box_mix_steps})")
    p.add_argument("--warmup-box-mix-kinds", type=comma_list, default="",
                   help="the mixed box stage's kinds in turn, comma-separated among "
                        f"{', '.join(defaults.WARMUP_KINDS)} (default: box,rec,box,rec, then --warmup-kinds)")
    p.add_argument("--warmup-rec-steps", type=non_negative_int, default=w.rec_steps,
                   help=f"then rounds of this many warm-up steps on boxes of the named object asked more often "
                        f"(default {w.rec_steps})")
    p.add_argument("--warmup-rec-rounds", type=non_negative_int, default=w.rec_rounds,
                   help=f"how many such rounds, each from the model before with a fresh schedule and fresh questions "
                        f"(default {w.rec_rounds})")
    p.add_argument("--warmup-rec-kinds", type=comma_list, default=",".join(w.rec_kinds),
                   help=f"the rounds' kinds in turn, comma-separated among {', '.join(defaults.WARMUP_KINDS)} "
                        f"(default {','.join(w.rec_kinds)})")
    p.add_argument("--warmup-read-steps", type=non_negative_int, default=w.read_steps,
                   help=f"then a reading stage of this many warm-up steps on --warmup-read-kinds (default "
                        f"{w.read_steps}; 0: none)")
    p.add_argument("--warmup-read-kinds", type=comma_list, default=",".join(w.read_kinds),
                   help=f"the reading stage's kinds in turn, comma-separated among {', '.join(defaults.WARMUP_KINDS)} "
                        f"(default {','.join(w.read_kinds)})")
    p.add_argument("--warmup-text-share", type=float, default=w.text_share,
                   help=f"share of every warm-up stage's samples that are text dialogues, so the LLM keeps its text "
                        f"without --warmup-text-steps (default {w.text_share:g})")
    p.add_argument("--experts-from", default=None, metavar="DIR",
                   help="copy the experts of the stand-ins set in DIR (checked against its manifest) instead of "
                        "pretraining them: rebuild only the LLM (DIR may be --out itself: the set is replaced only "
                        "when the new one is complete)")
    p.add_argument("--llm-from", default=None, metavar="DIR",
                   help="copy the LLM that `sphinx-x pretrain-llm --out DIR` wrote (its pretrain_llm.json gives the "
                        "settings and scores the manifest records) instead of pretraining it; --llm-* and "
                        "--*-share are then ignored")
    p.add_argument("--note", default="", help="a line for the model card, e.g. what else ran on the machine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> BuildSettings:
    """The build the parsed flags ask for; ValueError names a bad setting."""
    from sphinx_x.standins.build import BuildSettings
    from sphinx_x.standins.expert_reading import ReadingSettings
    from sphinx_x.standins.settings import LlmPretrainConfig, LookupWarmupConfig, check_expert_weights

    check_expert_weights(args.expert_scene_weight, args.expert_token_weight, args.expert_ocr_weight)
    llm = LlmPretrainConfig(steps=args.llm_steps, batch_size=args.llm_batch, lr=args.llm_lr,
                            scene_share=args.scene_share, arithmetic_share=args.arithmetic_share, seed=args.seed)
    warmup = LookupWarmupConfig(steps=args.warmup_steps, samples=args.warmup_samples,
                                text_steps=args.warmup_text_steps, seed=args.seed,
                                box_steps=args.warmup_box_steps, box_mix_steps=args.warmup_box_mix_steps,
                                text_share=args.warmup_text_share, rec_steps=args.warmup_rec_steps,
                                rec_rounds=args.warmup_rec_rounds, rec_kinds=args.warmup_rec_kinds,
                                box_mix_kinds=args.warmup_box_mix_kinds, read_steps=args.warmup_read_steps,
                                read_kinds=args.warmup_read_kinds, kinds=args.warmup_kinds)
    return BuildSettings(seed=args.seed, expert_steps=args.expert_steps, expert_lr=args.expert_lr,
                         expert_scene_weight=args.expert_scene_weight, expert_token_weight=args.expert_token_weight,
                         expert_ocr_weight=args.expert_ocr_weight, llm=llm, note=args.note,
                         experts_from=args.experts_from, llm_from=args.llm_from, warmup=warmup,
                         reading=ReadingSettings(steps=args.expert_read_steps, lr=args.expert_read_lr,
                                                 keep_weight=args.expert_read_keep_weight))


def run(args: argparse.Namespace) -> int:
    from sphinx_x.commands.pretrain_llm import usable_out
    from sphinx_x.standins import MANIFEST_NAME
    from sphinx_x.standins.build import build_standins

    try:
        settings = settings_from_args(args)
    except ValueError as e:
        print(f"sphinx-x build-standins: error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.experts_from:
        from sphinx_x.standins import StandinsError, read_manifest

        try:
            read_manifest(args.experts_from)
        except StandinsError as e:
            print(f"sphinx-x build-standins: error: --experts-from: {e}", file=sys.stderr)
            return 2
    if args.llm_from:
        from sphinx_x.standins.llm_pretrain import read_summary

        try:
            read_summary(args.llm_from)
        except (OSError, ValueError) as e:
            print(f"sphinx-x build-standins: error: --llm-from: {e}", file=sys.stderr)
            return 2
    problem = usable_out(out, MANIFEST_NAME)
    if problem:
        print(f"sphinx-x build-standins: error: {problem}", file=sys.stderr)
        return 2
    manifest = build_standins(out, settings, progress=not args.quiet, log=lambda m: print(m, flush=True))
    made = manifest["made"]
    total = sum(f["bytes"] for f in manifest["files"].values())
    warm = made["llm"].get("lookup_warmup")
    warm_s = f", lookup warm-up {(warm['wall_s'] + warm['text_wall_s']) / 60:.1f} min" if warm else ""
    read = made["experts"].get("reading")
    read_s = f" (reading stage {read['wall_s'] / 60:.1f} min)" if read else ""
    print(f"stand-ins in {out} ({total / 2**20:.1f} MiB): experts {made['experts']['wall_s'] / 60:.1f} min{read_s}, "
          f"LLM {made['llm']['wall_s'] / 60:.1f} min{warm_s}; model card {out / 'MODEL_CARD.md'}")
    return 0
