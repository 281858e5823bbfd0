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

import copy
import dataclasses
import random
import time
from collections.abc import Callable, Iterator
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
from sphinx_x.data.synth.common import BACKGROUND, COLORS
from sphinx_x.data.synth.scenes import SHAPES, make_scene, render_scene
from sphinx_x.fileio import write_atomic
from sphinx_x.standins.settings import check_expert_weights
from sphinx_x.train.expert_words import WordHead, held_out_word_accuracy, word_batch
from sphinx_x.vision import VisionExpert

NUM_COLORS, NUM_CLASSES = len(COLORS), 1 + len(SHAPES)  # per colour: none, or one of the shapes
HELD_OUT = 256  # scenes in the accuracy set (its own seed stream)
# Per-token targets: the colour (or background) and shape (or background) of what covers a grid token's patch.
MIN_SHARE = 0.05  # a patch with less than this share of any object colour is background


def token_labels(view: torch.Tensor, shape_of: dict[int, int], grid: int, pad: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (3, r, r) view -> (grid*grid, 2) long: per grid token (raster order) the colour index of the
    object covering most of its patch (NUM_COLORS for background) and that object's shape index (len(SHAPES)
    for background). Colours are unique within a scene, so the colour names the object. Pixels nearest the
    background or the canvas padding colour `pad` count as background."""
    palette = torch.tensor([*COLORS.values(), BACKGROUND, pad], dtype=torch.float32)
    r = view.shape[-1]
    p = r // grid
    px = view[:, : p * grid, : p * grid].float().permute(1, 2, 0).unsqueeze(-2)  # (r, r, 1, 3)
    nearest = ((px - palette) ** 2).sum(-1).argmin(-1)  # (r, r)
    share = F.one_hot(nearest, len(palette)).float().reshape(grid, p, grid, p, -1).mean((1, 3)).reshape(grid * grid, -1)
    top, colour = share[:, :NUM_COLORS].max(-1)
    colour = torch.where(top >= MIN_SHARE, colour, torch.full_like(colour, NUM_COLORS))
    shape = torch.tensor([shape_of.get(int(c), len(SHAPES)) for c in colour])
    return torch.stack([colour, shape], dim=1)


def token_boxes(labels: torch.Tensor, box_of: dict[int, torch.Tensor], scale: float,
                offset: tuple[int, int]) -> torch.Tensor:
    """Per grid token (`token_labels`' rows) the box of the object under it in the view's own coordinates
    (x1, y1, x2, y2; 0-1 across the view, beyond where the object leaves a sub-image view), NaN on background.
    `box_of` maps a colour index to the object's canvas-normalised box; a view shows the canvas at `scale` with
    its top-left cell at `offset` (column, row) in view units: the global view is (1, (0, 0)), sub-image view
    (i, j) of the 2x2 grid is (2, (j, i))."""
    nan = torch.full((4,), float("nan"))
    shift = torch.tensor([offset[0], offset[1], offset[0], offset[1]], dtype=torch.float32)
    return torch.stack([box_of[int(c)] * scale - shift if int(c) in box_of else nan for c in labels[:, 0]])


def scene_example(vision: VisionConfig, seed: int, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Scene `index` of stream `seed`: each expert's global view (uint8, 3 x r x r), the scene labels (per
    colour: none or the shape) and, under "<expert>.tokens", each expert's per-token labels (`token_labels`),
    under "<expert>.boxes" the box of the object under each token (`token_boxes`)."""
    rng = random.Random(seed * 1_000_003 + index)
    scene = make_scene(rng)
    image = render_scene(scene)
    i, j = rng.randrange(2), rng.randrange(2)  # the grid cell a sub-image view would show (2x2 grid)
    colors = list(COLORS)
    shape_of = {colors.index(o.color): SHAPES.index(o.shape) for o in scene.objects}
    side = max(scene.size)  # the canvas is the image padded to a square at the top left
    box_of = {colors.index(o.color): torch.tensor(o.box, dtype=torch.float32) / side for o in scene.objects}
    views, pad = {}, tuple(vision.canvas.pad_color)
    for expert in vision.experts:  # the global view only: the whole scene, as the labels describe it
        view = to_uint8_tensor(make_canvas(image, expert.view_size, vision.canvas))
        views[expert.name] = view
        views[f"{expert.name}.tokens"] = labels = token_labels(view, shape_of, vision.feature_grid, pad)
        views[f"{expert.name}.boxes"] = token_boxes(labels, box_of, 1.0, (0, 0))
        r = expert.view_size  # one sub-image view too: objects at twice the size, as the one-stage model sees them
        crop = to_uint8_tensor(make_canvas(image, 2 * r, vision.canvas))[:, i * r : (i + 1) * r, j * r : (j + 1) * r]
        views[f"{expert.name}.crop"] = crop.contiguous()
        views[f"{expert.name}.crop.tokens"] = labels = token_labels(crop, shape_of, vision.feature_grid, pad)
        views[f"{expert.name}.crop.boxes"] = token_boxes(labels, box_of, 2.0, (j, i))
    labels = torch.zeros(NUM_COLORS, dtype=torch.long)
    for c, s in shape_of.items():
        labels[c] = 1 + s
    return views, labels


class SceneStream(IterableDataset):
    """Endless batches of scenes; worker w of W draws indices w, w + W, ... (no overlap, deterministic). With
    `words` > 0 each batch also holds that many OCR pages (sphinx_x/train/expert_words.py: global, sub-image and
    zoomed views) under "<expert>.word" and their token targets under "word.labels"."""

    def __init__(self, vision: VisionConfig, batch_size: int, seed: int, words: int = 0):
        self.vision, self.batch_size, self.seed, self.words = vision, batch_size, seed, words

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info is not None else (0, 1)
        batch = 0
        while True:
            if batch % n == k:
                examples = [scene_example(self.vision, self.seed, batch * self.batch_size + i)
                            for i in range(self.batch_size)]
                views, labels = collate(examples)
                if self.words:
                    word_views, _ = word_batch(self.vision, self.seed, batch * self.words, self.words)
                    views.update({f"{e.name}.word": word_views[e.name] for e in self.vision.experts})
                    views["word.labels"] = word_views["labels"]
                yield views, labels
            batch += 1


def collate(examples: list[tuple[dict[str, torch.Tensor], torch.Tensor]]):
    views = {name: torch.stack([v[name] for v, _ in examples]) for name in examples[0][0]}
    return views, torch.stack([y for _, y in examples])


class TokenHead(nn.Module):
    """Each grid token -> logits over colours + background and over shapes + background (a dense, local
    objective: every token must say what is under it, as CLIP / DINOv2 patch features do)."""

    def __init__(self, channels: int):
        super().__init__()
        self.colour = nn.Linear(channels, NUM_COLORS + 1)
        self.shape = nn.Linear(channels, len(SHAPES) + 1)

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, 1:]  # token 0 is the view's summary
        return (F.cross_entropy(self.colour(grid).flatten(0, 1), labels[..., 0].flatten())
                + F.cross_entropy(self.shape(grid).flatten(0, 1), labels[..., 1].flatten()))


class BoxHead(nn.Module):
    """Each grid token covered by an object -> that object's box in the view's coordinates (smooth L1), so a
    token says not only what is under it but how far its object reaches: grounding answers are boxes, and the
    LLM can then copy the box of the object a question names from any of its tokens."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens[:, 1:])  # token 0 is the view's summary

    def loss(self, tokens: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        covered = ~boxes[..., 0].isnan()
        if not covered.any():
            return tokens.sum() * 0.0
        return F.smooth_l1_loss(self(tokens)[covered], boxes[covered], beta=0.05)


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
    # expert name -> held-out share of the drawn objects whose shape it names (only with the scene-level objective)
    accuracy: dict[str, float]
    losses: list[float]  # training loss per step (summed over experts)
    # expert name -> held-out share of object-covered grid tokens whose colour and shape the token head names
    # (global views; only with the per-token objective)
    token_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    # expert name -> held-out share of OCR pages whose word the reading head names from the global view (only with
    # ocr_weight)
    word_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    # expert name -> held-out share of object-covered grid tokens (global views) whose box head gives a box at
    # IoU >= 0.5 with their object's (only with box_weight)
    box_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    # expert name -> the same from a sub-image view that holds the word (only with ocr_weight)
    word_view_accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
    # expert name -> mean cosine between the tuned and the starting trunk's tokens on held-out scenes (fine-tuning
    # stages only: how far the stage moved the tokens the LLM was taught on)
    keep_cosine: dict[str, float] = dataclasses.field(default_factory=dict)


def keep_loss(tokens: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Squared distance of the tokens from the starting trunk's, relative to the reference tokens' mean square (so
    that the weight does not depend on the tokens' scale)."""
    return (tokens - reference).pow(2).mean() / reference.pow(2).mean().clamp_min(1e-12)


def pretrain_experts(vision: VisionConfig, out: str | Path, *, steps: int = 400, max_seconds: float | None = None,
                     batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                     num_workers: int = 1, progress: bool = False, token_weight: float = 0.0,
                     scene_weight: float = 1.0, ocr_weight: float = 0.0, ocr_batch: int | None = None,
                     box_weight: float = 0.0, init_from: dict[str, str | Path] | None = None,
                     keep_weight: float = 0.0) -> PretrainResult:
    """Train every expert of `vision` (from its random init, seeded by `seed`, or from the trunk checkpoint
    `init_from[name]` where given: a fine-tuning stage) for `steps` steps or until `max_seconds`, whichever ends
    first; write OUT/<expert>.safetensors and return what happened.
    The loss is `scene_weight` x the scene-level objective (`ProbeHead`) + `token_weight` x the per-token one
    (`TokenHead`) + `ocr_weight` x the reading one (`WordHead` on `ocr_batch` OCR pages a step, default half the
    batch, global, sub-image and zoomed views) + `box_weight` x the per-token box one (`BoxHead`, global and sub-image
    views) + `keep_weight` x `keep_loss` of the scene views' tokens from the starting trunk's (fine-tuning stages: the
    scenes' tokens stay near those the LLM was taught on while the pages' move freely); at least one of the first
    three weights must be > 0. Held-out accuracies are reported for the objectives used. The heads start fresh also
    when the trunks do not."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if box_weight < 0 or keep_weight < 0:
        raise ValueError(f"box_weight and keep_weight must be >= 0, got {box_weight} and {keep_weight}")
    check_expert_weights(scene_weight, token_weight, ocr_weight)
    ocr_batch = (ocr_batch or max(1, batch_size // 2)) if ocr_weight > 0 else 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    init_from = init_from or {}
    unknown = sorted(set(init_from) - {e.name for e in vision.experts})
    if unknown:
        raise ValueError(f"init_from names experts the vision config does not have: {unknown}")
    experts = nn.ModuleDict({e.name: VisionExpert(_trainable(e, init_from.get(e.name)), vision.feature_grid)
                             for e in vision.experts})
    if keep_weight > 0 and set(init_from) != set(experts):
        raise ValueError("keep_weight holds fine-tuned trunks near their starting weights: init_from must name "
                         f"every trained expert ({sorted(experts)}), got {sorted(init_from)}")
    # the starting trunks, frozen (a copy draws no random numbers: without init_from the run is as before)
    reference = copy.deepcopy(experts).eval().requires_grad_(False) if init_from else None
    heads = nn.ModuleDict({e.name: ProbeHead(e.channels) for e in vision.experts})
    token_heads = nn.ModuleDict({e.name: TokenHead(e.channels) for e in vision.experts})
    word_heads = nn.ModuleDict({e.name: WordHead(e.channels) for e in vision.experts})
    box_heads = nn.ModuleDict({e.name: BoxHead(e.channels) for e in vision.experts})
    box_heads.to(device)
    experts.to(device).train()
    heads.to(device)
    token_heads.to(device)
    word_heads.to(device)
    params = list(experts.parameters())
    if scene_weight > 0:
        params += list(heads.parameters())
    if token_weight > 0:
        params += list(token_heads.parameters())
    if ocr_weight > 0:
        params += list(word_heads.parameters())
    if box_weight > 0:
        params += list(box_heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, steps // 20)
    loader = DataLoader(SceneStream(vision, batch_size, seed, ocr_batch), batch_size=None,
                        num_workers=num_workers, persistent_workers=False)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc="experts")
    started, step, losses = time.perf_counter(), 0, []
    for views, labels in loader:
        for group in optimizer.param_groups:  # linear warm-up, then constant (the run is short)
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        labels = labels.to(device)
        total = 0.0
        for n in experts:
            scenes = scene_weight > 0 or token_weight > 0 or box_weight > 0 or keep_weight > 0
            tokens = experts[n](views[n]) if scenes else None  # scenes unused otherwise
            crop = experts[n](views[f"{n}.crop"]) if token_weight > 0 or box_weight > 0 else None
            if scene_weight > 0:
                total = total + scene_weight * F.cross_entropy(heads[n](tokens).flatten(0, 1), labels.flatten())
            if token_weight > 0:
                dense = (token_heads[n].loss(tokens, views[f"{n}.tokens"].to(device))
                         + token_heads[n].loss(crop, views[f"{n}.crop.tokens"].to(device)))
                total = total + token_weight * dense
            if box_weight > 0:
                where = (box_heads[n].loss(tokens, views[f"{n}.boxes"].to(device))
                         + box_heads[n].loss(crop, views[f"{n}.crop.boxes"].to(device)))
                total = total + box_weight * where
            if keep_weight > 0:
                with torch.no_grad():
                    kept = reference[n](views[n])
                total = total + keep_weight * keep_loss(tokens, kept)
            if ocr_weight > 0:
                words = views["word.labels"].to(device)
                total = total + ocr_weight * word_heads[n].loss(experts[n](views[f"{n}.word"].to(device)), words)
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
    accuracy = held_out_accuracy(vision, experts, heads, seed, device) if scene_weight > 0 else {}
    token_accuracy = held_out_token_accuracy(vision, experts, token_heads, seed, device) if token_weight > 0 else {}
    word_accuracy, word_view_accuracy = (held_out_word_accuracy(vision, experts, word_heads, seed, HELD_OUT, device)
                                         if ocr_weight > 0 else ({}, {}))
    box_accuracy = held_out_box_accuracy(vision, experts, box_heads, seed, device) if box_weight > 0 else {}
    keep_cosine = held_out_keep_cosine(vision, experts, reference, seed, device) if reference is not None else {}
    paths = {}
    for name, expert in experts.items():
        paths[name] = out / f"{name}.safetensors"
        trunk = {k: v.detach().cpu().contiguous() for k, v in expert.trunk.state_dict().items()}
        write_atomic(paths[name], save(trunk))  # a reader never sees half a file
    return PretrainResult(paths, step, seconds, accuracy, losses, token_accuracy, word_accuracy, box_accuracy,
                          word_view_accuracy, keep_cosine)


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


@torch.no_grad()
def _per_expert_held_out(vision: VisionConfig, experts: nn.ModuleDict, seed: int,
                         score: Callable[[str, dict[str, torch.Tensor]], torch.Tensor]) -> dict[str, float]:
    """`score(expert name, held-out views)` -> a 0-dim accuracy, per expert, with the experts in eval mode."""
    views, _ = collate([scene_example(vision, seed + 7_919, i) for i in range(HELD_OUT)])
    experts.eval()
    acc = {n: float(score(n, views)) for n in experts}
    experts.train()
    return acc


def held_out_token_accuracy(vision: VisionConfig, experts: nn.ModuleDict, token_heads: nn.ModuleDict, seed: int,
                            device: str) -> dict[str, float]:
    def score(n: str, views: dict[str, torch.Tensor]) -> torch.Tensor:
        grid = experts[n](views[n].to(device))[:, 1:]
        labels = views[f"{n}.tokens"].to(device)
        right = (token_heads[n].colour(grid).argmax(-1) == labels[..., 0]) & (
            token_heads[n].shape(grid).argmax(-1) == labels[..., 1])
        return right[labels[..., 0] < NUM_COLORS].float().mean()

    return _per_expert_held_out(vision, experts, seed, score)


def held_out_keep_cosine(vision: VisionConfig, experts: nn.ModuleDict, reference: nn.ModuleDict, seed: int,
                         device: str) -> dict[str, float]:
    def score(n: str, views: dict[str, torch.Tensor]) -> torch.Tensor:
        x = views[n].to(device)
        return F.cosine_similarity(experts[n](x), reference[n](x), dim=-1).mean()

    return _per_expert_held_out(vision, experts, seed, score)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching rows of two (N, 4) x1, y1, x2, y2 box tensors (degenerate predictions score 0)."""
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)  # noqa: E731
    inter = w * h
    return inter / (area(a) + area(b) - inter).clamp(min=1e-9)


def held_out_box_accuracy(vision: VisionConfig, experts: nn.ModuleDict, box_heads: nn.ModuleDict, seed: int,
                          device: str) -> dict[str, float]:
    def score(n: str, views: dict[str, torch.Tensor]) -> torch.Tensor:
        boxes = views[f"{n}.boxes"].to(device)
        covered = ~boxes[..., 0].isnan()
        pred = box_heads[n](experts[n](views[n].to(device)))
        return (box_iou(pred[covered], boxes[covered]) >= 0.5).float().mean()

    return _per_expert_held_out(vision, experts, seed, score)


def _trainable(cfg, checkpoint: str | Path | None = None):
    """The expert's config for training: not frozen, from `checkpoint` (a trunk's weights) or its random init (the
    trunk is built, and its init drawn, either way: a fine-tuning stage draws the same heads as a run from scratch)."""
    return dataclasses.replace(cfg, frozen=False, checkpoint=str(checkpoint) if checkpoint else None,
                               checkpoint_format="timm")


def expert_overrides(paths: dict[str, Path], vision: VisionConfig) -> dict:
    """`model.overrides` that load the pretrained trunks, frozen, into a model with this vision config (an expert
    without a path keeps the config's own checkpoint)."""
    return {"vision": {"experts": [{"checkpoint": str(Path(paths[e.name]).resolve()), "frozen": True}
                                   if e.name in paths else {} for e in vision.experts]}}


def write_pretrained(config: SphinxXConfig, out: str | Path, only: list[str] | None = None,
                     **kwargs: Any) -> tuple[PretrainResult, Path]:
    """Pretrain `config`'s experts (those named in `only`, default all) into `out` (`kwargs` go to
    `pretrain_experts`) and write out/model.yaml: the config with those trunks as frozen experts (the others from
    `init_from` where it names them), ready for `model.preset`. Returns the result and that path."""
    out = Path(out)
    vision = config.vision
    if only is not None:
        unknown = sorted(set(only) - {e.name for e in vision.experts})
        if unknown:
            raise ValueError(f"no such experts {unknown}; the config has {[e.name for e in vision.experts]}")
        vision = dataclasses.replace(vision, experts=[e for e in vision.experts if e.name in only])
    init = kwargs.get("init_from") or {}
    kwargs["init_from"] = {n: p for n, p in init.items() if n in {e.name for e in vision.experts}} or None
    result = pretrain_experts(vision, out, **kwargs)
    model_yaml = out / "model.yaml"
    config.with_overrides(expert_overrides({**init, **result.paths}, config.vision)).save(model_yaml)
    return result, model_yaml
