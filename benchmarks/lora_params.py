"""Trainable parameters and AdamW memory of LoRA against full fine-tuning, counted on the meta device.

No weights are read or allocated: the model is built on the meta device (as `sphinx-x info` counts), wrapped
with peft adapters there (sphinx_x/train/lora.py: apply_lora) and its trainable parameters are counted.

    python benchmarks/lora_params.py --preset tiny --ranks 8 16 64

Full fine-tuning trains what `sphinx-x train` trains without `train.lora`: the LLM, the projector(s), the
image tags and every expert the preset does not freeze. Memory per trainable parameter (fp32 master
weights, as the trainer keeps them): 4 bytes of gradient and 8 bytes of AdamW state (exp_avg, exp_avg_sq).
"""

from __future__ import annotations

import argparse
import sys

from sphinx_x.config import SphinxXConfig
from sphinx_x.model import SphinxX
from sphinx_x.train.config import LoraSection
from sphinx_x.train.lora import apply_lora

GRAD_BYTES = 4
ADAMW_BYTES = 8


def count(preset: str, lora: LoraSection | None) -> tuple[int, int]:
    """(trainable, total) parameters of `preset` as trained with `lora` (None: full fine-tuning)."""
    model = SphinxX.from_config_without_weights(SphinxXConfig.from_name(preset))
    if lora is not None:
        apply_lora(model, lora)
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3f} GiB" if n_bytes >= 2**28 else f"{n_bytes / 2**20:.1f} MiB"


def rows(preset: str, ranks: list[int]) -> list[tuple[str, int, int]]:
    out = [("full fine-tune", *count(preset, None))]
    for r in ranks:
        out.append((f"LoRA r={r}", *count(preset, LoraSection(r=r, alpha=2.0 * r))))
    r = ranks[0]
    out.append((f"LoRA r={r} + projector", *count(preset, LoraSection(r=r, alpha=2.0 * r, train_projector=True))))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 64])
    args = ap.parse_args(argv)
    targets = ", ".join(LoraSection().target_modules)
    table = rows(args.preset, args.ranks)
    base_total = table[0][2]  # the model without adapters
    print(f"preset {args.preset}: {base_total:,} parameters; LoRA on every decoder layer's {targets}; "
          "counted on the meta device\n")
    print("| setup | trainable params | share of all params | gradients (fp32) | AdamW state (fp32 m, v) |")
    print("|---|---:|---:|---:|---:|")
    for name, trainable, _ in table:
        print(f"| {name} | {trainable:,} | {100 * trainable / base_total:.2f}% | {_gb(trainable * GRAD_BYTES)} "
              f"| {_gb(trainable * ADAMW_BYTES)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
