"""Prompts for generation: conversation turns with images -> input ids + prepared image views.

A conversation is a list of turns `{"role": "system" | "user" | "assistant", "content": str,
"images": [...]}` where `images` (user turns only, optional) are the images attached to that turn, in
order. Images may be paths, bytes or PIL images; they are loaded with `sphinx_x.canvas.load_image`.

Where image tokens go (README, same contract as training via `DialogueEncoder.encode_prompt`):
- text that already holds `<image>` placeholders keeps them (each user turn must hold exactly one per
  attached image);
- otherwise, when only the first user turn carries images, they go right after BOS (the public
  SPHINX code's single-image layout);
- otherwise (images attached to later turns) each turn's images become `<image>\\n` placeholders at
  the start of that turn, so every image sits next to the question that introduced it.
The encoder then applies the one placement rule of `sphinx_x.data.encode`: placeholders that only open
or close the first user turn are dropped and those images go right after BOS as well.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sphinx_x.canvas import ImageViews, load_image, prepare_image
from sphinx_x.config import CanvasConfig, VisionConfig
from sphinx_x.constants import IMAGE_PLACEHOLDER
from sphinx_x.data.encode import DialogueEncoder
from sphinx_x.image_tokens import visual_token_count

ImageInput = str | Path | bytes | Image.Image
Turn = dict[str, Any]


class PromptError(ValueError):
    """A conversation cannot be turned into a prompt; the message names the turn and what is wrong."""


@dataclass
class EncodedPrompt:
    """What the decode loop needs for one sample."""

    input_ids: list[int]  # with IMAGE_TOKEN_ID runs in place
    images: list[ImageViews] = field(default_factory=list)  # in order of appearance
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # original (width, height)


def as_images(images: ImageInput | Sequence[ImageInput] | None, max_pixels: int = CanvasConfig.max_pixels
              ) -> list[Image.Image]:
    """One image, a list of them, or None -> loaded RGB PIL images."""
    if images is None:
        return []
    if isinstance(images, (str, Path, bytes, Image.Image)):
        images = [images]
    return [load_image(im, max_pixels=max_pixels) for im in images]


def user_turn(question: str, images: ImageInput | Sequence[ImageInput] | None = None) -> Turn:
    """A user turn `{"role": "user", "content": question, "images": [...]}` with its images loaded (paths,
    bytes or PIL images; None for none)."""
    if not isinstance(question, str):
        raise PromptError(f"the question must be a string, got {type(question).__name__}")
    return {"role": "user", "content": question, "images": as_images(images)}


def layout_messages(turns: Sequence[Turn]) -> tuple[list[dict[str, str]], list[Image.Image]]:
    """Template messages (role/content only) and all images in order of appearance."""
    images: list[Image.Image] = []
    carriers = []  # indices of user turns with images
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or not isinstance(turn.get("content"), str):
            raise PromptError(f"turn {i}: expected a dict with 'role' and a string 'content', got {turn!r:.80}")
        ims = list(turn.get("images") or [])
        if ims and turn["role"] != "user":
            raise PromptError(f"turn {i}: only user turns can carry images (role is {turn['role']!r})")
        if ims:
            carriers.append(i)
        images += ims
    explicit = any(IMAGE_PLACEHOLDER in t["content"] for t in turns)
    first_user = next((i for i, t in enumerate(turns) if t["role"] == "user"), None)
    messages = []
    for i, turn in enumerate(turns):
        content = turn["content"]
        n = len(turn.get("images") or [])
        if explicit:
            found = content.count(IMAGE_PLACEHOLDER)
            if found != n:
                raise PromptError(
                    f"turn {i}: holds {found} {IMAGE_PLACEHOLDER} placeholder(s) but carries {n} image(s); "
                    f"when any turn uses placeholders, every turn needs one per image"
                )
        elif n and carriers != [first_user]:
            content = f"{IMAGE_PLACEHOLDER}\n" * n + content
        messages.append({"role": turn["role"], "content": content})
    return messages, [im if isinstance(im, Image.Image) else load_image(im) for im in images]


class PromptEncoder:
    """Turns conversations into `EncodedPrompt`s for one model (its tokenizer, template and vision config)."""

    def __init__(self, tokenizer: Any, template: str, vision: VisionConfig):
        if tokenizer is None:
            raise PromptError("the model has no tokenizer (load it with SphinxX.from_pretrained from a model "
                              "directory that holds tokenizer files)")
        self.tokenizer = tokenizer
        self.vision = vision
        self.dialogue = DialogueEncoder(tokenizer, template)
        self.stop_strings = tuple(self.dialogue.template.stop_strings)
        self._views: dict[int, tuple[weakref.ref, ImageViews]] = {}

    @classmethod
    def for_model(cls, model: Any) -> PromptEncoder:
        """The encoder for `model`'s tokenizer, template and vision config, cached on the model."""
        cached = getattr(model, "_prompt_encoder", None)
        if cached is None or cached.tokenizer is not model.tokenizer:
            cached = cls(model.tokenizer, model.config.template, model.config.vision)
            model._prompt_encoder = cached  # plain attribute: not a module, not in the state dict
        return cached

    def encode(self, turns: Sequence[Turn]) -> EncodedPrompt:
        """Turns ending with a user turn -> the prompt's ids (template, image-token runs, the assistant cue)
        and its images' views; a malformed prompt is a PromptError."""
        messages, images = layout_messages(turns)
        if not messages or messages[-1]["role"] != "user":
            raise PromptError("a generation prompt must end with a user turn")
        counts = [visual_token_count(im.width, im.height, self.vision) for im in images]
        try:
            ids = self.dialogue.encode_prompt(messages, counts)
        except ValueError as e:
            raise PromptError(str(e)) from e
        views = [self.views(im) for im in images]
        return EncodedPrompt(ids, views, [im.size for im in images])

    def views(self, image: Image.Image) -> ImageViews:
        """`prepare_image`, remembered per image object while it lives: a chat's history carries the same
        images turn after turn, so later turns do not prepare them again."""
        key = id(image)
        hit = self._views.get(key)
        if hit is not None and hit[0]() is image:
            return hit[1]
        views = prepare_image(image, self.vision)
        self._views[key] = (weakref.ref(image), views)
        weakref.finalize(image, self._views.pop, key, None)
        return views
