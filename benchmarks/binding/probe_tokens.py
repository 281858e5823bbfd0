"""Linear probe of frozen vision experts' grid tokens: does each token say what is under it?

    python benchmarks/binding/probe_tokens.py [--experts DIR] [--train 768] [--test 256] [--seed 0]

For nano's experts (the packaged stand-ins by default, or DIR/<expert>.safetensors from `sphinx-x
pretrain-experts` / `build-standins`), encodes the global view and one sub-image view of generated scenes
(sphinx_x/train/expert_pretrain.py's `scene_example`), fits a linear read-out per expert on the frozen grid
tokens (standardised; Adam, full batch) for the per-token labels (the colour and the shape of the object covering
most of the token's patch, or background), and prints held-out accuracy on the tokens an object covers:
colour, shape, both, and background tokens named background. Chance for shape is 25% (4 shapes).

Why: nano's LLM learns to let the question pick an object when each token names its object cleanly (the
ladder's `oracle` control, docs/experiments.md), so this read-out says how far an expert is from that.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
import torch.nn.functional as F

from sphinx_x.config import SphinxXConfig
from sphinx_x.train.expert_pretrain import NUM_COLORS, TokenHead, collate, scene_example
from sphinx_x.vision import VisionExpert

VIEWS = ("", ".crop")  # the global view and one sub-image view


def grid_tokens(expert: VisionExpert, views: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, labels) over both views: (N, C) grid tokens (the summary token dropped) and (N, 2) labels."""
    with torch.no_grad():
        x = torch.cat([expert(views[name + v])[:, 1:] for v in VIEWS]).flatten(0, 1)
    y = torch.cat([views[f"{name}{v}.tokens"] for v in VIEWS]).flatten(0, 1)
    return x, y


def fit_head(x: torch.Tensor, y: torch.Tensor, channels: int, steps: int = 500):
    """The linear read-out (colour + background, shape + background) on standardised tokens: (head, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-5
    head = TokenHead(channels)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    z = (x - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(head.colour(z), y[:, 0]) + F.cross_entropy(head.shape(z), y[:, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head, mean, std


def probe(x_train, y_train, x_test, y_test, channels: int, steps: int = 500) -> dict[str, float]:
    head, mean, std = fit_head(x_train, y_train, channels, steps)
    with torch.no_grad():
        x = (x_test - mean) / std
        colour = head.colour(x).argmax(-1) == y_test[:, 0]
        shape = head.shape(x).argmax(-1) == y_test[:, 1]
    on_object = y_test[:, 0] < NUM_COLORS
    return {"object tokens": int(on_object.sum()), "colour": float(colour[on_object].float().mean()),
            "shape": float(shape[on_object].float().mean()), "both": float((colour & shape)[on_object].float().mean()),
            "background": float(colour[~on_object].float().mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", default=None, help="folder with <expert>.safetensors (default: the packaged stand-ins)")
    p.add_argument("--train", type=int, default=768, help="scenes to fit the read-out on")
    p.add_argument("--test", type=int, default=256, help="held-out scenes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.experts is None:
        from sphinx_x.standins import standins_dir

        args.experts = str(standins_dir() / "experts")
    torch.manual_seed(args.seed)
    vision = SphinxXConfig.from_name("nano").vision
    train, _ = collate([scene_example(vision, 1_000 + args.seed, i) for i in range(args.train)])
    test, _ = collate([scene_example(vision, 7_919 + args.seed, i) for i in range(args.test)])
    print(f"experts: {args.experts}; {args.train} / {args.test} scenes, global view + one sub-image view\n")
    print("| expert | object tokens | colour % | shape % | both % | background % |")
    print("|---|---:|---:|---:|---:|---:|")
    for cfg in vision.experts:
        cfg = dataclasses.replace(cfg, frozen=True, checkpoint=f"{args.experts}/{cfg.name}.safetensors")
        expert = VisionExpert(cfg, vision.feature_grid)
        r = probe(*grid_tokens(expert, train, cfg.name), *grid_tokens(expert, test, cfg.name), cfg.channels)
        print(f"| {cfg.name} | {r['object tokens']} | {100 * r['colour']:.1f} | {100 * r['shape']:.1f} | "
              f"{100 * r['both']:.1f} | {100 * r['background']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
