"""The rows a continuous-batching engine decodes together (`sphinx_x/serve/continuous.py`): one left-padded
batch whose rows can leave after any step and be joined by newly prefilled rows.

The batch keeps what `sphinx_x/infer/generate.py`'s `decode_batch` keeps for a fixed batch (the same `_Row`
stop and text logic, the same token picking, position ids that count only a row's real tokens), plus:
- `mask` and `history` (the ids a repetition penalty sees) have one column per cached position and one more
  for the `pending` token, the token each row feeds at its next step;
- `extend(other)` merges a freshly prefilled batch: both are LEFT padded to the same width (zero keys and
  values in the KV cache, 0 in the attention mask), so every row's next token still sits in the last
  column, then concatenated along the batch dimension;
- `keep(indices)` drops rows (finished or cancelled) with the cache's own `batch_select_indices`, then cuts
  the leading columns that are padding in every remaining row, so the cache does not grow with the
  history of rows that left.
Padded columns are masked out of attention and position ids ignore them, so a row's logits do not depend
on what shares its batch: greedy outputs equal one-at-a-time generation (tests/test_serve_continuous.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from sphinx_x.canvas import collate_images
from sphinx_x.infer.generate import (
    Generation,
    _generators,
    _last_logits_kwargs,
    _left_pad,
    _model_device,
    _penalty_history,
    _pick_tokens,
    _Row,
)
from sphinx_x.infer.prompts import PromptEncoder
from sphinx_x.infer.stopping import stop_rule
from sphinx_x.serve.engine import Job
from sphinx_x.tokenizer import text_decoder

Event = tuple[Job, str, Generation | None]  # (job, piece, result once the job is done)


def check_fits(model: Any, job: Job) -> None:
    """ValueError when the job's prompt plus `max_new_tokens` exceed the model's context."""
    limit = model.llm.config.max_position_embeddings
    n = len(job.prompt.input_ids)
    if n + job.config.max_new_tokens > limit:
        raise ValueError(f"{n} prompt tokens + max_new_tokens {job.config.max_new_tokens} exceed the model's "
                         f"context of {limit} positions")


def _pad_left(t: torch.Tensor, width: int, dim: int, fill: torch.Tensor | int = 0) -> torch.Tensor:
    """`t` with columns added in front along `dim` up to `width`, filled with `fill` (a value, or a tensor that
    broadcasts to the new columns)."""
    extra = width - t.shape[dim]
    if extra == 0:
        return t
    if isinstance(fill, int):
        pads = [0, 0] * (t.dim() - 1 - dim) + [extra, 0]
        return F.pad(t, pads, value=fill)
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([fill.expand(shape), t], dim=dim)


class RunningBatch:
    """Rows in flight. Build it empty, `extend` it with `RunningBatch.prefill(...)`, `step()` it, `keep` rows."""

    def __init__(self, model: Any):
        self.model = model
        self.device = _model_device(model)
        tokenizer = model.tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._last_only = _last_logits_kwargs(model)
        self._clear()

    def _clear(self) -> None:
        self.jobs: list[Job] = []
        self.rows: list[_Row] = []
        self.processors: list = []
        self.generators: list = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, cached + 1) long
        self.history: torch.Tensor | None = None  # (rows, cached + 1) long
        self.pending: torch.Tensor | None = None  # (rows, 1): each row's next input token
        self.next_pos: torch.Tensor | None = None  # (rows, 1): its position id

    def __len__(self) -> int:
        return len(self.jobs)

    @property
    def width(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]

    # ---- building ------------------------------------------------------------------------------
    def _new_row(self, job: Job) -> _Row:
        tokenizer, cfg = self.model.tokenizer, job.config
        template_stops = PromptEncoder.for_model(self.model).stop_strings
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else tokenizer.eos_token_id
        stops = cfg.stop_strings if cfg.stop_strings is not None else template_stops
        rule = stop_rule(tokenizer, stops, template_stops, eos)
        return _Row(text_decoder(tokenizer), len(job.prompt.input_ids), cfg, rule, eos)

    @classmethod
    def prefill(cls, model: Any, jobs: Sequence[Job]) -> tuple[RunningBatch, list[Event]]:
        """Run the prompts of `jobs` (one left-padded forward, images included) and pick each one's first
        token; returns the new batch (finished rows still in it) and one event per job."""
        batch = cls(model)
        prompts = [j.prompt for j in jobs]
        ids, mask = _left_pad(prompts, batch.pad_id)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        history = _penalty_history(ids, mask)
        images = collate_images([v for p in prompts for v in p.images], model.config.vision)
        ids, mask, positions = ids.to(batch.device), mask.to(batch.device), positions.to(batch.device)
        batch.jobs = list(jobs)
        batch.rows = [batch._new_row(j) for j in jobs]
        batch.processors = [j.config.logits_processors() for j in jobs]
        batch.generators = _generators([j.config for j in jobs], batch.device)
        batch.mask, batch.history = mask, history.to(batch.device)
        batch.next_pos = positions[:, -1:] + 1
        with torch.inference_mode():
            embeds = model.embed_inputs(ids, images.to(batch.device) if images is not None else None)
            out = model(ids, attention_mask=mask, position_ids=positions, inputs_embeds=embeds, use_cache=True,
                        **batch._last_only)
            batch.cache = out.cache
            for layer in batch.cache.layers:  # extend/keep edit the tensors of full-attention layers only
                if type(layer) is not DynamicLayer:
                    raise TypeError(f"continuous batching needs full-attention DynamicLayer caches, got "
                                    f"{type(layer).__name__}; serve this model with the static engine")
            return batch, batch._pick(out.logits[:, -1])

    def _pick(self, logits: torch.Tensor) -> list[Event]:
        tokens = _pick_tokens(logits.float(), self.rows, self.history, self.processors, self.generators,
                              self.pad_id)
        events = []
        for job, row, tok in zip(self.jobs, self.rows, tokens):
            row.push(tok)
            events.append((job, row.take_piece(), row.result() if row.finished else None))
        self.pending = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        self.mask = torch.cat([self.mask, torch.ones_like(self.pending)], dim=1)
        self.history = torch.cat([self.history, self.pending], dim=1)
        return events

    # ---- decoding ------------------------------------------------------------------------------
    def step(self) -> list[Event]:
        """Feed every row its pending token and pick the next; one event per row."""
        with torch.inference_mode():
            out = self.model(self.pending, attention_mask=self.mask, position_ids=self.next_pos, cache=self.cache,
                             use_cache=True, **self._last_only)
            self.cache = out.cache
            self.next_pos = self.next_pos + 1
            return self._pick(out.logits[:, -1])

    # ---- joining and leaving -------------------------------------------------------------------
    def extend(self, other: RunningBatch) -> None:
        """Append `other`'s rows (both batches are between steps: each row has a pending token)."""
        if not other.jobs:
            return
        if not self.jobs:
            self.__dict__.update(other.__dict__)
            return
        width = max(self.width, other.width)
        self.mask = torch.cat([_pad_left(self.mask, width, 1), _pad_left(other.mask, width, 1)])
        self.history = torch.cat([_pad_left(self.history, width, 1, self.history[:, :1]),
                                  _pad_left(other.history, width, 1, other.history[:, :1])])
        for mine, theirs in zip(self.cache.layers, other.cache.layers):  # keys, values: (rows, heads, cached, dim)
            mine.keys = torch.cat([_pad_left(mine.keys, width - 1, 2), _pad_left(theirs.keys, width - 1, 2)])
            mine.values = torch.cat([_pad_left(mine.values, width - 1, 2), _pad_left(theirs.values, width - 1, 2)])
        self.pending = torch.cat([self.pending, other.pending])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        for name in ("jobs", "rows", "processors", "generators"):
            getattr(self, name).extend(getattr(other, name))

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the rows at `indices` (in that order), then cut columns that are padding in every row."""
        if len(indices) == len(self.jobs):
            return
        if not indices:
            self._clear()  # empty: the next extend takes the new rows as they are
            return
        idx = torch.tensor(list(indices), dtype=torch.long, device=self.device)
        self.cache.batch_select_indices(idx)
        self.mask, self.history = self.mask[idx], self.history[idx]
        self.pending, self.next_pos = self.pending[idx], self.next_pos[idx]
        for name in ("jobs", "rows", "processors", "generators"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in indices])
        lead = int((self.mask.sum(0) == 0).long().cumprod(0).sum())  # leading all-padding columns
        if lead:
            self.mask, self.history = self.mask[:, lead:], self.history[:, lead:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
