"""`sphinx-x quickstart` over several seeds: per-task mean and spread, with the images and blind.

    python benchmarks/quickstart_seeds.py [--seeds 0,1,2] [--root runs/quickstart-seeds] [--md FILE] \
        [-- QUICKSTART OPTIONS, e.g. --minutes 10 --from-scratch]

Runs the quickstart once per seed, one after the other, into ROOT/seed<S> (a subprocess each, its output in
ROOT/seed<S>.log), then reads every run's OUT/eval/scores.json and OUT/train/metrics.jsonl and prints two
markdown tables, also written to --md (default ROOT/seeds.md):
  - per synth-bench task: the score with images and blind (question only) as mean ± standard deviation over
    the seeds (min-max beside it), and what the images add (mean);
  - per seed: wall time of the whole command (start-up included), the one-stage steps it ran, the overall
    score with images and blind, and the run's own summary line (total planned and wall minutes).
The runs share the machine with whatever else runs on it: the wall times say how busy it was, the scores
do not depend on it (the quickstart plans fixed steps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sphinx_x.commands.quickstart import BLIND, steps_run
from sphinx_x.fileio import write_atomic

BENCH = "synth-bench"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--root", default="runs/quickstart-seeds", help="one quickstart folder per seed under it")
    p.add_argument("--md", default=None, help="markdown output (default ROOT/seeds.md)")
    p.add_argument("--reuse", action="store_true", help="read runs already in ROOT instead of running them")
    return p.parse_args(own), extra


def run_seed(root: Path, seed: int, extra: list[str]) -> float:
    """One quickstart run into ROOT/seed<seed>; returns its wall seconds."""
    out = root / f"seed{seed}"
    cmd = [sys.executable, "-m", "sphinx_x.cli", "quickstart", "--out", str(out), "--seed", str(seed), "--quiet",
           *extra]
    print(f"seed {seed}: {' '.join(cmd[2:])}", flush=True)
    started = time.perf_counter()
    with open(root / f"seed{seed}.log", "w", encoding="utf-8") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"seed {seed}: quickstart exited with {rc}; see {root / f'seed{seed}.log'}")
    write_atomic(out / "wall_seconds.txt", f"{seconds:.1f}\n")
    return seconds


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f} ({min(values):.1f}-{max(values):.1f})"


def task_table(scores: dict[int, dict]) -> str:
    """Per task: images and blind as mean ± sd (min-max) over the seeds, and the images' mean gain."""
    first = next(iter(scores.values()))
    lines = [f"| task | metric | n per seed | with images, mean ± sd (min-max) over {len(scores)} seeds | blind | "
             "images add (mean) |", "|---|---|---:|---:|---:|---:|"]
    for task, t in first[BENCH]["tasks"].items():
        img = [s[BENCH]["tasks"][task]["score"] for s in scores.values()]
        blind = [s[BLIND]["tasks"][task]["score"] for s in scores.values()]
        lines.append(f"| {task} | {t['metric']} | {t['n']} | {spread(img)} | {spread(blind)} | "
                     f"{statistics.mean(img) - statistics.mean(blind):+.1f} |")
    img = [s[BENCH]["score"] for s in scores.values()]
    blind = [s[BLIND]["score"] for s in scores.values()]
    lines.append(f"| **overall** | mean over tasks | {first[BENCH]['n']} | **{spread(img)}** | **{spread(blind)}** | "
                 f"**{statistics.mean(img) - statistics.mean(blind):+.1f}** |")
    return "\n".join(lines) + "\n"


def seed_table(root: Path, scores: dict[int, dict]) -> str:
    lines = ["| seed | wall (command) | one-stage steps | overall with images | blind | run summary total |",
             "|---:|---:|---:|---:|---:|---|"]
    for seed, s in scores.items():
        out = root / f"seed{seed}"
        wall_file = out / "wall_seconds.txt"
        wall = f"{float(wall_file.read_text()) / 60:.1f} min" if wall_file.is_file() else "?"
        summary = out / "summary.md"
        total = next((line for line in summary.read_text().splitlines() if "**total**" in line), "") \
            if summary.is_file() else ""
        total = " / ".join(c.strip().strip("*") for c in total.split("|")[3:5]) if total else "?"
        lines.append(f"| {seed} | {wall} | {steps_run(out / 'train' / 'metrics.jsonl')} | {s[BENCH]['score']:.1f} | "
                     f"{s[BLIND]['score']:.1f} | planned / wall: {total} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        if not args.reuse:
            run_seed(root, seed, extra)
    scores = {seed: json.loads((root / f"seed{seed}" / "eval" / "scores.json").read_text())["benchmarks"]
              for seed in seeds}
    options = " ".join(extra) or "(defaults)"
    text = (f"`sphinx-x quickstart {options}`, seeds {', '.join(map(str, seeds))}\n\n" + task_table(scores) + "\n"
            + seed_table(root, scores))
    print(text, end="")
    md = Path(args.md) if args.md else root / "seeds.md"
    write_atomic(md, text)
    print(f"written to {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
