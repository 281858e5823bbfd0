"""Pretraining `nano`'s vision experts on synthetic scenes: the embedded stand-in for CLIP and DINOv2.

SPHINX-X's experts arrive pretrained (OpenCLIP ConvNeXt-XXL, DINOv2 ViT-g/14) and stay frozen while the
one-stage run trains the LLM and projector. Offline there are no such weights for `nano`, and experts
trained from scratch only through the LLM's loss learn shapes slowly (docs/experiments.md, 2026-11-26). So the
quickstart first pretrains each expert on the synthetic scene generator's own descriptions, supervised
like an ImageNet backbone: from the mean of its tokens, a linear head says for every colour which shape
of that colour the scene holds, or none. The trunks are saved as timm state dicts (safetensors) and
enter the model through the same `checkpoint` path as real weights, frozen, as in the paper.

Scenes are drawn on the fly (a DataLoader worker renders while the main process trains) from a seeded
stream; a fixed held-out set measures for how many drawn objects each expert names the shape of the
object of that colour (chance: 1 in 5).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sphinx_x.canvas import make_canvas, to_uint8_tensor
from sphinx_x.config import SphinxXConfig, VisionConfig
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES, make_scene, render_scene
from sphinx_x.fileio import write_atomic
from sphinx_x.vision import VisionExpert

NUM_COLORS, NUM_CLASSES = len(COLORS), 1 + len(SHAPES)  # per colour: none, or one of the shapes
HELD_OUT = 256  # scenes in the accuracy set (its own seed stream)


def scene_example(vision: VisionConfig, seed: int, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scene `index` of stream `seed`: each expert's global view (uint8, 3 x r x r) and its labels."""
    scene = make_scene(random.Random(seed * 1_000_003 + index))
    image = render_scene(scene)
    views = {}
    for expert in vision.experts:  # the global view only: the whole scene, as the labels describe it
        views[expert.name] = to_uint8_tensor(make_canvas(image, expert.view_size, vision.canvas))
    labels = torch.zeros(NUM_COLORS, dtype=torch.long)
    colors = list(COLORS)
    for o in scene.objects:
        labels[colors.index(o.color)] = 1 + SHAPES.index(o.shape)
    return views, labels


class SceneStream(IterableDataset):
    """Endless batches of scenes; worker w of W draws indices w, w + W, ... (no overlap, deterministic)."""

    def __init__(self, vision: VisionConfig, batch_size: int, seed: int):
        self.vision, self.batch_size, self.seed = vision, batch_size, seed

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = 0
        while True:
            if batch % n == k:
                examples = [scene_example(self.vision, self.seed, batch * self.batch_size + i)
                            for i in range(self.batch_size)]
                yield collate(examples)
            batch += 1


def collate(examples: list[tuple[dict[str, torch.Tensor], torch.Tensor]]):
    views = {name: torch.stack([v[name] for v, _ in examples]) for name in examples[0][0]}
    return views, torch.stack([y for _, y in examples])


class ProbeHead(nn.Module):
    """Mean of an expert's tokens -> per-colour logits over (none, shapes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, NUM_COLORS * NUM_CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens.mean(dim=1)).view(-1, NUM_COLORS, NUM_CLASSES)


@dataclass
class PretrainResult:
    paths: dict[str, Path]  # expert name -> saved trunk weights
    steps: int
    seconds: float
    accuracy: dict[str, float]  # expert name -> held-out share of the drawn objects whose shape it names
    losses: list[float]  # training loss per step (summed over experts)


def pretrain_experts(vision: VisionConfig, out: str | Path, *, steps: int = 400, max_seconds: float | None = None,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                     num_workers: int = 1, progress: bool = False) -> PretrainResult:
    """Train every expert of `vision` (from its random init, seeded by `seed`) for `steps` steps or until
    `max_seconds`, whichever ends first; write OUT/<expert>.safetensors and return what happened."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    experts = nn.ModuleDict({e.name: VisionExpert(_trainable(e), vision.feature_grid) for e in vision.experts})
    heads = nn.ModuleDict({e.name: ProbeHead(e.channels) for e in vision.experts})
    experts.to(device).train()
    heads.to(device)
    params = list(experts.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)
    loader = DataLoader(SceneStream(vision, batch_size, seed), batch_size=None, num_workers=num_workers,
                        persistent_workers=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc="experts")
    started, step, losses = time.perf_counter(), 0, []
    for views, labels in loader:
        for group in optimizer.param_groups:  # linear warm-up, then constant (the run is short)
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        labels = labels.to(device)
        total = sum(F.cross_entropy(heads[n](experts[n](views[n])).flatten(0, 1), labels.flatten()) for n in experts)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        step = step + 1
        losses.append(float(total.detach()))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step >= steps or (max_seconds is not None and time.perf_counter() - started >= max_seconds):
            break
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    accuracy = held_out_accuracy(vision, experts, heads, seed, device)
    paths = {}
    for name, expert in experts.items():
        paths[name] = out / f"{name}.safetensors"
        trunk = {k: v.detach().cpu().contiguous() for k, v in expert.trunk.state_dict().items()}
        write_atomic(paths[name], save(trunk))  # a reader never sees half a file
    return PretrainResult(paths, step, seconds, accuracy, losses)


@torch.no_grad()
def held_out_accuracy(vision: VisionConfig, experts: nn.ModuleDict, heads: nn.ModuleDict, seed: int,
                      device: str) -> dict[str, float]:
    views, labels = collate([scene_example(vision, seed + 7_919, i) for i in range(HELD_OUT)])
    labels = labels.to(device)
    drawn = labels > 0  # "none" slots are the majority and easy; score the objects
    experts.eval()
    acc = {n: float((heads[n](experts[n](views[n].to(device))).argmax(-1) == labels)[drawn].float().mean())
           for n in experts}
    experts.train()
    return acc


def _trainable(cfg):
    return dataclasses.replace(cfg, frozen=False, checkpoint=None)


def expert_overrides(paths: dict[str, Path], vision: VisionConfig) -> dict:
    """`model.overrides` that load the pretrained trunks, frozen, into a model with this vision config."""
    return {"vision": {"experts": [{"checkpoint": str(Path(paths[e.name]).resolve()), "frozen": True}
                                   for e in vision.experts]}}


def write_pretrained(config: SphinxXConfig, out: str | Path, **kwargs: Any) -> tuple[PretrainResult, Path]:
    """Pretrain `config`'s experts into `out` (`kwargs` go to `pretrain_experts`) and write out/model.yaml: the
    config with those trunks as frozen experts, ready for `model.preset`. Returns the result and that path."""
    out = Path(out)
    result = pretrain_experts(config.vision, out, **kwargs)
    model_yaml = out / "model.yaml"
    config.with_overrides(expert_overrides(result.paths, config.vision)).save(model_yaml)
    return result, model_yaml
