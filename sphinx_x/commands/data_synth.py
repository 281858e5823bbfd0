"""`sphinx-x data synth --out DIR --train N --val N --test N --seed S [--drills N] [--workers N]`: write the synthetic
multi-domain corpus (images + JSONL), the mixes train.yaml / val.yaml and the held-out synth-bench
bench.jsonl. Byte-identical for the same arguments, whatever --workers is.

Exit codes: 0 written; 2 bad arguments or an output directory that is not a previous corpus.
"""

from __future__ import annotations

import argparse
import json
import sys

from sphinx_x.commands.argtypes import non_negative_int, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="generate the synthetic multi-domain corpus and synth-bench",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (new, empty, or a previous synth corpus)")
    p.add_argument("--train", type=non_negative_int, default=2000, help="training samples (default 2000)")
    p.add_argument("--val", type=non_negative_int, default=200, help="validation samples (default 200)")
    p.add_argument("--test", type=non_negative_int, default=260, help="synth-bench rows (default 260 = 20 per task)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default 0)")
    p.add_argument("--drills", type=non_negative_int, default=0,
                   help="arithmetic drill dialogues (4-8 sums each) added to the training mix (default 0; the "
                        "quickstart uses 3200)")
    p.add_argument("--workers", type=positive_int, default=1, help="generator processes (output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sphinx_x.data.synth import generate_corpus

    try:
        summary = generate_corpus(args.out, args.train, args.val, args.test, seed=args.seed,
                                  workers=args.workers, progress=not args.quiet, drills=args.drills)
    except (FileExistsError, ValueError) as e:
        print(f"sphinx-x data synth: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True))
    return 0
