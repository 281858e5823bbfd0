"""Dialogue templates: turn role-tagged messages into one text plus the character spans that carry loss.

`render(messages, add_generation_prompt=False) -> (text, spans)`: `spans` holds one (start, end)
character span per assistant message (in order), covering the answer and the template's closing
marker; the encoder labels tokens by these spans. With `add_generation_prompt=True` the text ends
with the cue for the next assistant answer (inference prompts).

Registry: `get_template("accessory")` (README "Data", the default) or `get_template("chat", tokenizer)`
(the backbone's own `chat_template`, rendered by transformers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Span = tuple[int, int]
Messages = Sequence[dict[str, str]]

ACCESSORY_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


class TemplateError(ValueError):
    """A template cannot render these messages (or cannot be built for this tokenizer)."""


class Template:
    """A dialogue template: renders chat messages to text plus the character spans the loss covers."""

    name: str = ""
    stop_strings: tuple[str, ...] = ()
    # True when the rendered text already starts with the BOS token's text (chat templates usually do).
    includes_bos: bool = False

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        """The text of `messages` ({"role", "content"} dicts) and the (start, end) character spans of the
        assistant answers that carry loss; `add_generation_prompt` ends the text with the assistant cue."""
        raise NotImplementedError


class AccessoryTemplate(Template):
    """LLaMA2-Accessory `conv_v1_2`: system, "\\n\\n###", then " Human: {q}\\n###" / " Assistant: {a}\\n###".

    Loss covers the answer and its closing "\\n###", never the " Assistant:" tag. The generation cue
    ends at the colon, so the space before the answer is the first thing the model writes: it is in
    the supervised span (tokenizers fold it into the answer's first token or, like SentencePiece
    before a digit, make it a token of its own, which must then carry loss too).
    A leading system message replaces the default system prompt."""

    name = "accessory"
    sep = "\n###"
    stop_strings = ("\n###",)

    def __init__(self, system: str = ACCESSORY_SYSTEM):
        self.system = system

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        system = self.system
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        parts, spans = [system + "\n" + self.sep], []
        pos = len(parts[0])
        for i, msg in enumerate(messages):
            role = msg["role"]
            if role == "user":
                piece = f" Human: {msg['content']}{self.sep}"
            elif role == "assistant":
                tag = " Assistant:"
                piece = f"{tag} {msg['content']}{self.sep}"
                spans.append((pos + len(tag), pos + len(piece)))
            else:
                raise TemplateError(f"message {i}: role {role!r} is not allowed here (user/assistant after system)")
            parts.append(piece)
            pos += len(piece)
        if add_generation_prompt:
            parts.append(" Assistant:")
        return "".join(parts), spans


class ChatTemplate(Template):
    """The tokenizer's own `chat_template` (Jinja, rendered by transformers' `apply_chat_template`).

    Spans come from incremental rendering: for the assistant message at position k, the answer span
    runs from the end of `render(messages[:k], add_generation_prompt=True)` to the end of
    `render(messages[:k+1])`, so it includes the template's own closing tokens (e.g. "</s>",
    "<|im_end|>\\n"). Templates whose renders are not prefixes of each other are refused."""

    name = "chat"

    def __init__(self, tokenizer: Any):
        if tokenizer is None:
            raise TemplateError("template 'chat' needs a tokenizer (its chat_template is the template)")
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"template 'chat': tokenizer {getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} "
                "has no chat_template; use template 'accessory' or a tokenizer that ships one"
            )
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token", None)
        self.stop_strings = (eos,) if eos else ()
        bos = getattr(tokenizer, "bos_token", None)
        probe = self._apply([{"role": "user", "content": "x"}], True)
        self.includes_bos = bool(bos) and probe.startswith(bos)

    def _apply(self, messages: Messages, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as e:  # Jinja raises its own errors (e.g. "roles must alternate")
            raise TemplateError(f"template 'chat': the tokenizer's chat_template failed: {e}") from e

    def render(self, messages: Messages, add_generation_prompt: bool = False) -> tuple[str, list[Span]]:
        text = self._apply(messages, add_generation_prompt)
        spans = []
        for k, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            prefix = self._apply(messages[:k], True)
            upto = self._apply(messages[: k + 1], False)
            if not upto.startswith(prefix) or not text.startswith(upto):
                raise TemplateError(
                    "template 'chat': renders of a growing conversation are not prefixes of each other, "
                    "so assistant spans cannot be located by offsets; use template 'accessory'"
                )
            spans.append((len(prefix), len(upto)))
        return text, spans


_REGISTRY: dict[str, Callable[[Any], Template]] = {
    "accessory": lambda tokenizer: AccessoryTemplate(),
    "chat": ChatTemplate,
}


def register_template(name: str, factory: Callable[[Any], Template]) -> None:
    """Add a template: `factory(tokenizer) -> Template`."""
    _REGISTRY[name] = factory


def template_names() -> list[str]:
    """The registered template names (what a config's `template` may be)."""
    return list(_REGISTRY)


def get_template(name: str, tokenizer: Any = None) -> Template:
    """The template registered as `name`, built for `tokenizer` (chat templates read theirs from it)."""
    if name not in _REGISTRY:
        raise TemplateError(f"unknown template {name!r}; valid templates: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](tokenizer)
