"""Tokenise a rendered dialogue, place image tokens, build label masks, truncate.

The whole dialogue is tokenised once by the tokenizer's fast backend (`tokenizers.Tokenizer`) with
character offsets; a private copy of that backend knows `<image>` as a special token, so each
placeholder becomes exactly one token whose neighbours tokenise as they would around any special
token. That token is then replaced by the image's run of `IMAGE_TOKEN_ID` (its visual token count).

Where images go, one rule for training data and inference prompts (the public SPHINX code's layout):
right after BOS, unless the placeholders say otherwise. A sample without placeholders, and a sample
whose placeholders all open or close the first human message (the LLaVA convention
"<image>\nquestion", which marks only that there is an image; the public code deletes it), gets its
images right after BOS, with those placeholders and the whitespace next to them removed. Placeholders
anywhere else (inside the text, in later turns: interleaved multi-image data) place each image where
it stands.

Labels are aligned with `input_ids` (transformers convention; the model shifts them): a text token
is supervised when its character span overlaps an assistant span of the template, so an answer's
first token keeps the space it absorbed from the role tag. Everything else is IGNORE_INDEX.

Truncation to `max_len` keeps as many whole turns (human + answer) as fit; only when even the first
turn does not fit is it cut inside, and never inside an image's tokens. A result without any
supervised token is rejected (`SampleRejected`).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Tokenizer

from sphinx_x.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_ID
from sphinx_x.data.templates import Messages, Template, get_template
from sphinx_x.image_tokens import check_image_fits

_PH = re.escape(IMAGE_PLACEHOLDER)
_EDGE_PLACEHOLDERS = re.compile(rf"^\s*(?:{_PH}\s*)+|(?:\s*{_PH})+\s*$")  # opening or closing a message


def images_after_bos(messages: Messages, num_images: int) -> list[dict[str, str]]:
    """`messages` laid out for the after-BOS rule (see the module docstring): when every placeholder
    opens or closes the first user message, they are removed (with the whitespace beside them) so
    the images go right after BOS; otherwise the messages are returned unchanged."""
    messages = [dict(m) for m in messages]
    found = [m["content"].count(IMAGE_PLACEHOLDER) for m in messages]
    if not num_images or sum(found) != num_images:
        return messages  # no placeholders, or a count mismatch that the encoder reports
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
    if first_user is None or sum(found) != found[first_user]:
        return messages
    stripped = _EDGE_PLACEHOLDERS.sub("", messages[first_user]["content"])
    if IMAGE_PLACEHOLDER not in stripped:
        messages[first_user]["content"] = stripped
    return messages


class SampleRejected(Exception):
    """A well-formed sample that cannot be trained on (e.g. nothing supervised survives truncation)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass
class Encoded:
    """A dialogue as model input: ids (each image a run of IMAGE_TOKEN_ID), labels (IGNORE_INDEX where no
    loss), and what truncation did."""

    input_ids: list[int]
    labels: list[int]
    num_images: int  # images whose tokens are in input_ids (truncation may drop trailing ones)
    num_visual_tokens: int
    num_text_tokens: int
    full_length: int  # length before truncation
    dropped_turns: int = 0  # whole trailing turns removed by truncation
    cut_inside_turn: bool = False  # the first turn alone was too long and was cut


class DialogueEncoder:
    """Encodes messages for training (`encode`) and inference prompts (`encode_prompt`)."""

    def __init__(self, tokenizer: Any, template: Template | str = "accessory", max_len: int | None = None):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise TypeError(
                f"{type(tokenizer).__name__} is not a fast tokenizer (no tokenizers backend); character "
                "offsets are needed for label masks"
            )
        self.tokenizer = tokenizer
        self.template = get_template(template, tokenizer) if isinstance(template, str) else template
        self.max_len = max_len
        # Private copy: adding <image> must not change the caller's tokenizer.
        self._backend = Tokenizer.from_str(backend.to_str())
        self._backend.add_special_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)])
        self.image_id = self._backend.token_to_id(IMAGE_PLACEHOLDER)
        self.bos_id = tokenizer.bos_token_id

    # ---- public ------------------------------------------------------------------------------
    def encode(self, messages: Messages, image_token_counts: Sequence[int] = ()) -> Encoded:
        """A training sample: BOS, the rendered dialogue with the i-th "<image>" placeholder replaced by
        `image_token_counts[i]` image positions, and labels equal to the ids exactly on the answers the
        template supervises. Beyond `max_len`, trailing turns are dropped (or the first turn cut); a sample
        left with no supervised token raises SampleRejected."""
        text, spans = self.template.render(images_after_bos(messages, len(image_token_counts)))
        ids, starts, ends, runs = self._sequence(text, image_token_counts)
        labels = _labels(ids, starts, ends, spans)
        enc = Encoded(ids, labels, len(image_token_counts), sum(image_token_counts),
                      len(ids) - sum(image_token_counts), len(ids))
        if self.max_len is not None and len(ids) > self.max_len:
            self._truncate(enc, starts, spans, runs, image_token_counts)
        if all(label == IGNORE_INDEX for label in enc.labels):
            raise SampleRejected("no_supervised_tokens",
                                 f"no supervised token left (length {enc.full_length}, max_len {self.max_len})")
        return enc

    def encode_prompt(self, messages: Messages, image_token_counts: Sequence[int] = ()) -> list[int]:
        """Input ids for generation: the dialogue so far plus the assistant cue; no truncation."""
        text, _ = self.template.render(images_after_bos(messages, len(image_token_counts)), add_generation_prompt=True)
        return self._sequence(text, image_token_counts)[0]

    def count_text_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of plain texts (batched), for length estimates."""
        return [len(e.ids) for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    # ---- internals ---------------------------------------------------------------------------
    def _sequence(self, text: str, counts: Sequence[int]) -> tuple[list[int], list[int], list[int], list[int]]:
        """ids with image runs in place, each position's character span (-1 for BOS and leading
        images, zero width for image tokens), and the start position of every image run."""
        enc = self._backend.encode(text, add_special_tokens=False)
        placeholders = sum(1 for t in enc.ids if t == self.image_id)
        if placeholders not in (0, len(counts)):
            raise ValueError(f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {len(counts)} image(s)")
        ids: list[int] = []
        starts: list[int] = []
        ends: list[int] = []
        runs: list[int] = []
        if self.bos_id is not None and not self.template.includes_bos:
            ids.append(self.bos_id)
            starts.append(-1)
            ends.append(-1)
        for tok, (s, e) in zip(enc.ids, enc.offsets):
            if tok == self.image_id:
                n = self._image_run(counts[len(runs)])
                runs.append(len(ids))
                ids += [IMAGE_TOKEN_ID] * n
                starts += [s] * n
                ends += [s] * n
            else:
                ids.append(tok)
                starts.append(s)
                ends.append(e)
        if not placeholders and counts:
            at = 1 if ids and ids[0] == self.bos_id else 0
            total = sum(self._image_run(c) for c in counts)
            ids[at:at] = [IMAGE_TOKEN_ID] * total
            starts[at:at] = [-1] * total
            ends[at:at] = [-1] * total
            runs = [at + sum(counts[:i]) for i in range(len(counts))]
        return ids, starts, ends, runs

    def _image_run(self, count: int) -> int:
        check_image_fits(self.max_len, count)
        return count

    def _truncate(self, enc: Encoded, starts: list[int], spans: list[tuple[int, int]], runs: list[int],
                  counts: Sequence[int]) -> None:
        max_len = self.max_len
        # Position where turn k ends = number of positions whose text starts before the answer's end.
        turn_cuts = [bisect.bisect_left(starts, end) for _, end in spans]
        kept = max((k for k, cut in enumerate(turn_cuts, start=1) if cut <= max_len), default=0)
        if kept:
            cut = turn_cuts[kept - 1]
        else:  # the first turn alone is too long: cut inside it, but never inside an image run
            cut = max_len
            for start, n in zip(runs, counts):
                if start < cut < start + n:
                    cut = start
            enc.cut_inside_turn = True
        enc.dropped_turns = len(spans) - kept
        images = sum(1 for start, n in zip(runs, counts) if start + n <= cut)
        enc.input_ids, enc.labels = enc.input_ids[:cut], enc.labels[:cut]
        enc.num_images = images
        enc.num_visual_tokens = sum(counts[:images])
        enc.num_text_tokens = cut - enc.num_visual_tokens


def _labels(ids: list[int], starts: list[int], ends: list[int], spans: list[tuple[int, int]]) -> list[int]:
    labels = [IGNORE_INDEX] * len(ids)
    if not spans:
        return labels
    j = 0
    for i, (tok, s, e) in enumerate(zip(ids, starts, ends)):
        if tok == IMAGE_TOKEN_ID or s < 0:
            continue
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j == len(spans):
            break
        lo, hi = spans[j]
        if (e > lo if e > s else s >= lo) and s < hi:  # overlap; zero-width tokens need to lie inside
            labels[i] = tok
    return labels
