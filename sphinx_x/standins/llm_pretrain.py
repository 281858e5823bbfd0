"""Pretraining nano's LLM alone: the embedded stand-in for the paper's pretrained LLM.

SPHINX-X starts its one-stage run from a pretrained LLM (TinyLlama, LLaMA2, InternLM2, Mixtral); offline,
`nano` has none, so this trains the nano preset's LlamaForCausalLM from its random init on the samples of
sphinx_x/standins/llm_data.py (text dialogues in nano's template, plus bag-of-words "slot" scenes), and
writes a plain transformers model directory that a model config names as `llm.path`, the same path that
loads real pretrained LLMs (sphinx_x/llm.py `_load_local`).

The loop is plain on purpose: AdamW, the project's warm-up + cosine schedule (sphinx_x/train/schedule.py),
gradient clipping, the mean token cross-entropy over a batch's supervised tokens. The held-out evaluation
asks every answer under teacher forcing: an answer is right when the argmax at each of its positions is
its token, which is exactly when greedy decoding would write it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sphinx_x.config import SphinxXConfig
from sphinx_x.constants import IGNORE_INDEX
from sphinx_x.fileio import atomic_directory
from sphinx_x.standins.llm_data import KINDS, LlmSample, held_out, sample_stream
from sphinx_x.standins.settings import LlmPretrainConfig

SUMMARY_NAME = "pretrain_llm.json"  # what the run did and scored, next to the weights
LOG_EVERY = 10  # steps per logged (mean) loss


@dataclass
class LlmPretrainResult:
    steps: int
    seconds: float
    accuracy: dict[str, float]  # kind -> held-out share of answers right
    losses: list[float] = field(default_factory=list)  # mean training loss of every LOG_EVERY steps


# ---- batches -------------------------------------------------------------------------------------------
def collate(samples: list[LlmSample], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `labels` (IGNORE_INDEX on padding), `attention_mask` and the slots as
    (row, position, token_ids) triples."""
    length = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    slots = []
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        ids[row, :n] = torch.tensor(s.input_ids)
        labels[row, :n] = torch.tensor(s.labels)
        mask[row, :n] = 1
        slots += [(row, pos, tokens) for pos, tokens in s.slots]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "slots": slots}


def slot_embeddings(embed: nn.Embedding, input_ids: torch.Tensor,
                    slots: list[tuple[int, int, list[int]]]) -> torch.Tensor:
    """`embed(input_ids)` with every slot (row, position, token_ids) replaced by the sum of the embeddings
    of its token_ids (gradients reach those embeddings)."""
    embeds = embed(input_ids)
    if not slots:
        return embeds
    device = input_ids.device
    members = torch.tensor([t for _, _, tokens in slots for t in tokens], device=device)
    owner = torch.tensor([k for k, (_, _, tokens) in enumerate(slots) for _ in tokens], device=device)
    sums = torch.zeros(len(slots), embeds.shape[-1], dtype=embeds.dtype, device=device)
    sums = sums.index_add(0, owner, embed(members))
    rows = torch.tensor([r for r, _, _ in slots], device=device)
    cols = torch.tensor([p for _, p, _ in slots], device=device)
    return embeds.index_put((rows, cols), sums)


def forward_logits(llm: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    ids = batch["input_ids"].to(device)
    embeds = slot_embeddings(llm.get_input_embeddings(), ids, batch["slots"])
    return llm(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device)).logits


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next token over the supervised positions (labels aligned with the ids)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                           ignore_index=IGNORE_INDEX)


# ---- evaluation ----------------------------------------------------------------------------------------
def _answer_runs(labels: list[int]) -> list[list[int]]:
    """Positions of each answer: the maximal runs of supervised labels."""
    runs: list[list[int]] = []
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            continue
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


@torch.no_grad()
def answer_accuracy(llm: nn.Module, samples: list[LlmSample], pad_id: int, batch_size: int = 32) -> float:
    """Share of the answers in `samples` that greedy decoding would write exactly (teacher forcing)."""
    was_training = llm.training
    llm.eval()
    device = next(llm.parameters()).device
    right = total = 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        predicted = forward_logits(llm, collate(chunk, pad_id), device).argmax(-1).cpu()
        for row, s in enumerate(chunk):
            for run in _answer_runs(s.labels):
                total += 1
                right += all(int(predicted[row, p - 1]) == s.labels[p] for p in run)
    llm.train(was_training)
    return right / max(total, 1)


# ---- the run -------------------------------------------------------------------------------------------
def build_nano_llm(preset: str | SphinxXConfig = "nano", seed: int = 0, device: str = "cpu") -> nn.Module:
    """The preset's LLM (its dims only, no `llm.path`) from its random init under `seed`."""
    from sphinx_x.llm import build_llm

    config = preset if isinstance(preset, SphinxXConfig) else SphinxXConfig.resolve(preset)
    torch.manual_seed(seed)
    return build_llm(dataclasses.replace(config.llm, path=None), device=device)


def pretrain_llm(llm: nn.Module, tokenizer: Any, cfg: LlmPretrainConfig, progress: bool = False,
                 log: Any = None) -> LlmPretrainResult:
    """Train `llm` in place for `cfg.steps` steps on `sample_stream`, then score the held-out sets.
    `log(step, loss)` is called with every LOG_EVERY steps' mean loss."""
    from sphinx_x.train.schedule import build_scheduler

    device = next(llm.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    torch.manual_seed(cfg.seed)
    llm.train()
    optimizer = torch.optim.AdamW(llm.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.warmup_ratio)
    stream = sample_stream(tokenizer, cfg.seed, cfg.scene_share, cfg.template, arithmetic_share=cfg.arithmetic_share)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, unit="step", desc="llm")
    started, window, losses = time.perf_counter(), [], []
    for step in range(1, cfg.steps + 1):
        batch = collate(list(itertools.islice(stream, cfg.batch_size)), pad_id)
        loss = lm_loss(forward_logits(llm, batch, device), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(llm.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        window.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{window[-1]:.3f}")
        if len(window) == LOG_EVERY or step == cfg.steps:
            losses.append(sum(window) / len(window))
            window = []
            if log is not None:
                log(step, losses[-1])
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    return LlmPretrainResult(cfg.steps, seconds, held_out_accuracy(llm, tokenizer, cfg), losses)


def held_out_accuracy(llm: nn.Module, tokenizer: Any, cfg: LlmPretrainConfig) -> dict[str, float]:
    """`answer_accuracy` of `llm` on each kind's fixed held-out set (seeded by cfg.seed)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    sets = held_out(tokenizer, cfg.seed, cfg.eval_per_kind, cfg.template, KINDS)
    return {kind: answer_accuracy(llm, samples, pad_id) for kind, samples in sets.items()}


def write_llm_dir(llm: nn.Module, tokenizer: Any, out: str | Path, cfg: LlmPretrainConfig,
                  result: LlmPretrainResult, extra: dict[str, Any] | None = None) -> Path:
    """`out` as a transformers model directory (config.json, model.safetensors, the tokenizer files) plus
    SUMMARY_NAME (the run's settings, losses and held-out accuracy, and `extra`), written atomically."""
    out = Path(out)
    with atomic_directory(out) as tmp:
        llm.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        summary = {"config": asdict(cfg), "steps": result.steps, "seconds": round(result.seconds, 1),
                   "accuracy": result.accuracy, "log_every": LOG_EVERY, "losses": [round(x, 4) for x in result.losses],
                   **(extra or {})}
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return out


def read_summary(directory: str | Path) -> dict[str, Any]:
    """The SUMMARY_NAME record of an LLM directory written by `write_llm_dir`."""
    from sphinx_x.fileio import read_json_object

    return read_json_object(Path(directory) / SUMMARY_NAME, ValueError, "written by sphinx-x pretrain-llm")
