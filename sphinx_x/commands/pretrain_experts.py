"""`sphinx-x pretrain-experts --out DIR [--preset nano] [--steps N] [--minutes M]`: nano's stand-in for CLIP/DINOv2.

Trains the preset's vision experts on synthetic scenes (sphinx_x/train/expert_pretrain.py) and writes

    DIR/<expert>.safetensors   each expert's trunk (timm state dict)
    DIR/model.yaml             the preset's model config with those weights as frozen experts

so the one-stage run starts from pretrained, frozen experts like the paper's:

    sphinx-x train configs/nano.yaml --data data/synth/train.yaml --model.preset=DIR/model.yaml

Exit codes: 0 done; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sphinx_x.commands.argtypes import non_negative_float, positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pretrain-experts", help="pretrain nano's vision experts on synthetic scenes",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="nano", help="preset name or model config file (default nano)")
    p.add_argument("--steps", type=positive_int, default=400, help="optimizer steps (default 400)")
    p.add_argument("--minutes", type=positive_float, default=None, help="wall-clock cap; ends the run early")
    p.add_argument("--batch-size", type=positive_int, default=64, help="scenes per step (default 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and scene seed (default 0)")
    p.add_argument("--token-weight", type=float, default=0.0,
                   help="weight of the per-token objective (each grid token names the colour and shape under it; "
                        "default 0: the scene-level objective only)")
    p.add_argument("--scene-weight", type=float, default=1.0,
                   help="weight of the scene-level objective (a probe on the mean token names each colour's shape; "
                        "default 1; 0 with --token-weight > 0 trains the per-token objective alone)")
    p.add_argument("--ocr-weight", type=float, default=0.0,
                   help="weight of the reading objective (every grid token over the word of a synth-bench OCR page "
                        "names it, on global, sub-image and zoomed views; default 0)")
    p.add_argument("--init-from", default=None,
                   help="start the trunks from DIR/<expert>.safetensors (a pretrain-experts output, or a stand-ins "
                        "set: its experts/ folder) instead of their random init: a fine-tuning stage, e.g. the "
                        "reading stage `--init-from SET --experts clip_convnext --ocr-weight 1 --token-weight 1`")
    p.add_argument("--experts", default=None,
                   help="comma-separated experts to train (default all); model.yaml takes the others from "
                        "--init-from")
    p.add_argument("--box-weight", type=float, default=0.0,
                   help="weight of the per-token box objective (each grid token covered by an object gives that "
                        "object's box; default 0)")
    p.add_argument("--keep-weight", type=non_negative_float, default=0.0,
                   help="with --init-from: hold the scene views' tokens near the starting trunk's with this weight "
                        "(relative squared distance; default 0), so a fine-tuning stage keeps what the LLM was taught "
                        "on")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sphinx_x.config import ConfigError, SphinxXConfig
    from sphinx_x.standins.settings import check_expert_weights
    from sphinx_x.train.expert_pretrain import write_pretrained

    try:
        config = SphinxXConfig.resolve(args.preset)
    except (ConfigError, FileNotFoundError) as e:
        print(f"sphinx-x pretrain-experts: error: {e}", file=sys.stderr)
        return 2
    try:
        check_expert_weights(args.scene_weight, args.token_weight, args.ocr_weight)
    except ValueError as e:
        print(f"sphinx-x pretrain-experts: error: {e} (--scene-weight, --token-weight, --ocr-weight)", file=sys.stderr)
        return 2
    if args.box_weight < 0:
        print(f"sphinx-x pretrain-experts: error: --box-weight must be >= 0, got {args.box_weight:g}", file=sys.stderr)
        return 2
    if args.keep_weight > 0 and not args.init_from:
        print("sphinx-x pretrain-experts: error: --keep-weight holds the tokens near the trunk a fine-tuning stage "
              "starts from: it needs --init-from", file=sys.stderr)
        return 2
    only = [n.strip() for n in args.experts.split(",") if n.strip()] if args.experts else None
    names = [e.name for e in config.vision.experts]
    if only is not None and (not only or set(only) - set(names)):
        print(f"sphinx-x pretrain-experts: error: --experts {args.experts}: name experts among {', '.join(names)}",
              file=sys.stderr)
        return 2
    init_from = None
    if args.init_from:
        folder = Path(args.init_from)
        folder = folder / "experts" if (folder / "experts").is_dir() else folder
        init_from = {e.name: folder / f"{e.name}.safetensors" for e in config.vision.experts
                     if (folder / f"{e.name}.safetensors").is_file()}
        missing = [n for n in (only or names) if n not in init_from]
        if missing:
            print(f"sphinx-x pretrain-experts: error: --init-from {args.init_from}: no "
                  f"{', '.join(m + '.safetensors' for m in missing)} in {folder}", file=sys.stderr)
            return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"sphinx-x pretrain-experts: error: {out}: exists and is not a directory", file=sys.stderr)
        return 2
    result, model_yaml = write_pretrained(
        config, out, steps=args.steps, max_seconds=args.minutes * 60 if args.minutes else None,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device, progress=not args.quiet,
        token_weight=args.token_weight, scene_weight=args.scene_weight, ocr_weight=args.ocr_weight,
        box_weight=args.box_weight, init_from=init_from, only=only, keep_weight=args.keep_weight)
    for name, path in result.paths.items():
        if name in result.accuracy:
            print(f"{name}: {path}  (held-out: names the shape of {100 * result.accuracy[name]:.0f}% of the objects, "
                  "chance 20%)")
        else:
            print(f"{name}: {path}")
    for name, acc in result.token_accuracy.items():
        print(f"{name}: per-token held-out: names colour and shape under {100 * acc:.0f}% of the object tokens")
    for name, acc in result.word_accuracy.items():
        print(f"{name}: reading held-out: names the word of {100 * acc:.0f}% of the OCR pages from the global view, "
              f"{100 * result.word_view_accuracy[name]:.0f}% from the sub-image view that holds it (chance 4%)")
    for name, cos in result.keep_cosine.items():
        print(f"{name}: scene tokens held-out: mean cosine {cos:.3f} to the trunk it started from")
    for name, acc in result.box_accuracy.items():
        print(f"{name}: per-token box held-out: {100 * acc:.0f}% of the object tokens give their object's box "
              "at IoU >= 0.5")
    print(f"{result.steps} steps in {result.seconds:.0f} s; model config with these experts frozen: {model_yaml}")
    print(f"next: sphinx-x train configs/nano.yaml --data DATA.yaml --model.preset={model_yaml}")
    return 0
