"""`sphinx-x chat --model DIR [--image PATH ...] [PROMPT]`: one answer to PROMPT, or an interactive session.

Interactive commands: `/image PATH` attaches an image to the next question, `/reset` starts a new
conversation, `/quit` (or end of input) leaves. Answers stream as they are generated. With
`--draw-boxes OUT.png` the boxes and points of each answer are drawn on the most recently added image.

Exit codes: 0 done; 2 bad input (model directory, image, options).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from sphinx_x.canvas import ImageError, load_image
from sphinx_x.commands.cli_args import CommandError, add_generation_args, add_model_args, generation_config, load_model
from sphinx_x.infer.prompts import PromptError, Turn, user_turn

HELP = "commands: /image PATH (attach to the next question), /reset (new conversation), /quit"


class Session:
    """One conversation: history, images waiting for the next question, and where to draw answers."""

    def __init__(self, model: Any, args: argparse.Namespace, out: Any = None):
        self.model = model
        self.gen = generation_config(args)
        self.draw_path = Path(args.draw_boxes) if args.draw_boxes else None
        self.out = out or sys.stdout
        self.history: list[Turn] = []
        self.pending: list[Image.Image] = []
        self.last_image: Image.Image | None = None

    def add_image(self, path: str) -> None:
        image = load_image(path)
        self.pending.append(image)
        self.last_image = image

    def reset(self) -> None:
        self.history, self.pending, self.last_image = [], [], None

    def ask(self, question: str) -> str:
        from sphinx_x.infer.chat import stream_chat

        pieces = []
        for piece in stream_chat(self.model, self.pending, question, self.history, config=self.gen):
            pieces.append(piece)
            self.out.write(piece)
            self.out.flush()
        self.out.write("\n")
        answer = "".join(pieces)
        self.history += [user_turn(question, self.pending), {"role": "assistant", "content": answer}]
        self.pending = []
        if self.draw_path is not None:
            self.draw(answer)
        return answer

    def draw(self, answer: str) -> None:
        from sphinx_x.infer.draw import draw_answer

        if self.last_image is None:
            print("(--draw-boxes: no image to draw on)", file=sys.stderr)
            return
        drawn, anns = draw_answer(self.last_image, answer, self.model.config.vision.canvas.pad_anchor)
        self.draw_path.parent.mkdir(parents=True, exist_ok=True)
        drawn.save(self.draw_path, format="PNG")
        print(f"(drew {len(anns)} box(es)/point(s) on the image: {self.draw_path})", file=sys.stderr)


def interactive(session: Session, stdin: Any = None) -> None:
    stdin = stdin or sys.stdin
    print(HELP, file=sys.stderr)
    while True:
        print(">>> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/reset":
            session.reset()
            print("(new conversation)", file=sys.stderr)
        elif line.startswith("/image"):
            path = line[len("/image"):].strip()
            try:
                session.add_image(path)
                print(f"(image attached to the next question: {path})", file=sys.stderr)
            except ImageError as e:
                print(f"error: {e}", file=sys.stderr)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
        else:
            try:
                session.ask(line)
            except (PromptError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    try:
        model = load_model(args)
        session = Session(model, args)
        for path in args.image or []:
            session.add_image(path)
        if args.prompt:
            session.ask(args.prompt)
        else:
            interactive(session)
    except (CommandError, ImageError, PromptError, ValueError) as e:
        print(f"sphinx-x chat: {e}", file=sys.stderr)
        return 2
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("chat", help="chat with a model (one-shot with PROMPT, else interactive)")
    add_model_args(p)
    p.add_argument("--image", action="append", metavar="PATH", help="image for the first question (repeatable)")
    p.add_argument("prompt", nargs="?", help="one-shot question; omit for an interactive session")
    p.add_argument("--draw-boxes", metavar="OUT.png", help="draw the answer's boxes/points on the latest image")
    add_generation_args(p)
    p.set_defaults(func=run)
