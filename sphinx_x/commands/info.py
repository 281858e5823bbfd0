"""`sphinx-x info PRESET_OR_DIR`: parameter counts per component and visual tokens per image size."""

from __future__ import annotations

import argparse
import json

from sphinx_x.config import PRESETS, SphinxXConfig
from sphinx_x.image_tokens import visual_token_count

DEFAULT_SIZES = ["1024x1024", "2048x1024", "1024x2048", "4096x1024"]


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must look like 1024x768, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return w, h


def info(preset_or_dir: str, sizes: list[tuple[int, int]]) -> dict:
    from sphinx_x.model import SphinxX

    config = SphinxXConfig.resolve(preset_or_dir)
    model = SphinxX.from_config_without_weights(config)  # meta device: counts without memory
    counts = model.parameter_counts()
    return {
        "preset": config.name,
        "params": {k: counts[k] for k in ("llm", "vision_experts", "projector", "total")},
        "tokens_per_view": config.vision.tokens_per_view,
        "visual_tokens": {f"{w}x{h}": visual_token_count(w, h, config.vision) for w, h in sizes},
    }


def describe_views(config: SphinxXConfig) -> str:
    """One line: views, canvas preprocessing and what a view's tokens are made of."""
    canvas, vision = config.vision.canvas, config.vision
    views = "global view" if canvas.grid == 0 else f"global + {canvas.grid}x{canvas.grid}"
    if canvas.preprocess == "accessory":
        prep = f"accessory preprocessing, {canvas.size} px canvas"
    else:
        prep = f"anchor {canvas.pad_anchor}, skip {'on' if canvas.skip_padded_cells else 'off'}"
    blocks = [f"{e.tokens(vision.feature_grid)} {e.name}" for e in vision.experts if e.own_projector]
    shared = "+".join(e.name for e in vision.experts if not e.own_projector)
    blocks.append(f"{1 + vision.feature_grid ** 2} {shared}")
    return f"{views}, {prep}; a view is [start] {' + '.join(blocks)} [end]"


def _human(n: int) -> str:
    return f"{n / 1e9:.3f}B" if n >= 1e8 else f"{n / 1e6:.3f}M"


def run(args: argparse.Namespace) -> int:
    sizes = args.image_size or [parse_size(s) for s in DEFAULT_SIZES]
    result = info(args.model, sizes)
    if args.json:
        print(json.dumps(result))
        return 0
    config = SphinxXConfig.resolve(args.model)
    p = result["params"]
    print(f"SPHINX-X {result['preset']}  (LLM {config.llm.arch}; {describe_views(config)})")
    print(f"  {'llm':<24}{_human(p['llm']):>12}")
    for name, n in p["vision_experts"].items():
        frozen = next(e.frozen for e in config.vision.experts if e.name == name)
        print(f"  {'expert ' + name:<24}{_human(n):>12}  {'frozen' if frozen else 'trained'}")
    print(f"  {'projector':<24}{_human(p['projector']):>12}")
    print(f"  {'total':<24}{_human(p['total']):>12}")
    print("  visual tokens per image:")
    for size, n in result["visual_tokens"].items():
        print(f"    {size:<12}{n:>6}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="parameter counts and visual tokens of a preset or model directory")
    p.add_argument("model", help=f"preset name ({', '.join(PRESETS)}), model dir or config file")
    p.add_argument("--image-size", action="append", type=parse_size, metavar="WxH",
                   help="image size to report visual tokens for (repeatable)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.set_defaults(func=run)
