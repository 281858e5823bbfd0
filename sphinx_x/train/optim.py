"""The optimizer of `sphinx-x train`: AdamW (the SPHINX-X recipe), or Muon for the LLM's hidden matrices with
AdamW for everything else (`optim.name: muon`).

Muon (torch.optim.Muon; Jordan et al. 2024) orthogonalises each 2-D weight's momentum with a Newton-Schulz
iteration, so every direction of a matrix moves at the same rate. On the learnability ladder it is what lets
nano's LLM learn to look an object up by content: rung 3 ("what colour is the <shape>?") passes 90% at step
400 / 500 of 32 with Muon (99.8% at 600, two seeds), against 64-70% at step 600 with AdamW (docs/experiments.md,
stop 25). As in the Muon
papers and nanochat, only the LLM's hidden matrices (attention and MLP weights of its layers) take Muon;
embeddings, the head, norms, the projector, image tags and LoRA adapters keep AdamW. Muon's step is scaled to
AdamW's update RMS (`adjust_lr_fn="match_rms_adamw"`), so one `optim.lr` serves both.

`Fp32Muon` is torch.optim.Muon with the Newton-Schulz iteration in fp32: torch runs it in bf16, which CPUs
without bf16 units emulate (8 s per step for nano's 28 matrices on one AVX2 core, against 0.27 s in fp32: 17.7
GFLOP of matrix products at the core's matmul rate; `optim.muon_matrices: attention` leaves the MLP weights,
73% of that, to AdamW).
`MuonAdamW` is one `torch.optim.Optimizer` over both parts, so the LR schedule, gradient clipping and the
checkpoint code (torch.distributed.checkpoint's full optimizer state) treat it as any optimizer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim._muon import _adjust_lr  # torch's own Muon LR rule, so Fp32Muon's steps match torch.optim.Muon

from sphinx_x.config import ConfigError
from sphinx_x.train.config import OPTIMIZERS

MUON_MOMENTUM = 0.95


def is_muon_parameter(name: str, param: nn.Parameter, matrices: str = "hidden") -> bool:
    """A hidden matrix of the LLM: a 2-D weight inside its decoder layers (not embeddings, head, norms,
    projector, image tags or LoRA adapters); with `matrices` "attention", only its attention projections."""
    hidden = param.ndim == 2 and name.startswith("llm.") and ".layers." in name and "lora_" not in name
    return hidden and (matrices == "hidden" or ".self_attn." in name)


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz orthogonalisation, computed in fp32."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(grad.dtype)


def _closure_loss(closure):
    """torch.optim's convention: re-evaluate the loss with gradients when a closure is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Fp32Muon(torch.optim.Muon):
    """torch.optim.Muon (same arguments, state and update) with the orthogonalisation in fp32."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, momentum, wd = float(group["lr"]), group["momentum"], group["weight_decay"]
            for param, grad, buf in zip(params, grads, bufs):
                buf.lerp_(grad, 1 - momentum)
                update = grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz_fp32(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - lr * wd)
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """Muon over `muon_groups`, AdamW over `adamw_groups`, as one optimizer.

    `param_groups` are the children's own group dicts (AdamW's first: the first group's rate is the one the
    trainer logs), so a scheduler's or `_init_optim_state`'s
    change to a group's `lr` reaches the child; the children share this optimizer's `state` (their parameters
    are disjoint), so `state_dict()` / `load_state_dict()` are torch's, in its standard format."""

    def __init__(self, muon_groups: list[dict[str, Any]], adamw_groups: list[dict[str, Any]], *, lr: float,
                 betas: tuple[float, float], eps: float, weight_decay: float, fused: bool | None = None,
                 ns_steps: int = 5):
        self.muon = Fp32Muon(muon_groups, lr=lr, weight_decay=weight_decay, momentum=MUON_MOMENTUM,
                             ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                       fused=fused)
        super().__init__(self.adamw.param_groups + self.muon.param_groups, defaults={})
        self._share_with_children()

    def _share_with_children(self) -> None:
        n = len(self.adamw.param_groups)
        self.adamw.param_groups, self.muon.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and the group dicts: point the children at them
        self._share_with_children()

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss


def build_optimizer(name: str, named: list[tuple[str, nn.Parameter]], groups: list[dict[str, Any]], *, lr: float,
                    betas: tuple[float, float], eps: float, weight_decay: float, fused: bool | None = None,
                    sharded: bool = False, muon_matrices: str = "hidden", muon_lr_scale: float = 1.0,
                    muon_ns_steps: int = 5) -> torch.optim.Optimizer:
    """`name` "adamw": AdamW over `groups` (sphinx_x.train.build.param_groups). "muon": each group split into
    its LLM hidden matrices (Muon, at the group's rate times `muon_lr_scale`) and the rest (AdamW); not on an
    FSDP-sharded model."""
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)
    if name != "muon":
        raise ConfigError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    if sharded:
        raise ConfigError("optim.name muon does not run under FSDP: Muon orthogonalises each whole matrix and FSDP "
                         "gives every rank a slice of it; use adamw, or one process")
    muon_ids = {id(p) for n, p in named if is_muon_parameter(n, p, muon_matrices)}
    muon_groups, adamw_groups = [], []
    for group in groups:
        for target, keep in ((muon_groups, True), (adamw_groups, False)):
            params = [p for p in group["params"] if (id(p) in muon_ids) == keep]
            if params:
                scale = muon_lr_scale if keep else 1.0
                target.append({**group, "params": params, "lr": group.get("lr", lr) * scale})
    if not muon_groups:
        raise ConfigError("optim.name muon: the model has no trainable LLM hidden matrices (a frozen or LoRA-only "
                         "LLM); use adamw")
    return MuonAdamW(muon_groups, adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused,
                     ns_steps=muon_ns_steps)
