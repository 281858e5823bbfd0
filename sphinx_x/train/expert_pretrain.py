"""Pretraining `nano`'s vision experts on synthetic scenes: the embedded stand-in for CLIP and DINOv2.

SPHINX-X's experts arrive pretrained (OpenCLIP ConvNeXt-XXL, DINOv2 ViT-g/14) and stay frozen while the
one-stage run trains the LLM and projector. Offline there are no such weights for `nano`, and experts
trained from scratch only through the LLM's loss learn shapes slowly (README, "Training nano"). So the
quickstart first pretrains each expert on the synthetic scene generator's own descriptions, densely, like
a detector: for every token of the feature grid the LLM will read, a linear head says which (colour,
shape) is centred in that token's cell, if any, and regresses that object's box. Dense targets learn
several times faster than naming the scene's objects from the mean token (the first version of this
module), and they put what the LLM needs (what is where) into the tokens themselves. The trunks are saved
as timm state dicts (safetensors) and enter the model through the same `checkpoint` path as real weights,
frozen, as in the paper.

Scenes are drawn on the fly (a DataLoader worker renders while the main process trains) from a seeded
stream; a fixed held-out set of global views measures for how many drawn objects each expert's token
names both colour and shape (chance: 1 in 25).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sphinx_x.canvas import CanvasGeometry, prepare_image
from sphinx_x.config import VisionConfig
from sphinx_x.curate.files import write_atomic
from sphinx_x.data.synth.common import COLORS
from sphinx_x.data.synth.scenes import SHAPES, make_scene, render_scene
from sphinx_x.vision import VisionExpert

NUM_CLASSES = 1 + len(COLORS) * len(SHAPES)  # per token: nothing centred here, or (colour, shape)
HELD_OUT = 256  # scenes in the accuracy set (its own seed stream)
BOX_WEIGHT = 2.0  # L1 on canvas-normalised box corners, next to the token classification loss


def object_class(color: str, shape: str) -> int:
    return 1 + list(COLORS).index(color) * len(SHAPES) + SHAPES.index(shape)


def scene_example(vision: VisionConfig, seed: int, index: int, cell_share: float = 0.0):
    """Scene `index` of stream `seed` as one view per expert (uint8, 3 x r x r), with dense targets.

    The view is the model's own global view (`prepare_image`), or with probability `cell_share` one of
    its non-padded grid cells (what the model reads at `grid` times the scale). Targets, one per token of
    the feature_grid x feature_grid map: `classes` (G*G,) the (colour, shape) of the object whose centre
    falls in that token's cell, 0 where none does; `boxes` (G*G, 4) that object's box in the view's
    [0, 1] coordinates (zeros elsewhere)."""
    rng = random.Random(seed * 1_000_003 + index)
    scene = make_scene(rng)
    image = render_scene(scene)
    prepared = prepare_image(image, vision)
    g, grid = vision.canvas.grid, vision.feature_grid
    cells = [i for i, skip in enumerate(prepared.skipped.tolist()) if not skip]
    view, (row, col), scale = 0, (0, 0), 1  # view 0 is the global view
    if rng.random() < cell_share:
        k = rng.randrange(len(cells))
        view, (row, col), scale = 1 + k, divmod(cells[k], g), g
    views = {name: tiles[view] for name, tiles in prepared.views.items()}
    geometry = CanvasGeometry(*image.size, vision.canvas.pad_anchor)
    classes = torch.zeros(grid * grid, dtype=torch.long)
    boxes = torch.zeros(grid * grid, 4)
    for o in scene.objects:
        x1, y1, x2, y2 = (v * scale - (col if i % 2 == 0 else row) for i, v in enumerate(geometry.to_canvas(o.box)))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        if not (0 <= cx < 1 and 0 <= cy < 1):
            continue  # centred in another cell
        token = int(cy * grid) * grid + int(cx * grid)
        classes[token] = object_class(o.color, o.shape)
        boxes[token] = torch.tensor([x1, y1, x2, y2]).clamp(0, 1)
    return views, classes, boxes


class SceneStream(IterableDataset):
    """Endless batches of scenes; worker w of W draws indices w, w + W, ... (no overlap, deterministic)."""

    def __init__(self, vision: VisionConfig, batch_size: int, seed: int, cell_share: float = 0.0):
        self.vision, self.batch_size, self.seed, self.cell_share = vision, batch_size, seed, cell_share

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = 0
        while True:
            if batch % n == k:
                examples = [scene_example(self.vision, self.seed, batch * self.batch_size + i, self.cell_share)
                            for i in range(self.batch_size)]
                yield collate(examples)
            batch += 1


def collate(examples):
    views = {name: torch.stack([e[0][name] for e in examples]) for name in examples[0][0]}
    return views, torch.stack([e[1] for e in examples]), torch.stack([e[2] for e in examples])


class DenseHead(nn.Module):
    """Linear read-outs of an expert's tokens: each grid token -> (nothing centred here, colour x shape)
    logits and a box; the mean of all tokens -> for every colour, the shape of that colour in view (or none).

    Linear on purpose: whatever they read must already be in the tokens the LLM's projector sees. The
    per-token targets make the trunk learn fast; the mean-token target puts the scene's summary where the
    LLM can read it without first learning to search the grid."""

    def __init__(self, channels: int):
        super().__init__()
        self.classes = nn.Linear(channels, NUM_CLASSES)
        self.box = nn.Linear(channels, 4)
        self.scene = nn.Linear(channels, len(COLORS) * (1 + len(SHAPES)))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        grid = tokens[:, 1:]
        scene = self.scene(tokens.mean(dim=1)).view(-1, len(COLORS), 1 + len(SHAPES))
        return self.classes(grid), self.box(grid).sigmoid(), scene


def scene_labels(classes: torch.Tensor) -> torch.Tensor:
    """Per-token classes (B, G*G) -> per colour (B, colours): 0, or 1 + the shape of that colour in view.
    A scene's colours are distinct, so each colour is centred in at most one token."""
    labels = torch.zeros(classes.shape[0], len(COLORS), dtype=torch.long, device=classes.device)
    b, t = (classes > 0).nonzero(as_tuple=True)
    c = classes[b, t] - 1
    labels[b, c // len(SHAPES)] = 1 + c % len(SHAPES)
    return labels


def dense_loss(head: DenseHead, tokens: torch.Tensor, classes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    logits, pred, scene = head(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), classes.flatten())
    loss = loss + F.cross_entropy(scene.flatten(0, 1), scene_labels(classes).flatten())
    held = classes > 0
    if held.any():
        loss = loss + BOX_WEIGHT * F.l1_loss(pred[held], boxes[held])
    return loss


@dataclass
class PretrainResult:
    paths: dict[str, Path]  # expert name -> saved trunk weights
    steps: int
    seconds: float
    accuracy: dict[str, float]  # expert name -> held-out share of the drawn objects whose shape it names
    losses: list[float]  # training loss per step (summed over experts)


def pretrain_experts(vision: VisionConfig, out: str | Path, *, steps: int = 400, max_seconds: float | None = None,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, device: str = "cpu",
                     num_workers: int = 1, cell_share: float = 0.0, progress: bool = False) -> PretrainResult:
    """Train every expert of `vision` (from its random init, seeded by `seed`) for `steps` steps or until
    `max_seconds`, whichever ends first; write OUT/<expert>.safetensors and return what happened."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    experts = nn.ModuleDict({e.name: VisionExpert(_trainable(e), vision.feature_grid) for e in vision.experts})
    heads = nn.ModuleDict({e.name: DenseHead(e.channels) for e in vision.experts})
    experts.to(device).train()
    heads.to(device)
    params = list(experts.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)
    loader = DataLoader(SceneStream(vision, batch_size, seed, cell_share), batch_size=None, num_workers=num_workers,
                        persistent_workers=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc="experts")
    started, step, losses = time.perf_counter(), 0, []
    for views, classes, boxes in loader:
        for group in optimizer.param_groups:  # linear warm-up, then constant (the run is short)
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        classes, boxes = classes.to(device), boxes.to(device)
        total = sum(dense_loss(heads[n], experts[n](views[n]), classes, boxes) for n in experts)
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
    """Per expert: the share of held-out objects (global views) whose token names their colour and shape."""
    views, classes, _ = collate([scene_example(vision, seed + 7_919, i) for i in range(HELD_OUT)])
    classes = classes.to(device)
    drawn = classes > 0  # empty tokens are the majority and easy; score the objects
    experts.eval()
    acc = {n: float((heads[n](experts[n](views[n].to(device)))[0].argmax(-1) == classes)[drawn].float().mean())
           for n in experts}
    experts.train()
    return acc


def _trainable(cfg):
    return dataclasses.replace(cfg, frozen=False, checkpoint=None)


def expert_overrides(paths: dict[str, Path], vision: VisionConfig) -> dict:
    """`model.overrides` that load the pretrained trunks, frozen, into a model with this vision config."""
    return {"vision": {"experts": [{"checkpoint": str(Path(paths[e.name]).resolve()), "frozen": True}
                                   for e in vision.experts]}}
