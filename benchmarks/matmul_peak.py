"""Measure the hardware's achievable peak FLOP/s with square matmuls (the denominator of MFU).

    python benchmarks/matmul_peak.py [--device cpu|cuda] [--dtypes fp32,bf16] [--n N] [--seconds S]

Pass the printed value to training as `--train.peak_flops=...` to skip the trainer's own short probe.
"""

from __future__ import annotations

import argparse

import torch

from sphinx_x.train.flops import measure_matmul_peak

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--n", type=int, default=None, help="matrix side (default 1024 on CPU, 8192 on GPU)")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    print(f"{'dtype':<6} {'TFLOP/s':>10}")
    for d in args.dtypes.split(","):
        peak = measure_matmul_peak(args.device, DTYPES[d], n=args.n, seconds=args.seconds)
        print(f"{d:<6} {peak / 1e12:>10.4f}")


if __name__ == "__main__":
    main()
