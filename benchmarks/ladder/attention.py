"""Which attention heads pick out the object a question names (the lookup rungs 3, 6, 9 and 10).

For each held-out item, one forward pass with eager attention; from one query position (`at`: "last", the
prompt's last position, which predicts the answer; or "key", the question's key word itself, the named shape
for rungs 3/9 or colour for rung 10) it sums each head's attention on the image's grid tokens that lie on the
named object ("target") and on the other objects ("other"). `share` = target / (target + other), averaged over
items: a head that looks the object up has a share near 100%, one that looks at objects without choosing sits
at `chance` (the target's share of the object tokens).

Ladder images are 256x256 squares, so no sub-image is skipped and an image's tokens are, view by view (the
global view, then the grid cells in raster order), `[start] summary GxG-grid [end]` (sphinx_x/image_tokens.py);
a grid token belongs to an object when its cell's centre lies inside the object's box.

    python benchmarks/ladder_attention.py runs/nano/final --rungs 9,10 --at last,key
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sphinx_x.canvas import collate_images
from sphinx_x.config import VisionConfig
from sphinx_x.constants import IMAGE_TOKEN_ID
from sphinx_x.image_tokens import visual_token_count
from sphinx_x.model import SphinxX

from .tasks import SIDE, Item, Task
from .train import Encoder

Region = tuple[float, float, float, float]  # a grid token's cell on the canvas: x0, y0, x1, y1 in [0, 1]
POSITIONS = ("last", "key")


def grid_regions(vision: VisionConfig) -> list[Region | str | None]:
    """One entry per image position of a square image: a grid token's canvas cell, "summary", or None for
    the view tags."""
    if any(e.own_projector for e in vision.experts):
        raise ValueError("grid_regions: experts with their own projector add token blocks this map does not know")
    g, grid = vision.feature_grid, vision.canvas.grid
    views = [(0.0, 0.0, 1.0)] + [((c % grid) / grid, (c // grid) / grid, 1 / grid) for c in range(grid * grid)]
    out: list[Region | str | None] = []
    for ox, oy, side in views:
        out += [None, "summary"]
        step = side / g
        out += [(ox + c * step, oy + r * step, ox + (c + 1) * step, oy + (r + 1) * step)
                for r in range(g) for c in range(g)]
        out.append(None)
    if len(out) != visual_token_count(SIDE, SIDE, vision):
        raise ValueError(f"grid_regions: {len(out)} positions, the model lays out "
                         f"{visual_token_count(SIDE, SIDE, vision)} for a {SIDE}x{SIDE} image")
    return out


def object_tokens(regions: list[Region | str | None], box: tuple[int, int, int, int]) -> list[int]:
    """Offsets (within the image's positions) of the grid tokens whose cell centre lies in `box` (pixels)."""
    out = []
    for i, r in enumerate(regions):
        if isinstance(r, tuple):
            cx, cy = (r[0] + r[2]) / 2 * SIDE, (r[1] + r[3]) / 2 * SIDE
            if box[0] <= cx <= box[2] and box[1] <= cy <= box[3]:
                out.append(i)
    return out


def key_word(task: Task, item: Item) -> str:
    if item.target is None:
        raise ValueError(f"rung {task.rung} ({task.name}) names no object")
    return item.target.color if task.name == "bind-shape-free" else item.target.shape


def query_position(model: SphinxX, task: Task, item: Item, ids: list[int], at: str) -> int:
    if at == "last":
        return len(ids) - 1
    if at != "key":
        raise ValueError(f"at must be one of {POSITIONS}, got {at!r}")
    word = key_word(task, item)
    pieces = [model.tokenizer.decode([i]).strip().lower() if i != IMAGE_TOKEN_ID else "" for i in ids]
    hits = [j for j, p in enumerate(pieces) if len(p) >= 2 and word.startswith(p)]
    if not hits:
        raise ValueError(f"no token of {word!r} in the prompt of {item.question!r}")
    return hits[-1]  # the word's last piece, in the question (the system prompt does not name objects)


@dataclass
class HeadAttention:
    """Per layer x head, averaged over the items: attention mass on the target's and the other objects'
    grid tokens (fractions of the query's attention), and the target's share of the two."""

    target: np.ndarray
    other: np.ndarray
    share: np.ndarray
    chance: float
    items: int


@torch.no_grad()
def lookup_attention(model: SphinxX, task: Task, items: list[Item], at: str = "last") -> HeadAttention:
    """Attention of every head from the `at` position to the named object vs the other objects."""
    if task.probes is None or not task.has_image:
        raise ValueError(f"rung {task.rung} ({task.name}) is not a lookup rung")
    enc = Encoder(model, task, False)
    regions = grid_regions(model.config.vision)
    impl = model.llm.config._attn_implementation
    model.llm.config._attn_implementation = "eager"  # the fused kernels return no attention weights
    was_training = model.training
    model.eval()
    try:
        layers, heads = model.llm.config.num_hidden_layers, model.llm.config.num_attention_heads
        target, other, share = (np.zeros((layers, heads)) for _ in range(3))
        chance, n = 0.0, 0
        for it in items:
            prompt = enc.prompt(it)
            ids = list(prompt.input_ids)
            first = ids.index(IMAGE_TOKEN_ID)
            mine = [first + i for i in object_tokens(regions, it.target.box)]
            rest = sorted({first + i for o in it.objects if o is not it.target for i in object_tokens(regions, o.box)}
                          - set(mine))
            if not mine or not rest:
                continue  # an object too small to cover a token centre: nothing to compare
            q = query_position(model, task, it, ids, at)
            emb = model.embed_inputs(torch.tensor([ids]), collate_images(prompt.images, model.config.vision))
            out = model.llm.model(inputs_embeds=emb, output_attentions=True)
            for layer, att in enumerate(out.attentions):
                row = att[0, :, q].float()  # (heads, positions)
                t, o = row[:, mine].sum(-1).numpy(), row[:, rest].sum(-1).numpy()
                target[layer] += t
                other[layer] += o
                share[layer] += t / np.maximum(t + o, 1e-12)
            chance += len(mine) / (len(mine) + len(rest))
            n += 1
    finally:
        model.llm.config._attn_implementation = impl
        model.train(was_training)
    if n == 0:
        raise ValueError("no item had both the target and another object under a grid token")
    return HeadAttention(target / n, other / n, share / n, chance / n, n)


def table(name: str, task: Task, at: str, res: HeadAttention) -> str:
    """Markdown: one row per layer, one column per head, "share% (target mass%)"."""
    heads = res.share.shape[1]
    lines = [f"\n{name}: rung {task.rung} ({task.name}), from the {at} position, {res.items} items, "
             f"chance share {100 * res.chance:.0f}%\n",
             "| layer | " + " | ".join(f"head {h}" for h in range(heads)) + " |",
             "|---|" + "---:|" * heads]
    for layer in range(res.share.shape[0]):
        cells = [f"{100 * res.share[layer, h]:.0f} ({100 * res.target[layer, h]:.0f})" for h in range(heads)]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
