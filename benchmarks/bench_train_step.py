"""One training step (forward, backward, AdamW) through `Trainer.train_step` vs a plain step, same model.

    python benchmarks/bench_train_step.py [--sizes nano,45m] [--kinds text,image] [--reps 5]
                                          [--batch 4] [--text 256] [--threads 1] [--compile] [--profile N]

One process. For each size a model is built once (seed 0) and copied, so both sides train identical
weights. The two steps alternate, `reps` times each after one warm-up each; medians are reported with
the spread (min-max). fp32, no activation checkpointing, gradient clipping at 8 on both sides. Sizes:
`nano` (d 256 x 4 layers), `25m`, `45m` (d 640 x 10 layers, GQA 10/5: the larger size of
bench_vs_llava_next.py), `100m`; all with nano's vision front end and vocabulary.

Plain steps (what a user writes with transformers and torch, torch's default AdamW):
- `text`: the transformers `*ForCausalLM` inside the model, called the standard way
  (`llm(input_ids, attention_mask, labels).loss.backward()`, `clip_grad_norm_`, `opt.step()`,
  `opt.zero_grad()`); ours runs the whole SPHINX-X model on the same text-only batch.
- `image`: the SPHINX-X model called directly (`model(..., images=...)`, loss_sum / tokens, backward,
  clip, step); each sample is one 2:1 image plus `text` tokens.
Ours: `Trainer.train_step([batch])` with the trainer's defaults (fused AdamW, foreach clipping).

Each step is timed twice: wall clock, and the CPU time of this process (`time.process_time`). On a
shared CPU the wall time includes the time other jobs held the core; the CPU time is what the step
itself cost, so the ratio and MFU by CPU time are the ones that stay stable on a busy machine.
MFU = model FLOPs (sphinx_x.train.flops, the same formula for both sides: 6 x body parameters x tokens
+ attention + LM head on supervised positions, plus the vision experts) / the fp32 matmul peak of
benchmarks/matmul_peak.py's probe per thread, measured at start and end of each size with the same
clock (the lower of the two is used, so a busy machine shows).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

SIZES = {
    "nano": {},
    "25m": {"llm": {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 4,
                    "intermediate_size": 1408, "vocab_size": 8192}},
    "45m": {"llm": {"hidden_size": 640, "num_layers": 10, "num_heads": 10, "num_kv_heads": 5,
                    "intermediate_size": 1728}},  # the larger size of bench_vs_llava_next.py
    "100m": {"llm": {"hidden_size": 768, "num_layers": 16, "num_heads": 12, "num_kv_heads": 4,
                     "intermediate_size": 2048}},
}


def build(size: str):
    from sphinx_x.config import PRESETS, SphinxXConfig, deep_merge
    from sphinx_x.model import SphinxX

    config = SphinxXConfig.from_dict(deep_merge(PRESETS["nano"], SIZES[size]))
    torch.manual_seed(0)
    return SphinxX(config).train()


def make_batch(model, kind: str, rows: int, text: int) -> dict:
    """A collated micro-batch (sphinx_x.data's format): [BOS] (2:1 image) text; the last half supervised."""
    from PIL import Image

    from sphinx_x.canvas import collate_images, prepare_image
    from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
    from sphinx_x.image_tokens import visual_token_count

    g = torch.Generator().manual_seed(0)
    vocab = model.config.llm.vocab_size
    vision = model.config.vision
    n_img, images = 0, None
    if kind == "image":
        side = 4 * vision.experts[0].view_size
        img = Image.fromarray(torch.randint(0, 255, (side // 2, side, 3), generator=g, dtype=torch.uint8).numpy())
        n_img = visual_token_count(img.width, img.height, vision)
        images = collate_images([prepare_image(img, vision) for _ in range(rows)], vision)
    ids, labels = [], []
    for _ in range(rows):
        words = torch.randint(4, vocab, (text,), generator=g).tolist()
        row = [1] + [IMAGE_TOKEN_ID] * n_img + words
        ids.append(row)
        labels.append([IGNORE_INDEX] * (len(row) - text // 2) + words[text // 2:])
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.ones(rows, len(ids[0]), dtype=torch.long), "images": images,
            "num_visual_tokens": n_img * rows, "num_text_tokens": (1 + text) * rows}


def plain_step_fn(model, batch: dict, kind: str):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)

    def step():
        if kind == "text":
            loss = model.llm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"], images=batch["images"])
            loss = out.loss_sum / out.num_tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 8.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def trainer_for(model, compile_layers: bool, peak: float, fused: bool = True):
    from sphinx_x.train.config import TrainConfig
    from sphinx_x.train.loop import Trainer

    cfg = TrainConfig.from_dict({
        "optim": {"lr": 1e-5, "warmup_ratio": 0.0, "fused": fused},
        "train": {"precision": "fp32", "device": "cpu", "max_steps": 10**6, "compile": compile_layers,
                  "peak_flops": peak},
        "output": {"dir": "/tmp/bench_train_step", "tensorboard": False, "progress": False},
    })
    return Trainer(cfg, model=model)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def profile_sides(sides: dict, top: int) -> None:
    """torch.profiler of one step per side: the ops with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    for name, fn in sides.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n### {name}: top {top} ops by self CPU time\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def run_size(size: str, kind: str, args) -> dict:
    from sphinx_x.train.flops import batch_flops, measure_matmul_peak

    def peaks() -> tuple[float, float]:  # wall-clock and CPU-time matmul peaks
        return (measure_matmul_peak("cpu", torch.float32, seconds=1.0),
                measure_matmul_peak("cpu", torch.float32, seconds=1.0, clock=time.process_time))

    peak0 = peaks()
    base = build(size)
    batch = make_batch(base, kind, args.batch, args.text)
    flops = batch_flops(base.config, batch)
    tokens = batch["num_visual_tokens"] + batch["num_text_tokens"]
    plain = plain_step_fn(copy.deepcopy(base), batch, kind)
    sides = {"plain": plain}
    trainer = trainer_for(copy.deepcopy(base), False, peak0[0])
    sides["ours"] = lambda: trainer.train_step([batch])
    if args.unfused:
        unfused = trainer_for(copy.deepcopy(base), False, peak0[0], fused=False)
        sides["ours, optim.fused=false"] = lambda: unfused.train_step([batch])
    if args.compile:
        compiled = trainer_for(copy.deepcopy(base), True, peak0[0])
        sides["ours+compile"] = lambda: compiled.train_step([batch])
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for fn in sides.values():
        fn()  # warm-up: allocations, AdamW state (and compilation)
    if args.profile:
        profile_sides(sides, args.profile)
    for _ in range(args.reps):
        for name, fn in sides.items():
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    peak1 = peaks()
    peak_wall, peak_cpu = min(peak0[0], peak1[0]), min(peak0[1], peak1[1])
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"size": size, "kind": kind, "params_M": sum(p.numel() for p in base.parameters()) / 1e6,
            "llm_M": sum(p.numel() for p in base.llm.parameters()) / 1e6,
            "tokens": tokens, "peaks": (peak0, peak1), "times": wall, "median": med, "median_cpu": med_cpu,
            "mfu": {k: flops / v / peak_wall for k, v in med.items()},
            "mfu_cpu": {k: flops / v / (peak_cpu * args.threads) for k, v in med_cpu.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="nano,25m")
    p.add_argument("--kinds", default="text,image")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--text", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time train.compile (torch.compile per layer)")
    p.add_argument("--unfused", action="store_true", help="also time optim.fused=false (torch's default AdamW)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print torch.profiler's top N ops of one step per side (after the warm-up)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.threads} thread(s), fp32; batch {args.batch} x {args.text} text tokens; {args.reps} reps")
    print("| size | params (M) | LLM (M) | batch | tokens | side | step s (median) | spread | tokens/s "
          "| ratio vs plain | CPU s/step | ratio by CPU time | MFU wall | MFU CPU time "
          "| peak TFLOP/s wall / CPU, start - end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for kind in args.kinds.split(","):
            r = run_size(size, kind, args)
            (w0, c0), (w1, c1) = r["peaks"]
            peaks = f"{w0 / 1e12:.3f}/{c0 / 1e12:.3f} - {w1 / 1e12:.3f}/{c1 / 1e12:.3f}"
            for side, med in r["median"].items():
                spread = f"{min(r['times'][side]):.3f}-{max(r['times'][side]):.3f}"
                cpu = r["median_cpu"][side]
                print(f"| {size} | {r['params_M']:.1f} | {r['llm_M']:.1f} | {kind} | {r['tokens']} | {side} "
                      f"| {med:.3f} | {spread} | {r['tokens'] / med:.0f} | {r['median']['plain'] / med:.2f}x "
                      f"| {cpu:.3f} | {r['median_cpu']['plain'] / cpu:.2f}x | {100 * r['mfu'][side]:.1f}% "
                      f"| {100 * r['mfu_cpu'][side]:.1f}% | {peaks} |", flush=True)


if __name__ == "__main__":
    main()
