"""Model FLOPs for MFU, and the matmul probe that measures the hardware's peak FLOP/s.

Model FLOPs of one training step (the standard MFU convention: useful work only, a backward pass
costs twice the forward, activation recomputation is not counted):

  LLM      3 x [ 2 x N_body x tokens  +  4 x layers x hidden x sum(len_i^2)  +  2 x hidden x vocab x supervised ]
           N_body = parameters outside the embeddings and LM head (Mixtral: only the top-k experts a
           token visits); attention as in PaLM appendix B (causal mask not discounted); the LM head
           runs only on supervised positions (that is what `SphinxX.forward` does).
  vision   per encoded view and expert: the expert's forward FLOPs (counted once per architecture
           with torch's FlopCounterMode on the meta device), x3 when it trains, x1 when frozen (no
           backward runs through a frozen encoder); plus the projector, x3.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from sphinx_x.config import LLMConfig, SphinxXConfig, VisionExpertConfig
from sphinx_x.constants import IGNORE_INDEX


@dataclasses.dataclass(frozen=True)
class LLMShape:
    layers: int
    hidden: int
    vocab: int
    body_params: int  # active (per token) parameters outside embeddings and head


# Configs are mutable dataclasses (unhashable): cache on their field values.
_shape_cache: dict[tuple, LLMShape] = {}
_view_cache: dict[tuple, int] = {}


def _key(cfg) -> tuple:
    return tuple((f.name, _freeze(getattr(cfg, f.name))) for f in dataclasses.fields(cfg))


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    return v


def llm_shape(cfg: LLMConfig) -> LLMShape:
    """Layer count, width, vocabulary and active body parameters (built once on the meta device)."""
    from sphinx_x.llm import count_llm_params

    cfg = dataclasses.replace(cfg, path=None)
    key = _key(cfg)
    if key not in _shape_cache:
        total = count_llm_params(cfg)
        embed = cfg.vocab_size * cfg.hidden_size
        body = total - embed * (1 if cfg.tie_word_embeddings else 2)
        if cfg.arch == "mixtral" and cfg.num_experts > cfg.num_experts_per_tok:
            inactive = cfg.num_experts - cfg.num_experts_per_tok
            body -= cfg.num_layers * inactive * 3 * cfg.hidden_size * cfg.intermediate_size
        _shape_cache[key] = LLMShape(cfg.num_layers, cfg.hidden_size, cfg.vocab_size, body)
    return _shape_cache[key]


def expert_view_flops(cfg: VisionExpertConfig, feature_grid: int) -> int:
    """Forward FLOPs of one view through one expert (counted on the meta device, no memory)."""
    key = (_key(dataclasses.replace(cfg, checkpoint=None)), feature_grid)
    if key not in _view_cache:
        from torch.utils.flop_counter import FlopCounterMode

        from sphinx_x.vision import VisionExpert

        with torch.device("meta"):
            expert = VisionExpert(dataclasses.replace(cfg, checkpoint=None), feature_grid)
        views = torch.zeros(1, 3, cfg.view_size, cfg.view_size, dtype=torch.uint8, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            expert(views)
        _view_cache[key] = int(counter.get_total_flops())
    return _view_cache[key]


def batch_flops(config: SphinxXConfig, batch: dict, hidden_size: int | None = None) -> float:
    """Model FLOPs (forward + backward) of one micro-batch in the collated format of sphinx_x.data."""
    shape = llm_shape(config.llm)
    d = hidden_size or shape.hidden
    lengths = batch["attention_mask"].sum(dim=1).double()
    tokens = float(lengths.sum())
    supervised = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    fwd = 2.0 * shape.body_params * tokens
    fwd += 4.0 * shape.layers * d * float((lengths**2).sum())
    fwd += 2.0 * d * shape.vocab * supervised
    total = 3.0 * fwd
    images = batch.get("images")
    if images is not None and images.num_images:
        views = int(images.num_images + (~images.skipped).sum())  # global view + kept cells per image
        vision = config.vision
        for expert in vision.experts:
            per_view = expert_view_flops(expert, vision.feature_grid)
            total += views * per_view * (1.0 if expert.frozen else 3.0)
        total += 3.0 * 2.0 * vision.channels * d * views * vision.tokens_per_view  # projector
    return total


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        n: int | None = None, seconds: float = 1.0, clock=time.perf_counter) -> float:
    """Achievable peak FLOP/s: the best rate of repeated n x n matmuls over about `seconds`.

    `clock` times the bursts: wall time by default; `time.process_time` gives FLOP per CPU-second of
    this process (on a shared CPU, what one thread does while it runs, whatever else is scheduled)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):  # warm-up (kernel selection, caches)
        a @ b
    sync()
    best = 0.0
    deadline = clock() + seconds
    while clock() < deadline:
        reps = 4
        t0 = clock()
        for _ in range(reps):
            a @ b
        sync()
        dt = clock() - t0
        best = max(best, reps * 2.0 * n**3 / dt)
    return best
