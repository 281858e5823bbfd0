"""Training throughput: tokens/s, MFU and peak RSS of full optimizer steps on a 2:1-image batch.

    python benchmarks/bench_train.py [--models nano,100m] [--precisions fp32,bf16] [--steps 3]
                                     [--micro-batch 4] [--device cpu] [--threads 2]

Rows: each model x precision x skip tokens on/off (`vision.canvas.skip_padded_cells`). Every sample is
one 2:1 image (top-left anchored, so the bottom row of a 2x2 grid is padding: skipped, or encoded when
skip tokens are off) plus a prompt and an answer. A step is what the trainer does: bf16 autocast (or
fp32) forward and backward with the summed loss over supervised tokens, gradient clipping, AdamW.
MFU = model FLOPs (sphinx_x.train.flops: LLM 6ND + attention, experts on encoded views only) / the
peak of benchmarks/matmul_peak.py for the same dtype. Each row runs in its own process so its peak
RSS is its own. `100m` is nano's vision front end with a ~100M-parameter Llama (d 768, 16 layers);
`tiny` is the SPHINX-Tiny shape (random weights; for GPUs).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

MODELS = {
    "nano": {},
    "100m": {"llm": {"hidden_size": 768, "num_layers": 16, "num_heads": 12, "num_kv_heads": 4,
                     "intermediate_size": 2048}},
    "tiny": None,  # the `tiny` preset itself
}


def build(model_name: str, skip: bool, device: torch.device):
    from sphinx_x.config import PRESETS, SphinxXConfig, deep_merge
    from sphinx_x.model import SphinxX

    preset = "tiny" if model_name == "tiny" else "nano"
    data = deep_merge(PRESETS[preset], MODELS[model_name] or {})
    data = deep_merge(data, {"vision": {"canvas": {"skip_padded_cells": skip}}})
    config = SphinxXConfig.from_dict(data)
    torch.manual_seed(0)
    with torch.device(device):
        model = SphinxX(config)
    return model.train()


def batch(model, micro_batch: int, text_tokens: int = 96):
    """`micro_batch` samples, each [BOS] 2:1 image, prompt, answer (the answer half supervised)."""
    from PIL import Image

    from sphinx_x.canvas import collate_images, prepare_image
    from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
    from sphinx_x.image_tokens import visual_token_count

    vision = model.config.vision
    side = 4 * vision.experts[0].view_size
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 255, (side // 2, side, 3), generator=g, dtype=torch.uint8).numpy())
    n_img = visual_token_count(img.width, img.height, vision)
    vocab = model.config.llm.vocab_size
    ids, labels = [], []
    for _ in range(micro_batch):
        text = torch.randint(4, vocab, (text_tokens,), generator=g).tolist()
        row = [1] + [IMAGE_TOKEN_ID] * n_img + text
        ids.append(row)
        labels.append([IGNORE_INDEX] * (len(row) - text_tokens // 2) + text[text_tokens // 2:])
    views = [prepare_image(img, vision) for _ in range(micro_batch)]
    return {
        "input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
        "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long),
        "images": collate_images(views, vision),
        "num_visual_tokens": n_img * micro_batch, "num_text_tokens": (1 + text_tokens) * micro_batch,
    }


def run_row(args) -> dict:
    from sphinx_x.train.flops import batch_flops, measure_matmul_peak

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = args.precision == "bf16"
    model = build(args.model, args.skip, device)
    b = batch(model, args.micro_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
    flops = batch_flops(model.config, b)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else torch.autocast(device.type, enabled=False)
        with ctx:
            out = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                        labels=b["labels"].to(device), images=b["images"].to(device))
        (out.loss_sum / out.num_tokens).backward()
        torch.nn.utils.clip_grad_norm_(params, 8.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocations, kernel choice, AdamW state
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = (time.perf_counter() - t0) / args.steps
    peak = measure_matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, seconds=1.0)
    tokens = b["num_visual_tokens"] + b["num_text_tokens"]
    if device.type == "cuda":
        rss = torch.cuda.max_memory_allocated() / 2**30
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {
        "model": args.model, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "precision": args.precision, "skip": args.skip, "tokens_per_s": tokens / dt,
        "visual_tokens": b["num_visual_tokens"], "tokens": tokens, "step_s": dt, "mfu": flops / dt / peak,
        "peak_tflops": peak / 1e12, "peak_mem_gib": rss,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="nano,100m")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # internal: one row, JSON out
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--skip", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        args.skip = bool(args.skip)
        print(json.dumps(run_row(args)))
        return
    mem = "peak GPU mem GiB" if args.device.startswith("cuda") else "peak RSS GiB"
    print(f"device: {args.device}; micro-batch {args.micro_batch} samples, each one 2:1 image + 96 text tokens")
    print(f"| model | params (M) | precision | skip tokens | tokens/step | tokens/s | step s | MFU | {mem} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            for skip in (1, 0):
                cmd = [sys.executable, __file__, "--row", "--model", model, "--precision", precision,
                       "--skip", str(skip), "--steps", str(args.steps), "--micro-batch", str(args.micro_batch),
                       "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    print(f"| {model} | {precision} | skip={skip} | failed: {proc.stderr.strip()[-300:]} |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"| {r['model']} | {r['params_M']:.1f} | {r['precision']} | {'on' if r['skip'] else 'off'} "
                      f"| {r['tokens']} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {100 * r['mfu']:.1f}% "
                      f"| {r['peak_mem_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
