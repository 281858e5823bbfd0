"""`sphinx-x init PRESET --out DIR`: write a randomly initialised model directory."""

from __future__ import annotations

import argparse

import torch

from sphinx_x.config import SphinxXConfig


def init_model(preset_or_config: str, out: str, seed: int = 0) -> None:
    from sphinx_x.model import SphinxX
    from sphinx_x.tokenizer import load_tokenizer

    config = SphinxXConfig.resolve(preset_or_config)
    torch.manual_seed(seed)
    model = SphinxX(config)
    tokenizer = load_tokenizer(config.tokenizer or config.llm.path) if (config.tokenizer or config.llm.path) else None
    model.save_pretrained(out, tokenizer=tokenizer)


def run(args: argparse.Namespace) -> int:
    init_model(args.preset, args.out, args.seed)
    print(f"wrote a randomly initialised {args.preset} model to {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("init", help="write a randomly initialised model directory")
    p.add_argument("preset", help="preset name or config file")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
