"""The page's event handlers: plain methods over plain values, so tests call them without a browser.

Every handler returns (or, for `submit`, yields) a tuple in the order of the `*_OUTPUTS` names below;
`sphinx_x.demo.app` binds those names to components. `gr.skip()` leaves a component as it is. A problem
with the visitor's input (an upload that is not an image or has too many pixels, a prompt longer than the
context, an invalid setting) becomes a toast (`gr.Warning`) and the status text, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import gradio as gr

from sphinx_x.canvas import ImageError
from sphinx_x.demo.conversation import Conversation, DemoSettings, check_uploads, stream_reply
from sphinx_x.demo.render import annotation_rows, chat_text, overlay, status_line
from sphinx_x.infer.draw import answer_annotations
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import PromptError

UPLOAD_OUTPUTS = ("state", "overlay", "status")
SUBMIT_OUTPUTS = ("chat", "overlay", "annotations", "status", "state", "question", "upload")
RESET_OUTPUTS = ("state", "chat", "overlay", "annotations", "status", "question", "upload")


def warn(message: str) -> str:
    """Show `message` as a toast in the page (outside a Gradio event it is a Python warning)."""
    gr.Warning(message)
    return message


class DemoCallbacks:
    def __init__(self, model: Any, settings: DemoSettings):
        self.model = model
        self.settings = settings
        self.anchor = model.config.vision.canvas.pad_anchor

    def upload(self, paths: Sequence[str] | None, conv: Conversation) -> tuple:
        """The file box changed: its images (checked) become the images of the next question."""
        had_pending = bool(conv.pending)
        conv.pending, problems = check_uploads(paths, self.settings)
        if not paths:  # emptied, also by `submit` once the images are sent: leave the drawing and status be
            keep = gr.skip()
            return conv, (conv.draw_target if had_pending else keep), keep
        for problem in problems:
            warn(problem)
        names = ", ".join(u.name for u in conv.pending)
        notes = [f"Attached to the next question: {names}."] if names else []
        status = "\n\n".join(notes + [f"**Upload refused:** {p}" for p in problems])
        return conv, conv.draw_target, status

    def submit(self, question: str, conv: Conversation, max_new_tokens: float, temperature: float,
               top_p: float) -> Iterator[tuple]:
        """Send `question` with the attached images; yields the page as the answer streams."""
        question = (question or "").strip()
        keep = gr.skip()
        if not question:
            yield keep, keep, keep, warn("Type a question first."), conv, keep, keep
            return
        try:
            config = GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                      top_p=float(top_p))
        except ValueError as e:
            yield keep, keep, keep, warn(str(e)), conv, keep, keep
            return
        target = conv.draw_target
        shown = list(conv.messages)
        shown += [{"role": "user", "content": {"path": u.path}} for u in conv.pending]
        shown += [{"role": "user", "content": chat_text(question)}, {"role": "assistant", "content": ""}]
        yield list(shown), target, [], "Generating…", conv, "", keep
        drawn = 0
        try:
            for step in stream_reply(self.model, conv, question, config):
                shown[-1] = {"role": "assistant", "content": chat_text(step.text)}
                picture: Any = keep
                count = len(answer_annotations(step.text, *target.size, self.anchor)) if target else 0
                if target is not None and (count != drawn or step.done):
                    picture, anns = overlay(target, step.text, self.anchor)
                    drawn = len(anns)
                    rows: Any = annotation_rows(anns)
                else:
                    rows = keep
                status = "Generating…"
                if step.done:
                    status = status_line(step.done, drawn, target is not None)
                    conv.messages = shown
                yield list(shown), picture, rows, status, conv, keep, (None if step.done else keep)
        except (PromptError, ImageError, ValueError) as e:
            # the turn is not kept: the chat goes back to what it was, the question and images stay
            yield list(conv.messages), target, [], warn(f"Cannot answer: {e}"), conv, question, keep
            return

    def reset(self) -> tuple:
        """A new conversation: no turns, no images, empty chat."""
        return Conversation(), [], None, [], "New conversation.", "", None
