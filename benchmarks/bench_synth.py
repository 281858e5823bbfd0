"""Throughput of the synthetic corpus generator: samples/s on one core, overall and per domain.

    python benchmarks/bench_synth.py [--samples 600] [--seed 0] [--write DIR]

Times `build` (generate a sample, draw it, encode its PNG, serialise its row), the work one worker does
per sample; with --write it also times a full `generate_corpus` run into DIR (files included).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from sphinx_x.data.synth.corpus import build, generate_corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write", type=Path, default=None, help="also time writing a corpus of --samples train rows")
    args = p.parse_args()

    build((args.seed, "train", 0))  # warm up imports and font caches
    per_domain: dict[str, list[float]] = defaultdict(list)
    start = time.perf_counter()
    for i in range(args.samples):
        t0 = time.perf_counter()
        domain, _, _ = build((args.seed, "train", i))
        per_domain[domain].append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    print(f"build: {args.samples} samples in {total:.2f} s = {args.samples / total:.0f} samples/s (one core)")
    for domain, times in sorted(per_domain.items()):
        print(f"  {domain:<10} {len(times):>5} samples  {len(times) / sum(times):>7.0f} samples/s")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.write or Path(tmp) / "synth"
        start = time.perf_counter()
        generate_corpus(out, args.samples, 0, 0, seed=args.seed)
        total = time.perf_counter() - start
        rate = args.samples / total
        print(f"generate_corpus: {args.samples} samples written in {total:.2f} s = {rate:.0f} samples/s")


if __name__ == "__main__":
    main()
