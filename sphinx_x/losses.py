"""How the next-token loss is averaged: over supervised tokens, or over answer turns.

SPHINX-X (like LLaVA) averages over every supervised token of the global batch, so a 40-token caption or
box list weighs forty one-word answers. `turn` averaging gives every answer turn the same weight: each
turn's tokens share a weight of 1 / (its length), and the loss is divided by the number of turns instead
of tokens (the "sample averaging" that InternVL 2.5 compares with token averaging, per turn).

A turn is a maximal run of supervised positions in a row: the prompt between two answers is never
supervised, so runs never merge, and nothing is needed from the data pipeline besides the labels.
"""

from __future__ import annotations

import torch

from sphinx_x.constants import IGNORE_INDEX

LOSS_REDUCTIONS = ("token", "turn")


def supervised_runs(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """targets (B, T), IGNORE_INDEX where unsupervised -> (run id of every supervised position, in row-major
    order of `targets[keep]`, and the length of every run)."""
    keep = targets != IGNORE_INDEX
    before = torch.zeros_like(keep)
    before[:, 1:] = keep[:, :-1]
    starts = keep & ~before  # a run starts where the previous position (same row) is not supervised
    run_id = torch.cumsum(starts.flatten().long(), 0)[keep.flatten()] - 1
    lengths = torch.bincount(run_id, minlength=int(starts.sum()))
    return run_id, lengths


def loss_weights(targets: torch.Tensor, reduction: str) -> tuple[torch.Tensor | None, float]:
    """Per supervised position (in `targets[keep]` order) its weight, and the total weight the summed loss
    is divided by. `token`: no weights (None) and the number of supervised tokens."""
    if reduction == "token":
        return None, float((targets != IGNORE_INDEX).sum())
    if reduction == "turn":
        run_id, lengths = supervised_runs(targets)
        return 1.0 / lengths[run_id].float(), float(lengths.numel())
    raise ValueError(f"loss reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {reduction!r}")
