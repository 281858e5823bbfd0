"""`sphinx-x demo --model DIR [--host 127.0.0.1] [--port 7860] [--share-nothing]`: the web demo (Gradio).

Upload images, chat with streamed answers, see the answer's boxes, points, grounded phrases and marks drawn
on the image (docs/demo.md). Needs the `demo` extra (`pip install 'sphinx-x[demo]'`).
Exit codes: 0 stopped normally; 2 bad model directory or options, or the extra is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sphinx_x.commands.cli_args import CommandError, add_model_args, load_model
from sphinx_x.extras import require_extra


def run(args: argparse.Namespace) -> int:
    require_extra("demo", "gradio", "sphinx-x demo")  # MissingExtraError: `sphinx-x` prints it, exit code 2
    from sphinx_x.demo.app import launch
    from sphinx_x.demo.conversation import DemoSettings

    try:
        settings = DemoSettings(max_images=args.max_images, max_image_pixels=args.max_image_pixels,
                                max_new_tokens=args.max_new_tokens,
                                default_max_new_tokens=args.default_max_new_tokens)
        if args.max_upload_mb <= 0:
            raise CommandError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
        model = load_model(args)
    except (CommandError, ValueError) as e:
        print(f"sphinx-x demo: {e}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the demo on {args.host} is open to anyone who can reach this machine", file=sys.stderr)
    launch(model, settings, args.host, args.port, name=Path(args.model).resolve().name, share=args.share,
           share_nothing=args.share_nothing, max_upload_mb=args.max_upload_mb)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="web demo: upload images, chat, see the answer's boxes drawn (Gradio)")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    public = p.add_mutually_exclusive_group()
    public.add_argument("--share", action="store_true", help="also make a public gradio.live link (off by default)")
    public.add_argument("--share-nothing", action="store_true",
                        help="only the page can use the model: no API (page or endpoints), no footer links")
    p.add_argument("--max-images", type=int, default=8, help="images per question")
    p.add_argument("--max-image-pixels", type=int, default=25_000_000, help="pixels per image")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="size limit of one uploaded file")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="the upper end of the page's slider")
    p.add_argument("--default-max-new-tokens", type=int, default=256, help="the slider's starting value")
    p.set_defaults(func=run)
