"""`sphinx-x quickstart [--out runs/quickstart] [--minutes 10] [--seed 0]`: the embedded default end to end.

Generates the synthetic corpus, pretrains nano's two vision experts on synthetic scenes (the stand-in for
the paper's pretrained CLIP and DINOv2, `sphinx-x pretrain-experts`), trains the `nano` preset on the CPU
within the time budget with those experts frozen, evaluates it on synth-bench (per-task table), and
answers one grounding question about a generated image, drawing the boxes of the answer. Everything is
written under --out:

    OUT/data/              the corpus (`sphinx-x data synth`) and synth-bench (OUT/data/bench.jsonl)
    OUT/experts/           the pretrained experts and the model config that uses them (model.yaml)
    OUT/train/final/       the trained model directory (`sphinx-x chat --model OUT/train/final`)
    OUT/train/...          checkpoints, metrics.jsonl, loss_lr.png
    OUT/eval/              predictions, scores.json, scores.md
    OUT/answer.png         the demo answer's boxes drawn on its image

--minutes bounds the whole command: corpus generation and evaluation are timed or reserved, the experts
get EXPERTS_SHARE of the rest and the training loop the remainder (`train.max_minutes`, whose schedule
spans it). The training recipe is configs/nano.yaml's (`RECIPE` below; a test keeps the two equal).

Exit codes: 0 done; 2 bad arguments or an output directory that cannot be used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sphinx_x.commands.argtypes import positive_float, positive_int

# configs/nano.yaml without its paths (tests/test_quickstart.py checks that the two agree).
RECIPE: dict[str, Any] = {
    "model": {"preset": "nano"},
    "data": {"max_len": 512, "num_workers": 1},
    "optim": {"lr": 1.0e-3, "betas": [0.9, 0.95], "weight_decay": 0.0, "warmup_ratio": 0.03, "grad_clip": 8.0},
    "train": {"max_steps": 5000, "global_batch": 8, "micro_batch": 8, "precision": "fp32", "seed": 0,
              "device": "cpu", "cpu_threads": 2},
}
TRAIN_SAMPLES = 8000  # distinct training samples (more than the budget can see twice)
BENCH_ROWS = 260  # synth-bench: 20 rows per task
EVAL_SECONDS_PER_ROW = 0.1  # reserved for evaluation (260 rows took ~6 s on 2 idle cores)
SAVE_RESERVE_S = 10.0  # final checkpoint + model directory + the demo answer
DEMO_QUESTION = "Describe the image concisely. Include the bounding box for each mentioned object."
# Share of the training time spent pretraining the experts, capped at EXPERTS_MAX_STEPS steps of 64 scenes.
# README "Training nano": 4.1 of 9.1 minutes read colours better than 2.5 (57.5 vs 52.5 on 40 rows).
EXPERTS_SHARE = 0.45
EXPERTS_MAX_STEPS = 2000


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("quickstart", help="synthetic data -> train nano on CPU -> synth-bench -> a demo answer",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--minutes", type=positive_float, default=10.0,
                   help="wall-clock budget of the whole command (default 10)")
    p.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    p.add_argument("--train-samples", type=positive_int, default=TRAIN_SAMPLES,
                   help=f"training samples to generate (default {TRAIN_SAMPLES})")
    p.add_argument("--bench-rows", type=positive_int, default=BENCH_ROWS,
                   help=f"synth-bench rows (default {BENCH_ROWS} = 20 per task)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help=f"cap on optimizer steps (default {RECIPE['train']['max_steps']}; the budget ends first)")
    p.add_argument("--expert-steps", type=positive_int, default=EXPERTS_MAX_STEPS,
                   help=f"cap on expert pretraining steps (default {EXPERTS_MAX_STEPS}; the budget ends first)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def train_config(out: Path, mix: Path, train_minutes: float, seed: int, max_steps: int | None, progress: bool,
                 model_config: Path | None = None):
    """The TrainConfig of the quickstart: RECIPE plus this run's paths, seed and time budget; `model_config`
    (the pretrained experts' model.yaml) replaces the bare preset."""
    from sphinx_x.train.config import TrainConfig, deep_merge

    data = deep_merge(RECIPE, {
        **({"model": {"preset": str(model_config)}} if model_config is not None else {}),
        "data": {"mix": str(mix)},
        "train": {"seed": seed, "max_minutes": train_minutes,
                  **({"max_steps": max_steps} if max_steps is not None else {})},
        "output": {"dir": str(out), "save_every": 0, "keep_last": 1, "resume": False, "tensorboard": False,
                   "progress": progress, "log_every": 10},
    })
    return TrainConfig.from_dict(data)


def demo_answer(model: Any, corpus: Path, bench_rows: list[dict[str, Any]], out_png: Path) -> tuple[str, str, str]:
    """Ask DEMO_QUESTION about the image of the first REC row of synth-bench (a held-out scene), draw the
    answer's boxes onto it; returns (image path, question, answer)."""
    from PIL import Image

    from sphinx_x.infer.draw import draw_answer

    row = next((r for r in bench_rows if r.get("task") == "rec"), None) or next(r for r in bench_rows if "image" in r)
    image_path = corpus / row["image"]
    image = Image.open(image_path).convert("RGB")
    answer, _ = model.chat(image, DEMO_QUESTION, temperature=0.0, max_new_tokens=96)
    drawing, _ = draw_answer(image, answer, anchor=model.config.vision.canvas.pad_anchor)
    drawing.save(out_png)
    return str(image_path), DEMO_QUESTION, answer


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    budget_s = args.minutes * 60
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"sphinx-x quickstart: error: {out}: exists and is not a directory", file=sys.stderr)
        return 2
    if out.is_dir() and (out / "train").exists() and not (out / "data" / "synth.json").is_file():
        print(f"sphinx-x quickstart: error: {out}: holds a train/ folder that no quickstart wrote", file=sys.stderr)
        return 2

    import shutil

    import torch

    from sphinx_x.commands.pretrain_experts import write_pretrained
    from sphinx_x.config import SphinxXConfig
    from sphinx_x.data.synth import generate_corpus
    from sphinx_x.eval.benchmarks import load_rows, resolve_benchmark
    from sphinx_x.eval.harness import evaluate, scores_markdown
    from sphinx_x.model import SphinxX
    from sphinx_x.train.loop import train

    progress = not args.quiet
    corpus = out / "data"
    print(f"[1/5] generating the synthetic corpus ({args.train_samples} training samples, "
          f"{args.bench_rows} synth-bench rows) into {corpus}", flush=True)
    try:
        generate_corpus(corpus, args.train_samples, 0, args.bench_rows, seed=args.seed, progress=progress)
    except (FileExistsError, ValueError) as e:
        print(f"sphinx-x quickstart: error: {e}", file=sys.stderr)
        return 2

    reserve_s = args.bench_rows * EVAL_SECONDS_PER_ROW + SAVE_RESERVE_S
    train_s = budget_s - (time.perf_counter() - started) - reserve_s
    if train_s < 2:
        print(f"note: --minutes {args.minutes} leaves no time to train after data generation and the evaluation "
              "reserve; training 2 seconds", file=sys.stderr)
        train_s = 2.0
    shutil.rmtree(out / "train", ignore_errors=True)  # a fresh model every time (resume would mix budgets)
    preset = SphinxXConfig.from_name("nano")
    print(f"[2/5] pretraining nano's vision experts on synthetic scenes for {EXPERTS_SHARE * train_s / 60:.1f} min",
          flush=True)
    experts, model_yaml = write_pretrained(preset, out / "experts", steps=args.expert_steps,
                                           max_seconds=EXPERTS_SHARE * train_s, seed=args.seed, progress=progress)
    print("      held-out: " + ", ".join(f"{n} names {100 * a:.0f}% of the objects' shapes"
                                         for n, a in experts.accuracy.items()) + " (chance 20%)", flush=True)
    train_s = budget_s - (time.perf_counter() - started) - reserve_s
    cfg = train_config(out / "train", corpus / "train.yaml", max(train_s, 1.0) / 60, args.seed, args.max_steps,
                       progress, model_yaml)
    print(f"[3/5] training nano (experts frozen) for {max(train_s, 1.0) / 60:.1f} min on CPU", flush=True)
    final = train(cfg)

    print("[4/5] evaluating on synth-bench", flush=True)
    torch.set_num_threads(cfg.train.cpu_threads or torch.get_num_threads())
    model = SphinxX.from_pretrained(final).eval()
    bench = load_rows(resolve_benchmark("synth-bench", synth_dir=str(corpus)))
    scores = evaluate(model, [bench], out / "eval", batch_size=16, overwrite=True, model_id=str(final.resolve()),
                      progress=progress)
    result = scores["benchmarks"][bench.name]
    print(scores_markdown({bench.name: result}), end="", flush=True)

    print("[5/5] a demo answer", flush=True)
    image, question, answer = demo_answer(model, corpus, bench.rows, out / "answer.png")
    print(f"image:    {image}\nquestion: {question}\nanswer:   {answer}\nboxes drawn to {out / 'answer.png'}")
    print(f"model: {final}  (try: sphinx-x chat --model {final} --image {image})")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min; scores in {out / 'eval' / 'scores.md'}", flush=True)
    return 0
