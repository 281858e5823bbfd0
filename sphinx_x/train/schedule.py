"""The SPHINX-X learning-rate schedule: linear warm-up, then cosine decay to zero (README "Training"); optionally
held at its peak before a shorter cosine decay (warm-up, stable, decay: `optim.decay_ratio` < 1)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Warm-up length: `warmup_ratio` of the steps, at least one step when the ratio is positive."""
    return max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0


class WarmupCosine:
    """LR multiplier for optimizer step `s` (0-based: the update about to be made).

    Warm-up: (s + 1) / W for s < W, so the first update already moves. Then cosine from 1 to 0 at s = total
    (the last update, s = total - 1, uses a small positive rate) over the last `decay_ratio` of the steps after
    the warm-up; before that the multiplier stays 1 (1.0, the default: the cosine spans everything after the
    warm-up). `total_steps` and `warmup` may be changed later (a wall-clock budget re-plans them)."""

    def __init__(self, total_steps: int, warmup: int, decay_ratio: float = 1.0):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 < decay_ratio <= 1:
            raise ValueError(f"decay_ratio must be in (0, 1], got {decay_ratio}")
        self.total_steps = total_steps
        self.warmup = min(warmup, total_steps)
        self.decay_ratio = decay_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        decay = max(1, math.ceil((self.total_steps - self.warmup) * self.decay_ratio))
        start = max(self.warmup, self.total_steps - decay)
        progress = min(1.0, max(0.0, (step - start) / decay))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float,
                    decay_ratio: float = 1.0) -> LambdaLR:
    """A LambdaLR whose state_dict round-trips (the multiplier is an object with plain attributes)."""
    return LambdaLR(optimizer, WarmupCosine(total_steps, warmup_steps(total_steps, warmup_ratio), decay_ratio))
