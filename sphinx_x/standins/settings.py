"""The settings of the stand-ins' pretraining runs and their defaults (light: no torch, so that `sphinx-x --help`
stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

# The defaults build the packaged set (sphinx_x/assets/standins/nano/MODEL_CARD.md).
EXPERT_STEPS = 1200
EXPERT_BATCH = 64
EXPERT_LR = 1e-3
# The experts' objectives (sphinx_x/train/expert_pretrain.py): scene-level (a probe on the mean token names
# each colour's shape) and per-token (every grid token names the colour and shape under it).
EXPERT_SCENE_WEIGHT = 1.0
EXPERT_TOKEN_WEIGHT = 0.0
LLM_STEPS = 800


@dataclass
class LlmPretrainConfig:
    """One pretraining run: steps of `batch_size` samples, `scene_share` of the draws scene samples."""

    steps: int = LLM_STEPS
    batch_size: int = 16
    lr: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # Bag-of-words scene slots did not teach nano's LLM to look objects up (docs/experiments.md, 2026-12-02,
    # the oracle-embed control), so the packaged LLM is text-only; the knob stays for experiments.
    scene_share: float = 0.0
    seed: int = 0
    template: str = "accessory"
    eval_per_kind: int = 200

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.scene_share <= 1.0:
            raise ValueError(f"scene_share must be in [0, 1], got {self.scene_share}")
