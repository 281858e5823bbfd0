"""Fit per-token read-outs on frozen experts and save them beside the experts, for the `projector_token_heads` lever.

    python benchmarks/binding/fit_token_heads.py --experts DIR [--train 768] [--seed 0]

DIR holds <expert>.safetensors (`sphinx-x pretrain-experts --out DIR`). For each expert of nano, the linear
read-out of probe_tokens.py (standardised grid tokens of the global view and one sub-image view -> colour +
background and shape + background) is fitted on `--train` generated scenes and written, with the
standardisation, to DIR/token_heads.pt. `pretrain-experts --token-weight` trains such a head with the experts but
does not save it; this refits one on the frozen experts (the same objective, the same scenes generator).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from sphinx_x.config import SphinxXConfig
from sphinx_x.train.expert_pretrain import collate, scene_example
from sphinx_x.vision import VisionExpert

try:
    from probe_tokens import fit_head, grid_tokens
except ImportError:  # imported as a module of the benchmarks/binding folder from elsewhere
    from benchmarks.binding.probe_tokens import fit_head, grid_tokens


def fit(x: torch.Tensor, y: torch.Tensor, channels: int, steps: int = 500) -> dict[str, torch.Tensor]:
    head, mean, std = fit_head(x, y, channels, steps)
    return {"mean": mean, "std": std, **{k: v.detach().clone() for k, v in head.state_dict().items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experts", required=True, help="folder with <expert>.safetensors")
    p.add_argument("--train", type=int, default=768, help="scenes to fit on")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    vision = SphinxXConfig.from_name("nano").vision
    train, _ = collate([scene_example(vision, 1_000 + args.seed, i) for i in range(args.train)])
    heads = {}
    for cfg in vision.experts:
        cfg = dataclasses.replace(cfg, frozen=True, checkpoint=f"{args.experts}/{cfg.name}.safetensors")
        expert = VisionExpert(cfg, vision.feature_grid)
        heads[cfg.name] = fit(*grid_tokens(expert, train, cfg.name), cfg.channels)
    out = Path(args.experts) / "token_heads.pt"
    torch.save(heads, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
