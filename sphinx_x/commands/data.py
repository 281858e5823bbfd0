"""`sphinx-x data ...`: data tools. Each tool is its own module exposing `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib

DATA_COMMAND_MODULES = [
    "sphinx_x.commands.data_check",  # sphinx-x data check MIX.yaml
    "sphinx_x.commands.data_synth",  # sphinx-x data synth --out DIR ...
]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="check data mixes, generate the synthetic corpus")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    for name in DATA_COMMAND_MODULES:
        importlib.import_module(name).register(sub)
