"""Command line of the ladder: which rungs, controls and seeds to run, the recipe and its overrides, output."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sphinx_x.fileio import write_json_atomic
from sphinx_x.train.config import load_train_config

from . import report
from .controls import CONTROLS, control_by_name
from .tasks import task_by_name
from .train import RunSpec, run_one

ROOT = Path(__file__).resolve().parents[2]
# The controls run beside each rung when --controls is not given (the cheap, telling ones).
KEY_CONTROLS = {1: ["base", "cnn-ceiling"], 2: ["base", "cnn-ceiling"], 3: ["base", "text", "cnn-ceiling"],
                4: ["base", "cnn-ceiling"], 5: ["base", "text"], 6: ["base", "text"], 7: ["base"], 8: ["base"],
                9: ["base", "text"], 10: ["base", "text"]}
OVERRIDE_SECTIONS = ("--model.", "--optim.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    epilog = ("Recipe overrides: any --model.KEY=VALUE / --optim.KEY=VALUE of `sphinx-x train`, e.g. "
              "--model.preset=runs/nano-experts/model.yaml --optim.lr=3e-4 '--model.overrides={llm: {num_layers: 8}}'.")
    ap = argparse.ArgumentParser(prog="benchmarks/ladder.py", description=__doc__, epilog=epilog)
    ap.add_argument("--rungs", default="1,2,3,4,5,6,7,8", help="comma list of rung numbers or names")
    ap.add_argument("--controls", default="key",
                    help=f"'key' (the default set per rung), 'all', or a comma list of: {', '.join(CONTROLS)}")
    ap.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    ap.add_argument("--batch", type=int, default=8, help="samples per step (the nano recipe's global batch)")
    ap.add_argument("--eval-every", type=int, default=50, help="steps between held-out evaluations")
    ap.add_argument("--eval-n", type=int, default=200, help="held-out samples per rung")
    ap.add_argument("--binding-n", type=int, default=50, help="held-out images probed for binding (rungs 3, 6, 9, 10)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default="runs/ladder", help="output folder (runs/*.json, table.md, ladder.png)")
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "nano.yaml"), help="training recipe YAML")
    ap.add_argument("--init-llm", default=None,
                    help="LLM weights (safetensors) to start from, e.g. a text-pretrained stand-in")
    ap.add_argument("--optim", default="adamw", choices=["adamw", "muon"], help="optimizer (muon: hidden LLM matrices)")
    ap.add_argument("--patch", action="append", default=[], metavar="FILE.py:FUNC",
                    help="call FUNC(model) on every built model (an experimental lever); repeatable")
    ap.add_argument("--save-llm", default=None, metavar="DIR",
                    help="write each run's trained LLM to DIR/r<rung>-<control>-s<seed>.safetensors")
    ap.add_argument("--dense", type=int, default=1,
                    help="sequences per training image, each asking about another object (rungs 3, 6, 9, 10); "
                         "--batch counts sequences")
    ap.add_argument("--experts", default=None, help="model.yaml of `sphinx-x pretrain-experts` (frozen-pre control)")
    ap.add_argument("--force", action="store_true", help="rerun runs whose JSON already exists")
    ap.add_argument("--quick", action="store_true", help="smoke run: 12 steps, batch 2, 8 held-out samples, seed 0")
    ap.add_argument("--report", nargs="+", metavar="DIR", help="print the table of DIR (or before/after of DIR1 DIR2)")
    args, rest = ap.parse_known_args(argv)
    bad = [a for a in rest if not a.startswith(OVERRIDE_SECTIONS)]
    if bad:
        ap.error(f"unrecognized arguments: {' '.join(bad)} "
                 "(recipe overrides are --model.KEY=VALUE / --optim.KEY=VALUE)")
    args.overrides = rest
    if args.quick:
        args.steps, args.batch, args.eval_every, args.eval_n, args.binding_n, args.seeds = 12, 2, 6, 8, 3, "0"
    return args


def plan(args: argparse.Namespace) -> list[tuple]:
    tasks = [task_by_name(s.strip()) for s in args.rungs.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    jobs = []
    for task in tasks:
        if args.controls == "key":
            names = KEY_CONTROLS[task.rung]
        elif args.controls == "all":
            names = [c for c, ctl in CONTROLS.items()
                     if task.rung in ctl.rungs and (args.experts or not ctl.needs_experts)]
        else:
            names = [c.strip() for c in args.controls.split(",") if c.strip()]
        for name in names:
            control = control_by_name(name)
            if task.rung not in control.rungs:
                continue
            jobs += [(task, control, seed) for seed in seeds]
    return jobs


def write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1)


def finish(out: Path) -> str:
    runs = report.load_runs(out)
    rows = report.summarize(runs)
    text = report.table(rows)
    write_json(out / "summary.json", rows)
    (out / "table.md").write_text(text + "\n")
    report.plot(runs, out / "ladder.png")
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        if len(args.report) > 2:
            raise SystemExit("--report takes one folder (its table) or two (before and after)")
        rows = [report.summarize(report.load_runs(d)) for d in args.report]
        print(report.table(rows[0]) if len(rows) == 1 else report.compare(rows[0], rows[1]))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    recipe_note = {"recipe": args.recipe, "overrides": args.overrides, "init_llm": args.init_llm,
                   "optim": args.optim, "experts": args.experts, "patches": args.patch,
                   "dense": args.dense}
    jobs = plan(args)
    print(f"ladder: {len(jobs)} runs, {args.steps} steps x batch {args.batch}, out {out}")
    for task, control, seed in jobs:
        path = out / "runs" / f"r{task.rung}-{control.name}-s{seed}.json"
        if path.exists() and not args.force:
            print(f"rung {task.rung} {task.name} / {control.name} / seed {seed}: done before, kept ({path})")
            continue
        print(f"rung {task.rung} {task.name} / {control.name} / seed {seed}", flush=True)
        spec = RunSpec(task, control, seed, args.steps, args.batch, args.eval_every, args.eval_n, args.binding_n,
                       load_train_config(args.recipe, args.overrides), args.init_llm, args.optim, args.experts,
                       args.patch, log=lambda s: print(s, flush=True), dense=args.dense,
                       save_llm=str(Path(args.save_llm) / f"{path.stem}.safetensors") if args.save_llm else None)
        t0 = time.time()
        result = run_one(spec)
        write_json(path, {"rung": task.rung, "task": task.name, "control": control.name, "seed": seed,
                          "steps": args.steps, "batch": args.batch, "eval_n": args.eval_n,
                          "wall_s": round(time.time() - t0, 1), "recipe": recipe_note, **result})
    print(finish(out))
    print(f"\ncurves: {out / 'ladder.png'}")
    return 0
