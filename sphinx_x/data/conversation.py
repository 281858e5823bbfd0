"""Validate one raw record and turn it into a `Sample`: role-tagged messages plus resolved image paths.

Record shape (LLaVA / LLaMA2-Accessory):
    {"image": "rel/path.jpg" | ["a.jpg", "b.jpg"] (optional),
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}

Rules: an optional leading system message, then human and gpt turns alternating, starting with human
and ending with gpt. `<image>` placeholders appear only in human turns and, when present, number
exactly as many as the images. Every violation raises `DataError` with a stable `reason` code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sphinx_x.constants import IMAGE_PLACEHOLDER
from sphinx_x.data.readers import DataError, Location

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class Sample:
    """A validated dialogue. `messages` use chat roles: {"role": "system"|"user"|"assistant", "content"}."""

    messages: list[dict[str, str]]
    images: list[Path] = field(default_factory=list)
    location: Location | None = None
    type: str = ""

    @property
    def num_placeholders(self) -> int:
        return sum(m["content"].count(IMAGE_PLACEHOLDER) for m in self.messages)


def parse_sample(raw: Any, location: Location, root: Path, type_: str = "") -> Sample:
    """Validate one raw record (a LLaVA-style `{"image"?, "conversations"}` object) into a `Sample`, image
    paths resolved under `root`; problems raise DataError naming `location` and the field."""
    if not isinstance(raw, dict):
        raise DataError(location, f"a record must be a JSON object, got {type(raw).__name__}", reason="not_object")
    images = _parse_images(raw.get("image"), location, root)
    messages = _parse_conversations(raw, location)
    sample = Sample(messages, images, location, type_)
    placeholders = sample.num_placeholders
    if placeholders and placeholders != len(images):
        raise DataError(location, f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(images)} image(s)",
                        field="conversations", reason="placeholder_mismatch")
    return sample


def _parse_images(value: Any, location: Location, root: Path) -> list[Path]:
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(items):
        name = "image" if not isinstance(value, list) else f"image[{i}]"
        if not isinstance(item, str) or not item.strip():
            raise DataError(location, f"must be a non-empty path string, got {item!r}", field=name,
                            reason="bad_image_field")
        out.append(root / item)
    return out


def _parse_conversations(raw: dict, location: Location) -> list[dict[str, str]]:
    if "conversations" not in raw:
        raise DataError(location, "missing", field="conversations", reason="missing_conversations")
    conv = raw["conversations"]
    if not isinstance(conv, list):
        raise DataError(location, f"must be a list of messages, got {type(conv).__name__}", field="conversations",
                        reason="conversations_not_list")
    if not conv:
        raise DataError(location, "is empty", field="conversations", reason="empty_conversations")
    messages = []
    for i, msg in enumerate(conv):
        name = f"conversations[{i}]"
        if not isinstance(msg, dict):
            raise DataError(location, f"must be an object, got {type(msg).__name__}", field=name,
                            reason="message_not_object")
        for key in ("from", "value"):
            if key not in msg:
                raise DataError(location, "missing", field=f"{name}.{key}", reason=f"missing_{key}")
        if not isinstance(msg["value"], str):
            raise DataError(location, f"must be a string, got {type(msg['value']).__name__}", field=f"{name}.value",
                            reason="value_not_string")
        role = ROLES.get(msg["from"]) if isinstance(msg["from"], str) else None
        if role is None:
            raise DataError(location, f"unknown role {msg['from']!r}; expected human or gpt", field=f"{name}.from",
                            reason="unknown_role")
        messages.append({"role": role, "content": msg["value"]})
    _check_turns(messages, location)
    return messages


def _check_turns(messages: list[dict[str, str]], location: Location) -> None:
    start = 1 if messages[0]["role"] == "system" else 0
    turns = messages[start:]
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            names = {"user": "human", "assistant": "gpt", "system": "system"}
            got = "a system message after the start" if msg["role"] == "system" else f"a {names[msg['role']]} message"
            raise DataError(location, f"expected a {names[expected]} message (human and gpt must alternate, human "
                            f"first), got {got}", field=f"conversations[{start + i}].from", reason="bad_alternation")
        if msg["role"] == "assistant" and IMAGE_PLACEHOLDER in msg["content"]:
            raise DataError(location, f"{IMAGE_PLACEHOLDER} placeholders belong in human messages",
                            field=f"conversations[{start + i}].value", reason="placeholder_in_answer")
    if not turns or turns[-1]["role"] != "assistant":
        raise DataError(location, "the conversation must end with a gpt answer", field="conversations",
                        reason="no_final_answer")
