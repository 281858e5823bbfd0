"""`sphinx-x lora merge BASE ADAPTER --out DIR`: fold a LoRA adapter into its base model (docs/lora.md).

ADAPTER is an adapter directory of a LoRA run (OUT/final or a checkpoint OUT/ckpt/step-N); BASE is the model
directory it was trained on (`model.path`, or OUT/base for a run started from a preset). The result is an
ordinary model directory (the adapters folded into the LLM's weights, the projector and image tags of the
adapter when it trained them), written atomically by `SphinxX.save_pretrained`.
"""

from __future__ import annotations

import argparse
import sys

from sphinx_x.config import ConfigError

DTYPES = ("fp32", "bf16")


def merge(base: str, adapter: str, out: str, dtype: str = "fp32") -> None:
    import torch

    from sphinx_x.model import SphinxX
    from sphinx_x.train.lora import load_lora, merge_lora

    model = merge_lora(load_lora(SphinxX.from_pretrained(base), adapter))  # merged in fp32
    if dtype == "bf16":
        model.to(torch.bfloat16)
    model.save_pretrained(out)  # the base directory's tokenizer comes along


def run(args: argparse.Namespace) -> int:
    try:
        merge(args.base, args.adapter, args.out, args.dtype)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"sphinx-x lora merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {args.adapter} into {args.base}: {args.out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lora", help="LoRA adapters: merge one into its base model",
                              description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="lora_command", required=True, metavar="ACTION")
    m = sub.add_parser("merge", help="write a model directory with the adapter folded into the base weights")
    m.add_argument("base", help="the base model directory the adapter was trained on")
    m.add_argument("adapter", help="adapter directory (a LoRA run's OUT/final or OUT/ckpt/step-N)")
    m.add_argument("--out", required=True, help="output model directory")
    m.add_argument("--dtype", choices=DTYPES, default="fp32", help="weights of the merged model (default fp32)")
    m.set_defaults(func=run)
