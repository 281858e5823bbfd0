"""What `sphinx-x pretrain-llm` trains nano's LLM on: a seeded stream of `LlmSample`s.

A sample is a token sequence in nano's dialogue template (rendered and labelled by the project's
`DialogueEncoder`, so the LLM sees exactly the prompts of the one-stage run and of synth-bench) plus
optional *slots*. A slot `(position, token_ids)` says that the input embedding at `position` is the sum of
the word embeddings of `token_ids`, a bag-of-words soft token; slots sit right after BOS, where the one-stage
run puts an image's tokens, so they stand in for image tokens that say what is in the picture. The training
loop (sphinx_x/standins/llm_pretrain.py, `slot_embeddings`) embeds `input_ids`, then overwrites the slot
positions. Labels follow transformers: aligned with `input_ids`, IGNORE_INDEX where nothing is supervised
(slots, prompts), the token itself on the answers.

Kinds of samples (`kind`, which the held-out evaluation scores separately):
  - "text":       the synthetic corpus's text-only dialogues (sphinx_x/data/synth/text.py), 3-5 turns of
                  facts, arithmetic and code tracing, every answer supervised;
  - "arithmetic": one synth-bench-style arithmetic question (held-out scoring); training draws with
                  probability `arithmetic_share` are arithmetic *drills*, ARITHMETIC_DRILL_TURNS such questions
                  in one dialogue (the system prompt paid once), next to the arithmetic turns of the text
                  dialogues;
  - "scene":      `scene_samples`, a question about objects given as slots (the recipe's knob for teaching
                  the LLM to look a slot up by content before it ever sees an image).

Every sample is a pure function of (seed, split, index): `sample_rng`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.data.encode import DialogueEncoder, SampleRejected
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES
from sphinx_x.data.synth.text import arithmetic, generate_text
from sphinx_x.standins.settings import check_shares

KINDS = ("text", "arithmetic", "scene")
MAX_LEN = 512  # as the nano recipe (configs/nano.yaml data.max_len)
ARITHMETIC_DRILL_TURNS = (4, 8)  # questions per drill dialogue (uniform, inclusive)


@dataclass
class LlmSample:
    """One training sequence: ids, labels (IGNORE_INDEX = -100 where unsupervised) and bag-of-words slots
    `(position, token_ids)` whose input embedding is the sum of those tokens' embeddings."""

    input_ids: list[int]
    labels: list[int]
    slots: list[tuple[int, list[int]]] = field(default_factory=list)
    kind: str = "text"

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.labels):
            raise ValueError(f"input_ids ({len(self.input_ids)}) and labels ({len(self.labels)}) differ in length")
        for pos, ids in self.slots:
            if not 0 <= pos < len(self.input_ids) or not ids:
                raise ValueError(f"slot at position {pos} with tokens {ids}: outside the sequence or empty")


def sample_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of sample `index` of `split` (a string seed is hashed with SHA-512: no PYTHONHASHSEED)."""
    return random.Random(f"sphinx-x-llm:{seed}:{split}:{index}")


@lru_cache(maxsize=8)
def encoder_for(tokenizer: Any, template: str = "accessory", max_len: int = MAX_LEN) -> DialogueEncoder:
    """The DialogueEncoder of (tokenizer, template), built once (it copies the tokenizer's backend)."""
    return DialogueEncoder(tokenizer, template, max_len)


def _messages(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    out = []
    for q, a in turns:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def dialogue_sample(tokenizer: Any, template: str, turns: list[tuple[str, str]], kind: str,
                    slot_tokens: list[list[int]] = ()) -> LlmSample:
    """`turns` (question, answer) rendered in `template` with every answer supervised; `slot_tokens` (one
    token-id list per slot) occupy the positions right after BOS, where the encoder puts an image's tokens."""
    encoder = encoder_for(tokenizer, template)
    enc = encoder.encode(_messages(turns), [len(slot_tokens)] if slot_tokens else ())
    positions = [i for i, t in enumerate(enc.input_ids) if t == IMAGE_TOKEN_ID]
    filler = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # overwritten by the slot sums
    ids = [filler if t == IMAGE_TOKEN_ID else t for t in enc.input_ids]
    return LlmSample(ids, list(enc.labels), list(zip(positions, [list(s) for s in slot_tokens])), kind)


def word_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` as it appears mid-sentence (with its leading space), without BOS."""
    return tokenizer(" " + text, add_special_tokens=False)["input_ids"]


# ---- the kinds -----------------------------------------------------------------------------------------
def text_samples(rng: random.Random, tokenizer: Any, template: str = "accessory") -> list[LlmSample]:
    """One of the synthetic corpus's text-only dialogues (the corpus's "text" domain)."""
    return [dialogue_sample(tokenizer, template, generate_text(rng).turns, "text")]


def arithmetic_samples(rng: random.Random, tokenizer: Any, template: str = "accessory") -> list[LlmSample]:
    """One synth-bench arithmetic question ("What is a + b?"), its answer supervised."""
    return [dialogue_sample(tokenizer, template, generate_text(rng, "arithmetic").turns, "arithmetic")]


def arithmetic_drill_samples(rng: random.Random, tokenizer: Any, template: str = "accessory") -> list[LlmSample]:
    """One dialogue of ARITHMETIC_DRILL_TURNS synth-bench arithmetic questions, every answer supervised."""
    turns = [arithmetic(rng) for _ in range(rng.randint(*ARITHMETIC_DRILL_TURNS))]
    return [dialogue_sample(tokenizer, template, turns, "arithmetic")]


def scene_samples(rng: random.Random, tokenizer: Any, template: str = "accessory") -> list[LlmSample]:
    """A scene of 2-4 objects with distinct colours and shapes, one slot per object holding the tokens of
    "<colour> <shape>" (in a random order), and the question "What color is the <shape>?" about one of them,
    its colour supervised. The LLM can only answer by finding the slot that holds the named shape and
    reading the colour beside it: the lookup by content an image's tokens need later."""
    n = rng.randint(2, 4)
    objects = list(zip(rng.sample(list(COLORS), n), rng.sample(SHAPES, n)))
    slots = [word_ids(tokenizer, f"{color} {shape}") for color, shape in objects]
    color, shape = rng.choice(objects)
    return [dialogue_sample(tokenizer, template, [(f"What color is the {shape}?", color)], "scene", slots)]


MAKERS = {"text": text_samples, "arithmetic": arithmetic_samples, "scene": scene_samples}


# ---- streams -------------------------------------------------------------------------------------------
def sample_stream(tokenizer: Any, seed: int = 0, scene_share: float = 0.5, template: str = "accessory",
                  split: str = "train", arithmetic_share: float = 0.0) -> Iterator[LlmSample]:
    """Endless training samples: each draw is scene samples with probability `scene_share`, an arithmetic
    drill with probability `arithmetic_share`, else a text dialogue. Deterministic in (seed, split); with
    `arithmetic_share` 0 the stream is the one of the earlier two-kind version."""
    check_shares(scene_share, arithmetic_share)
    index = 0
    while True:
        rng = sample_rng(seed, split, index)
        draw = rng.random()
        make = (scene_samples if draw < scene_share
                else arithmetic_drill_samples if draw < scene_share + arithmetic_share else text_samples)
        try:
            yield from make(rng, tokenizer, template)
        except SampleRejected:  # nothing supervised left after truncation: cannot happen at these lengths
            pass
        index += 1


def held_out(tokenizer: Any, seed: int = 0, per_kind: int = 200, template: str = "accessory",
             kinds: tuple[str, ...] = KINDS) -> dict[str, list[LlmSample]]:
    """A fixed evaluation set per kind, drawn from its own streams (split "heldout-<kind>")."""
    return {kind: [s for i in range(per_kind) for s in MAKERS[kind](sample_rng(seed, f"heldout-{kind}", i),
                                                                    tokenizer, template)]
            for kind in kinds}
