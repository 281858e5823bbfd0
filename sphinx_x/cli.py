"""The `sphinx-x` command line: one entry point, one module per subcommand under sphinx_x.commands.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func`
(called with the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sphinx_x.extras import MissingExtraError
from sphinx_x.hostmem import configure_from_env

# One line per subcommand module; keep in the order they appear in `sphinx-x --help`.
COMMAND_MODULES = [
    "sphinx_x.commands.quickstart",
    "sphinx_x.commands.info",
    "sphinx_x.commands.data",
    "sphinx_x.commands.init",
    "sphinx_x.commands.convert",  # sphinx-x convert accessory
    "sphinx_x.commands.score",
    "sphinx_x.commands.eval",  # sphinx-x eval, sphinx-x convert-bench
    "sphinx_x.commands.train",
    "sphinx_x.commands.lora",  # sphinx-x lora merge
    "sphinx_x.commands.pretrain_experts",
    "sphinx_x.commands.pretrain_llm",
    "sphinx_x.commands.build_standins",
    "sphinx_x.commands.curate",
    "sphinx_x.commands.chat",
    "sphinx_x.commands.generate",
    "sphinx_x.commands.serve",
    "sphinx_x.commands.demo",
]


# Inference commands keep freed host memory for the next forward pass (sphinx_x/hostmem.py). Training does not:
# measured, its steps do not get faster and the quickstart's peak RSS rose 9%.
HOST_MEMORY_COMMANDS = {"chat", "generate", "serve", "demo", "eval"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sphinx-x", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in HOST_MEMORY_COMMANDS:
        try:
            configure_from_env()
        except ValueError as e:  # a bad SPHINX_X_HOST_MALLOC
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except MissingExtraError as e:  # an optional part is not installed: name the extra, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
