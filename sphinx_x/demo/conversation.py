"""One visitor's conversation with the model: its turns, the images waiting for the next question, the
checks an upload must pass, and the streamed reply. No Gradio here: `sphinx_x.demo.callbacks` wires it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sphinx_x.canvas import ImageError, load_image
from sphinx_x.infer.chat import stream_generate
from sphinx_x.infer.generate import Generation
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import Turn, user_turn


@dataclass
class DemoSettings:
    """Limits of the page and the range of its generation sliders."""

    max_images: int = 8  # images attached to one question
    max_image_pixels: int = 25_000_000  # width * height of one image
    max_new_tokens: int = 1024  # the upper end of the "max new tokens" slider
    default_max_new_tokens: int = 256

    def __post_init__(self) -> None:
        for name in ("max_images", "max_image_pixels", "max_new_tokens", "default_max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"demo setting {name} must be an int >= 1, got {value!r}")
        self.default_max_new_tokens = min(self.default_max_new_tokens, self.max_new_tokens)


@dataclass
class Upload:
    name: str  # the file's own name, as the visitor knows it
    path: str  # where the server keeps it (shown back in the chat)
    image: Image.Image


@dataclass
class Conversation:
    """The model's turns (images as PIL), what the chat shows, and the images for the next question."""

    history: list[Turn] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # Gradio chat messages
    pending: list[Upload] = field(default_factory=list)
    image: Image.Image | None = None  # the latest image sent: answers are drawn on it

    @property
    def draw_target(self) -> Image.Image | None:
        """The image the next answer is drawn on: the last one attached to it, else the latest sent."""
        return self.pending[-1].image if self.pending else self.image


def check_uploads(paths: Sequence[str] | None, settings: DemoSettings) -> tuple[list[Upload], list[str]]:
    """Load the uploaded files as images. Files that are not images or have too many pixels are left out,
    as are those beyond `settings.max_images`; each problem becomes one message naming the file."""
    uploads: list[Upload] = []
    problems: list[str] = []
    for path in paths or []:
        name = Path(path).name
        try:
            image = load_image(path, max_pixels=settings.max_image_pixels)
        except ImageError as e:
            problems.append(str(e).replace(str(path), name))
            continue
        if len(uploads) == settings.max_images:
            problems.append(f"{name}: left out, a question takes at most {settings.max_images} image(s)")
            continue
        uploads.append(Upload(name, str(path), image))
    return uploads, problems


@dataclass
class ReplyStep:
    text: str  # the answer so far
    done: Generation | None = None  # set on the last step


def stream_reply(model: Any, conv: Conversation, question: str, config: GenerationConfig) -> Iterator[ReplyStep]:
    """Answer `question` (with the pending images) after the conversation's turns, streaming; once the
    answer is complete the turn joins the history and the pending images become the latest image.
    Raises `PromptError` / `ValueError` (e.g. prompt longer than the context) before the first step."""
    turn = user_turn(question, [u.image for u in conv.pending])
    text = ""
    for _, piece, done in stream_generate(model, [conv.history + [turn]], config=config):
        text += piece
        if done is not None:  # kept before the last step is shown, so the page never sees a half turn
            conv.history += [turn, {"role": "assistant", "content": done.text}]
            if conv.pending:
                conv.image = conv.pending[-1].image
            conv.pending = []
        yield ReplyStep(text, done)
