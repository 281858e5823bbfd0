"""The experts' reading objective: the grid tokens over a word name it (the stand-in for CLIP's ability to read text
in images, which real ConvNeXt-XXL / DINOv2 features have and the scene objectives of sphinx_x/train/expert_pretrain.py
do not teach: a linear probe on those experts' tokens reads synth-bench's words at chance, docs/experiments.md
2026-12-02 and stop 38).

An example is one word of sphinx_x/data/synth/ocr.py's lexicon rendered as synth-bench renders it (`generate_ocr`
with task "ocr": random page size, font, ink, paper and place), seen three ways: the global view and the sub-image
view holding the word's centre, as the one-stage model sees them, and a zoomed view (a square holding the whole word,
from the word filling most of it to a sub-image view's size) where the word is large enough to learn from. The
objective is dense, like the per-token scene objective: every grid token whose cell holds at least `COVER` of the
word's box (or is itself covered that much by it) names the word, tokens off the word name background (at a lower
weight: they are most tokens), partly covered ones are left out. A page-level head (the word from the best token,
trained on crops widening to the whole page) read 16% of whole pages after a full run and cost the ConvNeXt its
shapes (stops 22-23); the dense objective, fine-tuning the scene-pretrained ConvNeXt, reads the word from the
sub-image views and keeps the shapes (stop 39).
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from sphinx_x.canvas import make_canvas, to_uint8_tensor
from sphinx_x.config import VisionConfig
from sphinx_x.data.synth.ocr import WORDS, generate_ocr

COVER = 0.3  # a token names the word when its cell holds this share of the word's box
BACKGROUND = len(WORDS)  # the class of tokens off the word
IGNORED = -100  # tokens that hold part of the word, less than COVER: no target
SUB_SIDE = 0.5  # a sub-image view's side in canvas units (2x2 grid)
ZOOM_FILL = 0.8  # the tightest zoomed view: the word's longer side is this share of the view
BACKGROUND_WEIGHT = 0.2  # the background class's weight in the loss (most tokens are off the word)


def word_token_labels(box: tuple[float, float, float, float], grid: int, word: int) -> torch.Tensor:
    """The word's box in view units (x1, y1, x2, y2; 0-1 across the view, beyond where the word leaves a sub-image
    view) -> (grid * grid,) targets in raster order: `word`, BACKGROUND or IGNORED (see the module doc)."""
    x1, y1, x2, y2 = box
    area = max((x2 - x1) * (y2 - y1), 1e-9)
    labels = []
    for row in range(grid):
        for col in range(grid):
            w = max(0.0, min(x2, (col + 1) / grid) - max(x1, col / grid))
            h = max(0.0, min(y2, (row + 1) / grid) - max(y1, row / grid))
            share = w * h / min(area, 1.0 / grid**2)  # of the word, or of the cell when the word is the larger
            labels.append(word if share >= COVER else BACKGROUND if share == 0 else IGNORED)
    return torch.tensor(labels)


def word_example(vision: VisionConfig, seed: int, index: int) -> tuple[dict[str, torch.Tensor], int]:
    """Page `index` of stream `seed`: each expert's global view and one sub-image view of it (uint8, 3 x r x r, under
    "<expert>" and "<expert>.crop"), their token targets (`word_token_labels`, under "labels" and "crop.labels") and
    the word's index in WORDS."""
    rng = random.Random(f"sphinx-x-expert-words:{seed}:{index}")
    sample = generate_ocr(rng, task="ocr")
    image, word = sample.image, WORDS.index(sample.bench["answer"])
    side = max(image.size)  # the canvas is the page padded to a square at the top left
    x1, y1, x2, y2 = (v / side for v in sample.meta["words"][0]["box"])
    i, j = int((y1 + y2) >= 1.0), int((x1 + x2) >= 1.0)  # the sub-image view holding the word's centre (2x2 grid)
    # the zoomed view: a square of side c (canvas units) holding the whole word, c log-uniform from the word filling
    # ZOOM_FILL of it up to a sub-image view's side
    tight = min(SUB_SIDE, max(x2 - x1, y2 - y1) / ZOOM_FILL)
    c = tight * (SUB_SIDE / tight) ** rng.random()
    zx = min(max(0.0, rng.uniform(x2 - c, x1)), 1.0 - c)
    zy = min(max(0.0, rng.uniform(y2 - c, y1)), 1.0 - c)
    grid = vision.feature_grid
    views = {"labels": word_token_labels((x1, y1, x2, y2), grid, word),
             "crop.labels": word_token_labels((2 * x1 - j, 2 * y1 - i, 2 * x2 - j, 2 * y2 - i), grid, word),
             "zoom.labels": word_token_labels(((x1 - zx) / c, (y1 - zy) / c, (x2 - zx) / c, (y2 - zy) / c), grid,
                                              word)}
    for expert in vision.experts:
        r = expert.view_size
        views[expert.name] = to_uint8_tensor(make_canvas(image, r, vision.canvas))
        crop = to_uint8_tensor(make_canvas(image, 2 * r, vision.canvas))[:, i * r:(i + 1) * r, j * r:(j + 1) * r]
        views[f"{expert.name}.crop"] = crop.contiguous()
        big = round(r / c)
        left, top = min(round(zx * big), big - r), min(round(zy * big), big - r)
        zoom = to_uint8_tensor(make_canvas(image, big, vision.canvas))[:, top:top + r, left:left + r]
        views[f"{expert.name}.zoom"] = zoom.contiguous()
    return views, word


def word_batch(vision: VisionConfig, seed: int, start: int, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pages start .. start + n - 1: {expert: (3n, 3, r, r) uint8, the n global views, the n sub-image views, then the
    n zoomed views}, their token targets (3n, grid * grid) under "labels", and the (n,) word indices."""
    examples = [word_example(vision, seed, start + i) for i in range(n)]
    stack = lambda key: torch.stack([v[key] for v, _ in examples])  # noqa: E731
    views = {e.name: torch.cat([stack(e.name), stack(f"{e.name}.crop"), stack(f"{e.name}.zoom")])
             for e in vision.experts}
    views["labels"] = torch.cat([stack("labels"), stack("crop.labels"), stack("zoom.labels")])
    return views, torch.tensor([w for _, w in examples])


class WordHead(nn.Module):
    """Each grid token -> logits over the OCR lexicon and background. The page's word is the word with the highest
    logit over all its tokens."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(channels, len(WORDS) + 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(tokens[:, 1:])[..., :BACKGROUND].amax(dim=1)  # token 0 is the view's summary

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.linear(tokens[:, 1:]).flatten(0, 1)
        weight = torch.ones(len(WORDS) + 1, device=logits.device)
        weight[BACKGROUND] = BACKGROUND_WEIGHT
        return F.cross_entropy(logits, labels.flatten(), weight=weight, ignore_index=IGNORED)


@torch.no_grad()
def held_out_word_accuracy(vision: VisionConfig, experts: nn.ModuleDict, heads: nn.ModuleDict, seed: int,
                           n: int, device: str) -> tuple[dict[str, float], dict[str, float]]:
    """Per expert, on `n` held-out pages (their own seed stream): the share whose word the head names from the
    global view, and from the sub-image view among pages whose sub-image view holds the word (`COVER` of it in one
    token's cell)."""
    views, words = word_batch(vision, seed + 7_919, 0, n)
    shown = (views["labels"][n:2 * n] == words[:, None]).any(dim=1)
    experts.eval()
    whole, sub = {}, {}
    for name in experts:
        right = heads[name](experts[name](views[name][:2 * n].to(device))).argmax(-1).cpu() == words.repeat(2)
        whole[name], sub[name] = float(right[:n].float().mean()), float(right[n:][shown].float().mean())
    experts.train()
    return whole, sub
