"""Training throughput through the public `Trainer.train_step`: tokens/s, MFU and peak memory per row.

    python benchmarks/bench_train.py [--models nano,45m] [--precisions fp32,bf16] [--skip on,off]
                                     [--steps 3] [--micro-batch 4] [--device cpu] [--threads N] [--fsdp]
    python benchmarks/bench_train.py --gpu     # the `tiny` shape, bf16, FSDP2 on one GPU (see below)
    python benchmarks/bench_train.py --smoke   # the --gpu code path on the CPU at nano size (about a minute)

Every sample is one 2:1 image (top-left anchored, so the bottom row of a 2x2 grid is padding: skipped,
or encoded when skip tokens are off) plus 96 text tokens, the last half supervised. A row builds the
model with random weights from its config (no checkpoint is read), wraps it in a `Trainer` (`Trainer(cfg,
model=model)`) and times `trainer.train_step([batch])`: the step the trainer runs (autocast or fp32
forward and backward with the summed loss, clipping at norm 8, fused AdamW, schedule). One warm-up step,
then `--steps` timed steps between device synchronisations. With `--fsdp` the model is sharded with
FSDP2 (`sphinx_x.train.distributed.apply_fsdp`, the trainer's units) over a one-rank process group, as a
torchrun rank would be: on a GPU in bf16, parameters are gathered in bf16 and gradients reduced in fp32.
Frozen experts are kept in bf16 under bf16 precision (`train.frozen_experts_bf16`).

MFU = model FLOPs of the step (sphinx_x.train.flops: LLM 6 x body parameters x tokens + attention +
LM head on supervised positions; experts x1 when frozen, x3 when trained, on encoded views only) /
step time / the matmul peak measured by the probe of benchmarks/matmul_peak.py in the same dtype
(`--peak-tflops` replaces it, e.g. a data-sheet figure). Each row runs in its own process, so its peak
memory (host RSS, or GPU memory allocated) is its own.

Models: `nano`; `45m` (nano's vision front end with a d 640 x 10 Llama, as bench_vs_llava_next.py);
`100m` (d 768 x 16); `tiny` (the SPHINX-Tiny shape: TinyLlama-1.1B dims, CLIP ConvNeXt-XXL and DINOv2-g,
both frozen; 1295 visual tokens per 2:1 image, 779 with skip tokens).

`--gpu` = `--models tiny --precisions bf16 --skip on,off --fsdp --device cuda --steps 10 --micro-batch 4`:
two rows of about 1-2 minutes each on one H200 (model build, probe, warm-up, 10 steps), inside a
15-minute device budget. On a machine without this package installed, from the repository root:
`PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/bench_train.py --gpu`.
`--smoke` runs the same rows with `--models nano --device cpu --steps 2 --micro-batch 2` and the experts
frozen, so the code path is checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

MODELS = {
    "nano": {},
    "45m": {"llm": {"hidden_size": 640, "num_layers": 10, "num_heads": 10, "num_kv_heads": 5,
                    "intermediate_size": 1728}},
    "100m": {"llm": {"hidden_size": 768, "num_layers": 16, "num_heads": 12, "num_kv_heads": 4,
                     "intermediate_size": 2048}},
    "tiny": None,  # the `tiny` preset itself
}
GPU = {"models": "tiny", "precisions": "bf16", "skip": "on,off", "fsdp": True, "device": "cuda", "steps": 10,
       "micro_batch": 4}
SMOKE = {**GPU, "models": "nano", "device": "cpu", "steps": 2, "micro_batch": 2, "frozen": True}


def model_config(name: str, skip: bool):
    from sphinx_x.config import PRESETS, SphinxXConfig, deep_merge
    from sphinx_x.model import detach_weight_paths

    data = deep_merge(PRESETS["tiny" if name == "tiny" else "nano"], MODELS[name] or {})
    data = deep_merge(data, {"vision": {"canvas": {"skip_padded_cells": skip}}})
    return detach_weight_paths(SphinxXConfig.from_dict(data))  # random weights: no checkpoint is read


def train_config(args, out_dir: str, peak: float):
    from sphinx_x.train.config import TrainConfig

    return TrainConfig.from_dict({
        "model": {"frozen_experts": True if args.frozen else None},
        "optim": {"lr": 1e-5, "warmup_ratio": 0.0},
        "train": {"precision": args.precision, "device": args.device, "max_steps": 10**6, "peak_flops": peak},
        "output": {"dir": out_dir, "tensorboard": False, "progress": False},
    })


def one_rank_group(device: torch.device) -> None:
    """A process group of one rank (what torchrun would give a single process), for FSDP2."""
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def build_trainer(args, config, device: torch.device, peak: float, out_dir: str):
    """The model with random weights on `device`, set up as the trainer sets up one it builds, in a Trainer."""
    from sphinx_x.model import SphinxX
    from sphinx_x.train import distributed as D
    from sphinx_x.train.build import train_mode
    from sphinx_x.train.loop import Trainer

    cfg = train_config(args, out_dir, peak)
    torch.manual_seed(0)
    with torch.device(device):
        model = SphinxX(config)
    model = train_mode(model, cfg)  # experts frozen as configured, frozen trunks in bf16 under bf16
    info = D.DistInfo(device=device)
    if args.fsdp:
        one_rank_group(device)
        D.apply_fsdp(model, info, cfg.train.precision == "bf16")
    return Trainer(cfg, info, model=model)


def batch(config, micro_batch: int, text_tokens: int = 96) -> dict:
    """`micro_batch` samples, each [BOS] 2:1 image, prompt, answer (the answer half supervised)."""
    from PIL import Image

    from sphinx_x.canvas import collate_images, prepare_image
    from sphinx_x.constants import IGNORE_INDEX, IMAGE_TOKEN_ID
    from sphinx_x.image_tokens import visual_token_count

    vision = config.vision
    side = 4 * vision.experts[0].view_size
    g = torch.Generator().manual_seed(0)
    img = Image.fromarray(torch.randint(0, 255, (side // 2, side, 3), generator=g, dtype=torch.uint8).numpy())
    n_img = visual_token_count(img.width, img.height, vision)
    ids, labels = [], []
    for _ in range(micro_batch):
        text = torch.randint(4, config.llm.vocab_size, (text_tokens,), generator=g).tolist()
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
    if device.type == "cuda":  # one rank on the current GPU, as torchrun's LOCAL_RANK 0 would be
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = args.peak_tflops * 1e12 if args.peak_tflops else measure_matmul_peak(device, dtype, seconds=1.0)
    config = model_config(args.model, args.skip)
    b = batch(config, args.micro_batch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_build = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = build_trainer(args, config, device, peak, out_dir)
        build_s = time.perf_counter() - t_build
        first = trainer.train_step([b])  # warm-up: allocations, kernel choice, AdamW state
        sync()
        t0 = time.perf_counter()
        records = [trainer.train_step([b]) for _ in range(args.steps)]
        sync()
        dt = (time.perf_counter() - t0) / args.steps
    flops = batch_flops(config, b)
    tokens = b["num_visual_tokens"] + b["num_text_tokens"]
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    params = trainer.model.parameter_counts()["total"]
    return {
        "model": args.model, "params_M": params / 1e6, "precision": args.precision, "skip": args.skip,
        "fsdp": args.fsdp, "tokens": tokens, "visual_tokens": b["num_visual_tokens"], "step_s": dt,
        "tokens_per_s": tokens / dt, "mfu": flops / dt / peak, "peak_tflops": peak / 1e12, "peak_mem_gib": mem,
        "build_s": build_s, "losses": [first["loss"]] + [r["loss"] for r in records],
    }


def row_command(args, model: str, precision: str, skip: bool) -> list[str]:
    cmd = [sys.executable, os.path.abspath(__file__), "--row", "--model", model, "--precision", precision,
           "--skip-row", str(int(skip)), "--steps", str(args.steps), "--micro-batch", str(args.micro_batch),
           "--device", args.device]
    for flag, on in (("--fsdp", args.fsdp), ("--frozen", args.frozen)):
        if on:
            cmd.append(flag)
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    return cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="nano,45m")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--skip", default="on,off", help="skip tokens (vision.canvas.skip_padded_cells): on, off or both")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fsdp", action="store_true", help="shard with FSDP2 over a one-rank process group")
    p.add_argument("--frozen", action="store_true", help="freeze the vision experts (model.frozen_experts)")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU against this peak instead of the probe's")
    p.add_argument("--gpu", action="store_true", help="the tiny shape on one GPU (bf16, FSDP2)")
    p.add_argument("--smoke", action="store_true", help="the --gpu rows on the CPU at nano size")
    p.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # internal: one row, JSON out
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--precision", help=argparse.SUPPRESS)
    p.add_argument("--skip-row", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.row:
        args.skip = bool(args.skip_row)
        print(json.dumps(run_row(args)))
        return
    if args.gpu or args.smoke:
        for k, v in (SMOKE if args.smoke else GPU).items():
            setattr(args, k, v)
    if args.device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()}, " if torch.cuda.is_available() else ""
        mem = "peak GPU mem GiB"
    else:
        where, mem = f"CPU, {args.threads or torch.get_num_threads()} thread(s), ", "peak RSS GiB"
    print(f"{where}{'FSDP2 (one rank), ' if args.fsdp else ''}micro-batch {args.micro_batch} samples, each one "
          f"2:1 image + 96 text tokens; {args.steps} steps through Trainer.train_step after one warm-up", flush=True)
    print(f"| model | params (M) | precision | skip tokens | tokens/step | tokens/s | step s | MFU | peak TFLOP/s "
          f"| {mem} | build s | loss first -> last |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    failed = False
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            for skip in (s == "on" for s in args.skip.split(",")):
                proc = subprocess.run(row_command(args, model, precision, skip), capture_output=True, text=True)
                if proc.returncode:
                    failed = True
                    print(f"| {model} | - | {precision} | {'on' if skip else 'off'} | failed: "
                          f"{proc.stderr.strip()[-600:]} |", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"| {r['model']} | {r['params_M']:.1f} | {r['precision']} | {'on' if r['skip'] else 'off'} "
                      f"| {r['tokens']} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {100 * r['mfu']:.1f}% "
                      f"| {r['peak_tflops']:.3f} | {r['peak_mem_gib']:.2f} | {r['build_s']:.0f} "
                      f"| {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
