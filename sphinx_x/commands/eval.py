"""`sphinx-x eval` (run benchmarks on a model) and `sphinx-x convert-bench` (standard annotations -> rows).

    sphinx-x eval --model DIR [--bench NAME_OR_FILE ...] --output DIR [--batch-size N] [--limit N]
    sphinx-x convert-bench NAME --input ANNOTATION [--official FILE] [--image-root DIR] [--out FILE]

`--bench` takes a registered name (default: synth-bench), NAME=PATH, or a JSONL file; repeat it to run
several. Decoding is greedy. Rerunning with the same --output resumes: answered rows are not generated
again. Exit codes: 0 done; 2 bad input (unknown benchmark, malformed row: the message names file, line
and field; settings that differ from the predictions being resumed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sphinx_x.commands.argtypes import positive_int


def _fail(command: str, message: str) -> int:
    print(f"sphinx-x {command}: error: {message}", file=sys.stderr)
    return 2


def run_eval(args: argparse.Namespace) -> int:
    from sphinx_x.eval.benchmarks import DEFAULT_BENCHMARK, BenchmarkError, load_rows, resolve_benchmark
    from sphinx_x.eval.harness import HarnessError, evaluate, scores_markdown

    refs = args.bench or [DEFAULT_BENCHMARK]
    try:
        benches = [
            load_rows(resolve_benchmark(ref, bench_root=args.bench_root, synth_dir=args.synth_dir,
                                        image_root=args.image_root, metric=args.metric, prompt=args.prompt,
                                        max_new_tokens=args.max_new_tokens), args.limit)
            for ref in refs
        ]
    except BenchmarkError as e:
        return _fail("eval", str(e))

    import torch

    from sphinx_x.model import SphinxX

    if not (Path(args.model) / "config.json").is_file():
        return _fail("eval", f"{args.model}: not a model directory (no config.json)")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = SphinxX.from_pretrained(args.model, device=device, dtype=dtype).eval()
    try:
        scores = evaluate(model, benches, args.output, batch_size=args.batch_size, limit=args.limit,
                          model_id=str(Path(args.model).resolve()), overwrite=args.overwrite,
                          progress=not args.quiet)
    except (BenchmarkError, HarnessError) as e:
        return _fail("eval", str(e))
    ran = {b.name: scores["benchmarks"][b.name] for b in benches}
    if args.json:
        print(json.dumps(ran, indent=2))
    else:
        print(scores_markdown(ran), end="")
        print(f"wrote {Path(args.output) / 'scores.json'} and scores.md; predictions under {args.output}/<benchmark>/")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from sphinx_x.eval.benchmarks import BenchmarkError
    from sphinx_x.eval.convert import convert

    out = args.out or f"{args.name}.jsonl"
    try:
        summary = convert(args.name, args.input, out, image_root=args.image_root, official=args.official,
                          category=args.category)
    except BenchmarkError as e:
        return _fail("convert-bench", str(e))
    print(json.dumps(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from sphinx_x.eval.benchmarks import BENCH_ROOT_ENV, DEFAULT_BENCH_ROOT, DEFAULT_SYNTH_DIR, SYNTH_DIR_ENV
    from sphinx_x.eval.convert import convertible
    from sphinx_x.eval.metrics import METRICS

    p = subparsers.add_parser("eval", help="evaluate a model on benchmarks (greedy, batched, resumable)",
                              description="Evaluate a model on benchmarks: batched greedy generation, resumable "
                                          "predictions, scores.json and scores.md.")
    p.add_argument("--model", required=True, help="model directory (sphinx-x init / training output)")
    p.add_argument("--bench", action="append", metavar="NAME_OR_FILE",
                   help="registered name, NAME=PATH or a benchmark JSONL file; repeatable (default: synth-bench)")
    p.add_argument("--output", required=True, help="output directory (predictions, scores.json, scores.md)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N rows of each benchmark")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, help="override the benchmark's answer budget")
    p.add_argument("--bench-root", default=None,
                   help=f"where NAME.jsonl files live (default ${BENCH_ROOT_ENV} or {DEFAULT_BENCH_ROOT}/)")
    p.add_argument("--synth-dir", default=None,
                   help=f"synth corpus directory for synth-bench (default ${SYNTH_DIR_ENV} or {DEFAULT_SYNTH_DIR}/)")
    p.add_argument("--image-root", default=None, help="where relative image paths start (default: the file's dir)")
    p.add_argument("--metric", choices=sorted(METRICS), default=None, help="metric for rows that name none")
    p.add_argument("--prompt", default=None, help="prompt template with {question} (overrides the benchmark's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true", help="discard existing predictions instead of resuming")
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)

    c = subparsers.add_parser("convert-bench", help="convert LLaMA2-Accessory eval_mm / POPE annotations to rows",
                              description="Convert a benchmark's annotation file (see sphinx_x.eval.convert).")
    c.add_argument("name", choices=convertible(), metavar="NAME", help=f"one of: {', '.join(convertible())}")
    c.add_argument("--input", required=True, help="the annotation file (eval_mm JSON list, or POPE JSON lines)")
    c.add_argument("--out", default=None, help="output JSONL (default NAME.jsonl, what `eval --bench NAME` finds)")
    c.add_argument("--image-root", default=None,
                   help="where the annotation's image paths start (default: eval_mm dir, the parent of annotations/)")
    c.add_argument("--official", default=None,
                   help="VQA annotations / DocVQA val_v1.0.json with all ground-truth answers per question")
    c.add_argument("--category", default=None, help="category for every row (e.g. the POPE split)")
    c.set_defaults(func=run_convert)
