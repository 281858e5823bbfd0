"""Compare `nano` training recipes at a fixed number of optimizer steps: synth-bench per task.

The quickstart trains for a wall-clock budget on 2 CPU cores (about 1500 steps of 8 samples in 10 minutes).
This script replays that many steps, or any other number, for several recipe variants at once, usually on
a GPU where a 1500-step run takes about 2 minutes, so a change to the recipe can be judged on the scores it
reaches rather than on its training loss. Steps mean the same on both devices: the GPU sweep's `dense`
variant (1400 steps) scored 24.7 overall and the same recipe trained on 2 CPU cores scored 27.7, within the
noise of 20 rows per task.

    python benchmarks/bench_nano_recipe.py --device cuda --steps 1500 \
        --variant 'base' \
        --variant 'lr2e-3::--optim.lr=2e-3' \
        --variant 'grid2::--model.overrides={vision: {feature_grid: 2}}' \
        --variant 'data30k:30000:' --variant 'long:30000:--train.max_steps=5000'

A variant is `NAME[:TRAIN_SAMPLES[:OVERRIDES]]`: OVERRIDES are `sphinx-x train` options (shell-split),
applied after configs/nano.yaml and --steps. Variants run in parallel processes (`--parallel`); corpora with
the same size are generated once. Prints a markdown table (one row per variant) and writes
OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["color", "shape", "count", "ocr", "rec", "arithmetic", "spatial", "pope", "mc", "caption", "chart", "som",
         "code"]


def parse_variant(spec: str, default_samples: int) -> tuple[str, int, list[str]]:
    name, _, rest = spec.partition(":")
    samples, _, overrides = rest.partition(":")
    if not name:
        raise argparse.ArgumentTypeError(f"variant {spec!r}: the name is empty (NAME[:SAMPLES[:OVERRIDES]])")
    try:
        n = int(samples) if samples else default_samples
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"variant {spec!r}: TRAIN_SAMPLES must be an integer, got {samples!r}") from None
    return name, n, shlex.split(overrides)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sphinx_x.cli", *args]


def make_corpus(out: Path, samples: int, bench_rows: int, seed: int) -> Path:
    corpus = out / f"corpus_{samples}"
    if not (corpus / "synth.json").is_file():
        subprocess.run(cli("data", "synth", "--out", str(corpus), "--train", str(samples), "--val", "0", "--test",
                           str(bench_rows), "--seed", str(seed), "--workers", "4", "--quiet"),
                       check=True, stdout=subprocess.DEVNULL)
    return corpus


def run_variant(args: argparse.Namespace, name: str, corpus: Path, overrides: list[str]) -> dict:
    run = args.out / name
    started = time.perf_counter()
    train = cli("train", str(ROOT / "configs" / "nano.yaml"), "--data", str(corpus / "train.yaml"), "--out", str(run),
                "--max-steps", str(args.steps), f"--train.device={args.device}", f"--train.seed={args.seed}",
                "--output.resume=false", "--output.progress=false", "--output.tensorboard=false",
                "--output.save_every=0", "--output.log_every=50", *overrides)
    if args.max_minutes:
        train.append(f"--train.max_minutes={args.max_minutes}")
    done = subprocess.run(train, capture_output=True, text=True)
    if done.returncode:
        return {"name": name, "error": done.stderr.strip().splitlines()[-1:]}
    train_s = time.perf_counter() - started
    evaluated = subprocess.run(cli("eval", "--model", str(run / "final"), "--bench", str(corpus / "bench.jsonl"),
                                   "--output", str(run / "eval"), "--device", args.device, "--batch-size", "64",
                                   "--overwrite", "--quiet", "--json"), capture_output=True, text=True)
    if evaluated.returncode:
        return {"name": name, "error": evaluated.stderr.strip().splitlines()[-1:]}
    bench = next(iter(json.loads(evaluated.stdout).values()))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    last = records[-1]
    return {"name": name, "steps": last["step"], "train_s": round(train_s), "loss": round(last["loss"], 3),
            "overall": round(bench["score"], 1), **{t: round(v["score"], 1) for t, v in bench["tasks"].items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", action="append", default=[], help="NAME[:TRAIN_SAMPLES[:OVERRIDES]] (repeatable)")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps per variant (default 1500)")
    p.add_argument("--train-samples", type=int, default=8000, help="default corpus size (the quickstart's)")
    p.add_argument("--bench-rows", type=int, default=520, help="synth-bench rows (default 520 = 40 per task)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--parallel", type=int, default=4, help="variants trained at once")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap per variant (re-plans the schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench_nano_recipe"))
    args = p.parse_args()
    variants = [parse_variant(v, args.train_samples) for v in (args.variant or ["base"])]
    args.out.mkdir(parents=True, exist_ok=True)
    corpora = {n: make_corpus(args.out, n, args.bench_rows, args.seed) for n in sorted({v[1] for v in variants})}
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        results = list(pool.map(lambda v: run_variant(args, v[0], corpora[v[1]], v[2]), variants))
    with (args.out / "results.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    cols = ["steps", "train_s", "loss", *TASKS, "overall"]
    print(f"{args.device}, {args.bench_rows // len(TASKS)} rows per task\n")
    print("| variant | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | error: {' '.join(r['error'])} |")
        else:
            print(f"| {r['name']} | " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
