"""The SPHINX-X learning-rate schedule: linear warm-up, then cosine decay to zero (README "Training")."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length: `warmup_ratio` of the steps, at least one step when the ratio is positive."""
    return max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0


class WarmupCosine:
    """LR multiplier for optimizer step `s` (0-based: the update about to be made).

    Warm-up: (s + 1) / W for s < W, so the first update already moves. Then cosine from 1 at s = W to
    0 at s = total (the last update, s = total - 1, uses a small positive rate)."""

    def __init__(self, total_steps: int, warmup: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self.warmup = min(warmup, total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(1, self.total_steps - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> LambdaLR:
    """A LambdaLR whose state_dict round-trips (the multiplier is an object with plain attributes)."""
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps(total_steps, warmup_ratio)))
