"""Batched generation with the LLM's KV cache: one prefill over the spliced embeddings, then cached steps.

A hand-written loop over `SphinxX.forward` rather than `transformers.generate`: the prefill needs
`inputs_embeds` with visual tokens spliced in, every sample in a batch may carry its own sampling
options, seed, stop strings and token budget, and the server streams text per sample as it grows.
Token selection still uses transformers' logits processors (`GenerationConfig.logits_processors`).

Batches are LEFT padded (every sample's next token sits in the last column) with position ids that run
from 0 over each sample's real tokens, ignoring the padding, so a sample's logits do not depend on what
else shares its batch: batched greedy decoding equals one-at-a-time greedy decoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sphinx_x.canvas import collate_images
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder
from sphinx_x.infer.stopping import StopRule, stop_rule
from sphinx_x.tokenizer import TextDecoder, text_decoder


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (EOS or a stop sequence / string) or "length" (max_new_tokens reached)
    prompt_tokens: int  # visual tokens included
    completion_tokens: int  # tokens generated, the stopping one included
    token_ids: list[int] = field(default_factory=list)


@dataclass
class RowEvent:
    """What changed for one sample after a decode step: new streamable text, and the result once done."""

    index: int
    piece: str
    done: Generation | None = None


class _Row:
    """One sample's ids, stop detection (`sphinx_x.infer.stopping`), answer text and streaming watermark.

    The answer is the decoding of the ids before the stop (`sphinx_x.tokenizer.TextDecoder`: SentencePiece's
    own rules for SentencePiece models, so the dummy-prefix space of the first piece is dropped and nothing
    else is stripped, as in the official chat path). Other tokenizers keep the template cue's space in the
    answer's first token, so their answers are lstripped."""

    def __init__(self, decoder: TextDecoder, prompt_tokens: int, config: GenerationConfig, rule: StopRule):
        self.decoder = decoder
        self.prompt_tokens = prompt_tokens
        self.config = config
        self.rule = rule
        self.tokens: list[int] = []
        self.text = ""  # decoded ids so far (before the stop once finished), not yet post-processed
        self.finish_reason: str | None = None
        self._emitted = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _post_process(self, text: str) -> str:
        return text if self.decoder.sentencepiece else text.lstrip()

    def push(self, token: int) -> None:
        self.tokens.append(token)
        end = self.rule.match(self.tokens)
        if end is not None:
            self.text = self.decoder.decode(self.tokens[:end])
            self.finish_reason = "stop"
            return
        self.text = self.decoder.decode(self.tokens)
        cut = self.rule.text_cut(self.text)
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.config.max_new_tokens:
            self.finish_reason = "length"

    def answer(self) -> str:
        return self._post_process(self.text)

    def take_piece(self) -> str:
        """Text that is safe to show now. Held back until they resolve: trailing ids that may still
        become a stop sequence, a trailing partial UTF-8 character, and a tail that may still grow into
        a text stop string (so no piece of a stop is ever shown)."""
        text = self.text
        if not self.finished:
            held = self.rule.pending_tokens(self.tokens)
            if held:
                text = self.decoder.decode(self.tokens[:-held])
            safe = len(text)
            while safe and text[safe - 1] == "\ufffd":
                safe -= 1
            text = text[: safe - self.rule.pending_chars(text[:safe])]
        shown = self._post_process(text)
        piece = shown[self._emitted:]
        self._emitted = max(self._emitted, len(shown))
        return piece

    def result(self) -> Generation:
        return Generation(self.answer(), self.finish_reason or "length", self.prompt_tokens, len(self.tokens),
                          list(self.tokens))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _left_pad(prompts: Sequence[EncodedPrompt], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p.input_ids) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        n = len(p.input_ids)
        ids[i, width - n:] = torch.tensor(p.input_ids, dtype=torch.long)
        mask[i, width - n:] = 1
    return ids, mask


def _penalty_history(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompt ids the repetition penalty may look at: image and pad positions become the row's last prompt
    token (already present, so the set of penalised tokens is exactly the prompt's text tokens)."""
    last = ids[:, -1:].expand_as(ids)
    return torch.where((ids == IMAGE_TOKEN_ID) | (mask == 0), last, ids)


def _generators(configs: Sequence[GenerationConfig], device: torch.device) -> list[torch.Generator | None]:
    gens: list[torch.Generator | None] = []
    for cfg in configs:
        if not cfg.do_sample:
            gens.append(None)
            continue
        seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,)))
        gens.append(torch.Generator(device=device).manual_seed(seed))
    return gens


def decode_batch(
    model: Any, prompts: Sequence[EncodedPrompt], configs: GenerationConfig | Sequence[GenerationConfig]
) -> Iterator[list[RowEvent]]:
    """Generate for every prompt at once; after each step yield the events of the rows that changed.
    Every row ends with exactly one event whose `done` holds its `Generation`."""
    if not prompts:
        return
    if isinstance(configs, GenerationConfig):
        configs = [configs] * len(prompts)
    if len(configs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(configs)} generation configs")
    tokenizer = model.tokenizer
    template_stops = PromptEncoder.for_model(model).stop_strings
    limit = model.llm.config.max_position_embeddings
    for i, (p, cfg) in enumerate(zip(prompts, configs)):
        if len(p.input_ids) + cfg.max_new_tokens > limit:
            raise ValueError(
                f"prompt {i}: {len(p.input_ids)} prompt tokens + max_new_tokens {cfg.max_new_tokens} exceed the "
                f"model's context of {limit} positions"
            )
    decoder = text_decoder(tokenizer)
    rows = [
        _Row(decoder, len(p.input_ids), cfg, stop_rule(
            tokenizer, cfg.stop_strings if cfg.stop_strings is not None else template_stops, template_stops,
            cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id))
        for p, cfg in zip(prompts, configs)
    ]
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = _left_pad(prompts, pad_id)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    history = _penalty_history(ids, mask).to(device)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    images = collate_images([v for p in prompts for v in p.images], model.config.vision)
    processors = [cfg.logits_processors() for cfg in configs]
    generators = _generators(configs, device)

    with torch.inference_mode():
        embeds = model.embed_inputs(ids, images.to(device) if images is not None else None)
        out = model(ids, attention_mask=mask, position_ids=positions, inputs_embeds=embeds, use_cache=True)
        next_pos = positions[:, -1:] + 1
        while True:
            scores = out.logits[:, -1].float()
            tokens = []
            for i, row in enumerate(rows):
                if row.finished:
                    tokens.append(pad_id)
                    continue
                s = processors[i](history[i : i + 1], scores[i : i + 1]) if processors[i] else scores[i : i + 1]
                if generators[i] is None:
                    tokens.append(int(s.argmax(-1)))
                else:
                    probs = torch.softmax(s, dim=-1)
                    tokens.append(int(torch.multinomial(probs, 1, generator=generators[i])))
            events = []
            for i, (row, tok) in enumerate(zip(rows, tokens)):
                if row.finished:
                    continue
                row.push(tok)
                piece = row.take_piece()
                done = row.result() if row.finished else None
                if piece or done:
                    events.append(RowEvent(i, piece, done))
            yield events
            if all(r.finished for r in rows):
                return
            step = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
            history = torch.cat([history, step], dim=1)
            mask = torch.cat([mask, torch.ones_like(step)], dim=1)
            out = model(step, attention_mask=mask, position_ids=next_pos, cache=out.cache, use_cache=True)
            next_pos = next_pos + 1


def generate_batch(
    model: Any, prompts: Sequence[EncodedPrompt], configs: GenerationConfig | Sequence[GenerationConfig]
) -> list[Generation]:
    results: list[Generation | None] = [None] * len(prompts)
    for events in decode_batch(model, prompts, configs):
        for ev in events:
            if ev.done is not None:
                results[ev.index] = ev.done
    return results  # type: ignore[return-value]
