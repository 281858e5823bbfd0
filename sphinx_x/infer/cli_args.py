"""Command-line options shared by `sphinx-x chat`, `generate` and `serve`: model loading and generation."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from sphinx_x.infer.options import GenerationConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CommandError(Exception):
    """A fatal, user-facing problem (bad model directory, unreadable input); printed without a traceback."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json + safetensors)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    g.add_argument("--min-new-tokens", type=int, default=0, help="EOS cannot end the answer before this many tokens")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--seed", type=int, default=None)


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    try:
        return GenerationConfig(max_new_tokens=args.max_new_tokens, min_new_tokens=getattr(args, "min_new_tokens", 0),
                                temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as e:
        raise CommandError(str(e)) from e


def load_model(args: argparse.Namespace) -> Any:
    from sphinx_x.model import SphinxX

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.startswith("cuda") else None)
    try:
        model = SphinxX.from_pretrained(args.model, device=device, dtype=dtype)
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(f"cannot load model {args.model}: {e}") from e
    if model.tokenizer is None:
        raise CommandError(f"{args.model}: the model directory holds no tokenizer files")
    return model
