"""`sphinx-x serve --model DIR [--host 127.0.0.1] [--port 8000] [--api-key KEY]`: the OpenAI-compatible server.

The API key may also come from the SPHINX_X_API_KEY environment variable (keeps it out of `ps`).
Exit codes: 0 stopped normally; 2 bad model directory or options.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sphinx_x.commands.cli_args import CommandError, add_model_args, load_model
from sphinx_x.extras import require_extra


def run(args: argparse.Namespace) -> int:
    require_extra("serve", "fastapi", "sphinx-x serve")
    require_extra("serve", "uvicorn", "sphinx-x serve")
    from sphinx_x.serve.runner import serve
    from sphinx_x.serve.settings import ServerSettings

    try:
        if args.image_root and not Path(args.image_root).is_dir():
            raise CommandError(f"--image-root {args.image_root}: not a directory")
        settings = ServerSettings(
            model_name=args.model_name or Path(args.model).resolve().name,
            api_key=args.api_key or os.environ.get("SPHINX_X_API_KEY") or None,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_image_pixels=args.max_image_pixels,
            max_images=args.max_images,
            max_tokens_limit=args.max_tokens,
            default_max_tokens=min(args.default_max_tokens, args.max_tokens),
            engine=args.engine,
            batch_size=args.batch_size,
            batch_wait_s=args.batch_wait_ms / 1000,
            max_queue=args.max_queue,
            image_root=Path(args.image_root) if args.image_root else None,
        )
        model = load_model(args)
    except (CommandError, ValueError) as e:
        print(f"sphinx-x serve: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"warning: serving on {args.host} without an API key", file=sys.stderr)
    serve(model, settings, host=args.host, port=args.port)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a model behind an OpenAI-compatible HTTP API")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set SPHINX_X_API_KEY)")
    p.add_argument("--model-name", default=None, help="id reported by /v1/models (default: the directory name)")
    p.add_argument("--image-root", default=None, metavar="DIR", help="allow local image paths under DIR")
    p.add_argument("--engine", choices=("continuous", "static"), default="continuous",
                   help="continuous: requests join and leave the batch between decode steps (default); "
                        "static: a batch runs until its longest request finishes")
    p.add_argument("--batch-size", type=int, default=8, help="requests generated together (batch slots)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="wait for more requests before a batch")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before answering 429")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--max-images", type=int, default=8, help="images per request")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="pixels per image")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="request body size limit")
    p.set_defaults(func=run)
