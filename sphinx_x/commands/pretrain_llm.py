"""`sphinx-x pretrain-llm --out DIR [--steps N] [--batch B] [--lr LR] [--arithmetic-share F] [--seed S]`: nano's
stand-in for the paper's pretrained LLM.

Trains the preset's LLM alone (transformers LlamaForCausalLM with the preset's dims, the shipped nano
tokenizer) from random initialisation on sphinx_x/standins/llm_data.py's samples: the synthetic corpus's
text dialogues in nano's template, and slot scenes whose objects are bag-of-words soft tokens where image
tokens go (sphinx_x/standins/llm_pretrain.py). Writes, atomically,

    DIR/config.json, DIR/model.safetensors   a transformers model directory
    DIR/tokenizer.json, ...                  the tokenizer
    DIR/pretrain_llm.json                    the settings, the loss every 10 steps, the held-out accuracy

which a model config names as `llm.path`, as it would a real pretrained LLM:

    sphinx-x train configs/nano.yaml --data DATA.yaml --model.overrides.llm.path=DIR

Exit codes: 0 done; 2 bad arguments or an output directory that is not a previous pretrain-llm output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sphinx_x.commands.argtypes import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from sphinx_x.standins.settings import LlmPretrainConfig

    d = LlmPretrainConfig()
    p = subparsers.add_parser("pretrain-llm", help="pretrain nano's LLM alone (the stand-in for a pretrained LLM)",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (a transformers model directory)")
    p.add_argument("--preset", default="nano", help="preset name or model config file whose LLM dims to train "
                   "(default nano)")
    p.add_argument("--steps", type=positive_int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch", type=positive_int, default=d.batch_size,
                   help=f"samples per step (default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                   help=f"share of the steps in linear warm-up before the cosine decay (default {d.warmup_ratio:g})")
    p.add_argument("--grad-clip", type=positive_float, default=d.grad_clip,
                   help=f"gradient norm clip (default {d.grad_clip:g})")
    p.add_argument("--scene-share", type=float, default=d.scene_share,
                   help=f"share of the draws that are slot scenes (default {d.scene_share:g})")
    p.add_argument("--arithmetic-share", type=float, default=d.arithmetic_share,
                   help="share of the draws that are arithmetic drills (several `What is a + b?` questions); the rest "
                        f"are text dialogues (default {d.arithmetic_share:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"initialisation and data seed (default {d.seed})")
    p.add_argument("--eval-per-kind", type=positive_int, default=d.eval_per_kind,
                   help=f"held-out samples per kind (default {d.eval_per_kind})")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def usable_out(out: Path, marker: str) -> str | None:
    """Why `out` cannot be written (replaced), or None: it must be absent, empty, or hold `marker`."""
    if out.exists() and not out.is_dir():
        return f"{out}: exists and is not a directory"
    if out.is_dir() and any(out.iterdir()) and not (out / marker).exists():
        return f"{out}: directory is not empty and holds no {marker}; refusing to replace it"
    return None


def run(args: argparse.Namespace) -> int:
    from sphinx_x.config import ConfigError, SphinxXConfig
    from sphinx_x.standins.llm_pretrain import SUMMARY_NAME, build_nano_llm, pretrain_llm, write_llm_dir
    from sphinx_x.standins.settings import LlmPretrainConfig
    from sphinx_x.tokenizer import load_tokenizer

    try:
        config = SphinxXConfig.resolve(args.preset)
        cfg = LlmPretrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup_ratio=args.warmup_ratio,
                                grad_clip=args.grad_clip, scene_share=args.scene_share,
                                arithmetic_share=args.arithmetic_share, seed=args.seed,
                                template=config.template, eval_per_kind=args.eval_per_kind)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"sphinx-x pretrain-llm: error: {e}", file=sys.stderr)
        return 2
    if not config.tokenizer:
        print(f"sphinx-x pretrain-llm: error: {args.preset}: the config names no tokenizer", file=sys.stderr)
        return 2
    out = Path(args.out)
    problem = usable_out(out, SUMMARY_NAME)
    if problem:
        print(f"sphinx-x pretrain-llm: error: {problem}", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(config.tokenizer)
    llm = build_nano_llm(config, seed=args.seed, device=args.device)
    print(f"pretraining {config.name}'s LLM: {cfg.steps} steps of {cfg.batch_size} samples "
          f"({100 * cfg.scene_share:.0f}% slot scenes, {100 * cfg.arithmetic_share:.0f}% arithmetic drills), "
          f"lr {cfg.lr:g}", flush=True)
    result = pretrain_llm(llm, tokenizer, cfg, progress=not args.quiet)
    write_llm_dir(llm.cpu(), tokenizer, out, cfg, result)
    print(f"loss: {result.losses[0]:.3f} (first {min(cfg.steps, 10)} steps) -> {result.losses[-1]:.3f} (last)")
    print("held-out answers right: " + ", ".join(f"{k} {100 * a:.1f}%" for k, a in result.accuracy.items()))
    print(f"{result.steps} steps in {result.seconds:.0f} s; LLM directory: {out}")
    print(f"next: sphinx-x train configs/nano.yaml --data DATA.yaml --model.overrides.llm.path={out}")
    return 0
