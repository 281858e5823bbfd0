"""`sphinx-x data check MIX.yaml`: validate a data mix without training.

Prints one line per problem (`path:line: message`), then per-type statistics; exits 0 when the mix is
clean and 1 when problems were found. The tokenizer, template and image geometry come from `--model`
(a preset such as `nano`, a model directory, or a config file).
"""

from __future__ import annotations

import argparse
import sys

from sphinx_x.config import SphinxXConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("check", help="validate a data mix YAML (images, JSON, conversations, lengths)")
    p.add_argument("mix", help="data mix YAML (META: [{path, type, root?, ratio?}])")
    p.add_argument("--max-len", type=int, default=2048, help="max tokens per sample (default 2048)")
    p.add_argument("--model", default="nano", help="preset, model directory or config file (default nano)")
    p.add_argument("--tokenizer", default=None, help="override the model's tokenizer ('nano', dir, .model file)")
    p.add_argument("--template", default=None, help="override the model's dialogue template")
    p.add_argument("--quick", action="store_true", help="read image headers only instead of decoding images")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sphinx_x.data.check import check_mix
    from sphinx_x.tokenizer import load_tokenizer

    config = SphinxXConfig.resolve(args.model)
    spec = args.tokenizer or config.tokenizer or config.llm.path
    if spec is None:
        print(f"error: model {args.model!r} names no tokenizer; pass --tokenizer", file=sys.stderr)
        return 2
    report = check_mix(
        args.mix, load_tokenizer(spec), config.vision, template=args.template or config.template,
        max_len=args.max_len, decode_images=not args.quick, on_problem=print,
    )
    print(report.summary())
    return 0 if report.ok else 1
