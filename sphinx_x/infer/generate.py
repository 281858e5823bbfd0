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

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sphinx_x.canvas import collate_images
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.infer.detok import text_stream
from sphinx_x.infer.fastpath import LeanLLM
from sphinx_x.infer.options import GenerationConfig
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder
from sphinx_x.infer.stopping import StopRule, stop_rule
from sphinx_x.model import SphinxX
from sphinx_x.tokenizer import TextDecoder, text_decoder


@dataclass
class Generation:
    """One answer: its text (stop string / EOS not included), why it ended, token counts, generated ids."""

    text: str
    finish_reason: str  # "stop" (EOS or a stop sequence / string) or "length" (max_new_tokens reached)
    prompt_tokens: int  # visual tokens included
    completion_tokens: int  # tokens generated, the stopping one included
    token_ids: list[int] = field(default_factory=list)


@dataclass
class RowEvent:
    """One sample's decode step: its new streamable text (may be ""), and the result once done."""

    index: int
    piece: str
    done: Generation | None = None


class _Row:
    """One sample's ids, stop detection (`sphinx_x.infer.stopping`), answer text and streaming watermark.

    The answer is the decoding of the ids before the stop (`sphinx_x.tokenizer.TextDecoder`: SentencePiece's
    own rules for SentencePiece models, so the dummy-prefix space of the first piece is dropped and nothing
    else is stripped, as in the official chat path). Other tokenizers keep the template cue's space in the
    answer's first token, so their answers are lstripped. The text grows one id at a time
    (`sphinx_x.infer.detok`), equal at every step to decoding all ids, and text stop strings are searched
    only where the text changed (plus the length of a stop string minus one before it)."""

    def __init__(self, decoder: TextDecoder, prompt_tokens: int, config: GenerationConfig, rule: StopRule,
                 eos: int | None = None):
        self.decoder = decoder
        self.eos = eos
        self.prompt_tokens = prompt_tokens
        self.config = config
        self.rule = rule
        self.stream = text_stream(decoder)
        self.tokens = self.stream.ids
        self.text = ""  # decoded ids so far (before the stop once finished), not yet post-processed
        self.finish_reason: str | None = None
        self._emitted = 0
        self._longest_text_stop = max((len(t) for t in rule.texts), default=0)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _post_process(self, text: str) -> str:
        return text if self.decoder.sentencepiece else text.lstrip()

    def push(self, token: int) -> None:
        searched = self.stream.stable  # text before this index cannot change: it was searched already
        self.stream.push(token)
        end = self.rule.match(self.tokens)
        if end is not None:
            self.text = self.stream.prefix_text(end)
            self.finish_reason = "stop"
            return
        self.text = self.stream.text
        cut = self.rule.text_cut(self.text, max(0, searched - self._longest_text_stop + 1))
        if cut >= 0:
            self.text = self.text[:cut]
            self.finish_reason = "stop"
        elif len(self.tokens) >= self.config.max_new_tokens:
            self.finish_reason = "length"

    def min_new_tokens_eos(self) -> int | None:
        """The EOS id to mask out of this step's logits while fewer than `min_new_tokens` ids exist."""
        if self.finished or self.eos is None or self.eos < 0 or len(self.tokens) >= self.config.min_new_tokens:
            return None
        return self.eos

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
                text = self.stream.prefix_text(len(self.tokens) - held)
            safe = len(text)
            while safe and text[safe - 1] == "\ufffd":
                safe -= 1
            text = text[: safe - self.rule.pending_chars(text[:safe])]
        if self.decoder.sentencepiece:
            piece = text[self._emitted:]
            self._emitted = max(self._emitted, len(text))
            return piece
        shown = text.lstrip()
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


def _last_logits_kwargs(model: Any) -> dict[str, int]:
    """`logits_to_keep=1` where the model's forward takes it (SphinxX does): the loop only reads the last
    position's logits, so the LM head over the rest of the prompt would be wasted work."""
    forward = getattr(type(model), "forward", None)
    try:
        return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(forward).parameters else {}
    except (TypeError, ValueError):
        return {}


def _pick_tokens(scores: torch.Tensor, rows: list[_Row], history: torch.Tensor | None, processors: list,
                 generators: list, pad_id: int) -> list[int]:
    """One next token per row (pad for finished rows): greedy rows without processors share one argmax."""
    for i, row in enumerate(rows):
        eos = row.min_new_tokens_eos()
        if eos is not None:
            scores[i, eos] = float("-inf")
    greedy = scores.argmax(-1).tolist()
    tokens = []
    for i, row in enumerate(rows):
        if row.finished:
            tokens.append(pad_id)
        elif not processors[i] and generators[i] is None:
            tokens.append(greedy[i])
        else:
            s = processors[i](history[i : i + 1], scores[i : i + 1]) if processors[i] else scores[i : i + 1]
            if generators[i] is None:
                tokens.append(int(s.argmax(-1)))
            else:
                tokens.append(int(torch.multinomial(torch.softmax(s, dim=-1), 1, generator=generators[i])))
    return tokens


def decode_batch(
    model: Any, prompts: Sequence[EncodedPrompt], configs: GenerationConfig | Sequence[GenerationConfig]
) -> Iterator[list[RowEvent]]:
    """Generate for every prompt at once; after each step yield one event per row that took a token (its
    piece may be "": text held back, or none). A row's first event marks its first token; every row ends
    with exactly one event whose `done` holds its `Generation`."""
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
    rows = []
    for p, cfg in zip(prompts, configs):
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id
        stops = cfg.stop_strings if cfg.stop_strings is not None else template_stops
        rows.append(_Row(decoder, len(p.input_ids), cfg, stop_rule(tokenizer, stops, template_stops, eos), eos))
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = _left_pad(prompts, pad_id)
    width = ids.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    processors = [cfg.logits_processors() for cfg in configs]
    # the ids a repetition penalty looks at; kept only when some row has a processor
    history = _penalty_history(ids, mask).to(device) if any(processors) else None
    # the attention mask of every step, written as the steps go (a view of its first columns is passed)
    full_mask = torch.ones((len(prompts), width + max(c.max_new_tokens for c in configs)), dtype=torch.long)
    full_mask[:, :width] = mask
    ids, full_mask, positions = ids.to(device), full_mask.to(device), positions.to(device)
    images = collate_images([v for p in prompts for v in p.images], model.config.vision)
    generators = _generators(configs, device)
    last_only = _last_logits_kwargs(model)

    step = _llm_step(model, full_mask, has_padding=bool((mask == 0).any()), last_only=last_only)

    # inference mode is entered around each computation, never held across a `yield`: it is thread-local,
    # and a caller may resume this generator on another thread (Gradio runs each step in a worker pool),
    # where the cache (inference tensors) could not be written outside it
    with torch.inference_mode():
        embeds = model.embed_inputs(ids, images.to(device) if images is not None else None)
        logits, cache = step(ids, embeds, positions, None, width)
        next_pos = positions[:, -1:] + 1
    step_no = 0
    while True:
        with torch.inference_mode():
            tokens = _pick_tokens(logits[:, -1].float(), rows, history, processors, generators, pad_id)
        events = []
        for i, (row, tok) in enumerate(zip(rows, tokens)):
            if row.finished:
                continue
            row.push(tok)
            piece = row.take_piece()
            events.append(RowEvent(i, piece, row.result() if row.finished else None))
        yield events
        if all(r.finished for r in rows):
            return
        with torch.inference_mode():
            new_ids = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
            if history is not None:
                history = torch.cat([history, new_ids], dim=1)
            step_no += 1
            logits, cache = step(new_ids, None, next_pos, cache, width + step_no)
            next_pos = next_pos + 1


def _llm_step(model: Any, full_mask: torch.Tensor, has_padding: bool, last_only: dict):
    """`step(ids, embeds, positions, cache, seen) -> (logits, cache)`: one LLM call over the new positions
    (`embeds`, or the embeddings of `ids` when None), `seen` positions in all. A plain Llama LLM takes
    `sphinx_x.infer.fastpath.LeanLLM` (the same weights without the model-level wrappers, a KV cache of the
    prompt plus the answer budget, a packed prefill when rows are padded); any other
    model goes through its own forward with the 2-D attention mask."""
    llm = getattr(model, "llm", None)
    if getattr(type(model), "forward", None) is SphinxX.forward and LeanLLM.supports(llm):
        lean = LeanLLM(llm)
        keys = full_mask.bool() if has_padding else None

        def lean_step(ids, embeds, positions, cache, seen):
            cache = cache if cache is not None else lean.new_cache(full_mask.shape[0], full_mask.shape[1])
            embeds = embeds if embeds is not None else lean.embed(ids)
            return lean(embeds, positions, cache, None if keys is None else keys[:, :seen]), cache

        return lean_step

    def model_step(ids, embeds, positions, cache, seen):
        out = model(ids, attention_mask=full_mask[:, :seen], position_ids=positions, inputs_embeds=embeds,
                    cache=cache, use_cache=True, **last_only)
        return out.logits, out.cache

    return model_step


def compile_for_generation(model: Any, **compile_kwargs: Any) -> Any:
    """`torch.compile` the LLM's forward (dynamic shapes: one graph serves every prompt length) for the
    decode loop; fuses the many small ops of each step. The first calls compile (minutes on a CPU), so it
    pays off for a server or a long batch job, not for one answer; benchmarks/bench_vs_llava_next.py
    --compile measures it. A compiled model decodes through its (compiled) forward, not the eager lean step
    of sphinx_x/infer/fastpath.py."""
    model.llm.forward = torch.compile(model.llm.forward, dynamic=True, **compile_kwargs)
    return model


def generate_batch(
    model: Any, prompts: Sequence[EncodedPrompt], configs: GenerationConfig | Sequence[GenerationConfig]
) -> list[Generation]:
    """Decode every encoded prompt (`sphinx_x.infer.chat.encode`) in one batch and return their answers in
    prompt order; `configs` is one GenerationConfig for all or one per prompt."""
    results: list[Generation | None] = [None] * len(prompts)
    for events in decode_batch(model, prompts, configs):
        for ev in events:
            if ev.done is not None:
                results[ev.index] = ev.done
    return results  # type: ignore[return-value]
