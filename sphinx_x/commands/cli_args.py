"""Command-line options shared by `sphinx-x chat`, `generate` and `serve`: model loading and generation."""

from __future__ import annotations

import argparse
from typing import Any

from sphinx_x.infer.loading import DTYPES, load_for_inference
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.quantize import METHODS as QUANTIZE_METHODS


class CommandError(Exception):
    """A fatal, user-facing problem (bad model directory, unreadable input); printed without a traceback."""


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json + safetensors)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="weights dtype (default: bfloat16 on cuda, float32 on cpu)")
    p.add_argument("--quantize", choices=("none", *QUANTIZE_METHODS), default="none",
                   help="run the LLM in 8 or 4 bits (nf4/fp4: CUDA only); see docs/quantization.md")


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
    """The model of `--model/--device/--dtype/--quantize` (sphinx_x/infer/loading.py); a bad directory or an
    option the device cannot run is a CommandError."""
    try:
        return load_for_inference(args.model, device=args.device, dtype=args.dtype,
                                  quantize=getattr(args, "quantize", None))
    except (FileNotFoundError, ValueError) as e:
        raise CommandError(f"cannot load model {args.model}: {e}") from e
