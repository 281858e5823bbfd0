"""`sphinx-x train CONFIG.yaml [--data MIX.yaml] [--out DIR] [--max-steps N] [--resume] [--section.key=value ...]`.

Runs in one process, or under `torchrun --nproc_per_node N` with FSDP2. Dotted options override any
config key (`--train.micro_batch=8`, `--optim.lr 1e-4`); unknown keys are errors naming the valid ones.
"""

from __future__ import annotations

import argparse
import sys

from sphinx_x.config import ConfigError


def _add_shortcuts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data mix YAML (sets data.mix)")
    p.add_argument("--out", help="output directory (sets output.dir)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (sets train.max_steps)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output dir")


def split_overrides(rest: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse shortcut options given after CONFIG and collect `--section.key=value` (or `--section.key value`)."""
    p = argparse.ArgumentParser(prog="sphinx-x train", add_help=False)
    _add_shortcuts(p)
    known, unknown = p.parse_known_args(rest)
    overrides: list[str] = []
    i = 0
    while i < len(unknown):
        arg = unknown[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unrecognised argument {arg!r}; config overrides look like --section.key=value")
        if "=" not in arg:
            if i + 1 >= len(unknown):
                raise ConfigError(f"override {arg} needs a value (--section.key=value)")
            arg = f"{arg}={unknown[i + 1]}"
            i += 1
        overrides.append(arg)
        i += 1
    return known, overrides


def build_config(args: argparse.Namespace):
    from sphinx_x.train.config import load_train_config

    later, overrides = split_overrides(args.rest or [])
    for key in ("data", "out", "max_steps"):
        if getattr(later, key) is not None:
            setattr(args, key, getattr(later, key))
    args.resume = args.resume or later.resume
    if args.data is not None:
        overrides.append(f"--data.mix={args.data}")
    if args.out is not None:
        overrides.append(f"--output.dir={args.out}")
    if args.max_steps is not None:
        overrides.append(f"--train.max_steps={args.max_steps}")
    if args.resume:
        overrides.append("--output.resume=true")
    return load_train_config(args.config, overrides)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = build_config(args)
        from sphinx_x.train import train

        train(cfg)
    except (ConfigError, FileNotFoundError) as e:
        print(f"sphinx-x train: error: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="one-stage training (single process or torchrun + FSDP2)",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="training config YAML (see configs/)")
    _add_shortcuts(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="--section.key=value overrides")
    p.set_defaults(func=run)
