"""Generation options and the transformers logits processors they map to."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass
class GenerationConfig:
    """How to pick tokens and when to stop. `temperature == 0` is greedy decoding (the default).

    `stop_strings=None` uses the model's template stop strings (accessory: "\\n###"). Generation stops
    when the ids end with EOS or with a stop string's tokens (as a segment, or after other text), and the
    answer is the decoding of the ids before them, the official SPHINX rule; stop strings are also searched
    in the text, except a SentencePiece model's template strings (see `sphinx_x.infer.stopping`).
    `eos_token_id=None` uses the tokenizer's EOS. `min_new_tokens` keeps EOS from being picked before that
    many tokens (as transformers' option does; stop strings still apply: pass `stop_strings=()` as well
    for answers of a fixed length). `seed` makes sampling
    reproducible per sample (each sample draws from its own generator, whatever else shares the batch).
    """

    max_new_tokens: int = 256
    min_new_tokens: int = 0  # EOS is masked out of the logits until this many tokens exist
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    repetition_penalty: float = 1.0
    stop_strings: tuple[str, ...] | None = None
    seed: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be an int >= 1"),
            (isinstance(self.min_new_tokens, int) and self.min_new_tokens >= 0, "min_new_tokens must be an int >= 0"),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an int >= 0 (0 = off)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0 (1 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"generation option: {message}")
        if self.stop_strings is not None:
            if isinstance(self.stop_strings, str):
                self.stop_strings = (self.stop_strings,)
            self.stop_strings = tuple(self.stop_strings)
            if not all(isinstance(s, str) and s for s in self.stop_strings):
                raise ValueError("generation option: stop_strings must be non-empty strings")

    @property
    def do_sample(self) -> bool:
        """Sampling when temperature > 0; temperature 0 is greedy decoding."""
        return self.temperature > 0

    @classmethod
    def from_kwargs(cls, base: GenerationConfig | None = None, **kwargs: Any) -> GenerationConfig:
        """`base` (or the defaults) with `kwargs` replaced; unknown names are refused by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown generation option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return dataclasses.replace(base or cls(), **kwargs)

    def logits_processors(self) -> LogitsProcessorList:
        """The transformers logits processors these options imply (repetition penalty, then, when sampling,
        temperature, top-k and top-p), applied to each step's logits in that order."""
        procs = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample:
            if self.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                procs.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                procs.append(TopPLogitsWarper(self.top_p))
        return procs
