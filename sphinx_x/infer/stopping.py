"""When a generated answer ends, and where it is cut: the rule of the official SPHINX chat path.

LLaMA2-Accessory's `MetaModel.generate` stops on token ids, not on text: a sample is done when its ids end
with one of these sequences, tried in this order,
  1. [eos];
  2. for each stop string s, its tokens as a segment of its own ("encode_segment": `encode(s)` for
     SentencePiece, which puts its dummy-prefix "\u2581" first, e.g. "\\n###" -> [\u2581, <0x0A>, ##, #]);
  3. for each stop string s, its tokens as they appear after other text ("encode_wo_prefix_space":
     `encode("@" + s)` minus `encode("@")`, e.g. [<0x0A>, ##, #]);
and the answer is the decoding of the ids before the first id of the matched sequence (so a space
written as its own "\u2581" right before "\\n###" goes with it). `token_forms` derives 2. and 3. the same
way, including the probe for tokenizers that need an explicit space before a segment. Only generated ids
are matched (the official window may reach back into the prompt, which cannot complete a stop when the
prompt ends with the template's "Assistant:" cue).

Text search is the fallback: a stop string is also looked for in the decoded text when the tokenizer is
not a SentencePiece one (a byte-level BPE spells a string in many ways, merging characters with their
neighbours, so the text is the reliable signal there), when it has no token form, and always for stop
strings a caller adds (an API `stop`, an evaluation's `until`), which are text by contract. A
SentencePiece tokenizer's template stop strings are matched by tokens only, as the official loop does: it
writes on past "\\n###" spelled by other pieces.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sphinx_x.tokenizer import text_decoder

# Characters that the official tokenizer wrapper puts before a stop string to see its mid-text tokens;
# each is tried in turn until one is not merged into the string.
_PROBE_PREFIXES = ("@", "\n", "\\", "=", ">", "`")


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def needs_space_before_segment(tokenizer: Any) -> bool:
    """True for tokenizers that do not act as if a segment started after a space (SentencePiece does; a
    byte-level BPE without a prefix space does not): the official probe on "Hi my darling"."""
    whole, tail = _encode(tokenizer, "Hi my darling"), _encode(tokenizer, "my darling")
    return whole[-len(tail):] != tail


def token_forms(tokenizer: Any, stop: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The stop string's ids as a segment of its own and as they appear after other text (either may be
    empty: no mid-text form is found when every probe prefix merges into the string)."""
    need_space = needs_space_before_segment(tokenizer)
    segment = stop.lstrip(" ")
    alone = _encode(tokenizer, " " + segment if need_space else segment)
    after_text: list[int] = []
    if need_space:
        after_text = _encode(tokenizer, stop)
    else:
        for prefix in _PROBE_PREFIXES:
            head, joined = _encode(tokenizer, prefix), _encode(tokenizer, prefix + stop)
            if joined[: len(head)] == head:
                after_text = joined[len(head):]
                break
    return tuple(alone), tuple(after_text)


@dataclass(frozen=True)
class StopRule:
    """Token sequences (matched at the end of the generated ids, in order) and text stop strings."""

    sequences: tuple[tuple[int, ...], ...]
    texts: tuple[str, ...] = ()

    def match(self, ids: Sequence[int]) -> int | None:
        """Where the answer ends if `ids` end with a stop sequence (the first in order), else None."""
        for seq in self.sequences:
            n = len(seq)
            if len(ids) >= n and tuple(ids[-n:]) == seq:
                return len(ids) - n
        return None

    def pending_tokens(self, ids: Sequence[int]) -> int:
        """How many trailing ids may still become a stop sequence (kept out of streamed text)."""
        best = 0
        for seq in self.sequences:
            for k in range(min(len(seq) - 1, len(ids)), best, -1):
                if tuple(ids[-k:]) == seq[:k]:
                    best = k
                    break
        return best

    def text_cut(self, text: str, start: int = 0) -> int:
        """Index of the first text stop string in `text` (searched from `start`), or -1."""
        return min((i for i in (text.find(s, start) for s in self.texts) if i >= 0), default=-1)

    def pending_chars(self, text: str) -> int:
        """How many trailing characters may still grow into a text stop string."""
        return max((k for s in self.texts for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


def stop_rule(tokenizer: Any, stop_strings: Sequence[str], template_stops: Sequence[str], eos: int | None
              ) -> StopRule:
    """The rule for one sample: [eos], the segment form of every stop string, their mid-text forms, and
    the text fallback (see the module docstring for which strings are also searched as text). Cached per
    tokenizer."""
    cache = _RULES.setdefault(tokenizer, {})
    key = (tuple(stop_strings), tuple(template_stops), eos)
    if key not in cache:
        forms = {s: token_forms(tokenizer, s) for s in key[0]}
        sequences = [(eos,)] if eos is not None else []
        sequences += [alone for alone, _ in forms.values() if alone]
        sequences += [after for _, after in forms.values() if after]
        by_tokens_only = text_decoder(tokenizer).sentencepiece
        texts = tuple(s for s in key[0] if not any(forms[s]) or not by_tokens_only or s not in key[1])
        cache[key] = StopRule(tuple(dict.fromkeys(sequences)), texts)
    return cache[key]


_RULES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
