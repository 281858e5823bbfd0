"""Which attention heads of a trained model pick out the object a lookup question names.

    python benchmarks/ladder_attention.py runs/nano/final --rungs 9,10 --at last,key [--n 60]

For each lookup rung (3, 6, 9, 10) and query position ("last": the prompt's last position, which predicts the
answer; "key": the question's key word, the named shape or colour), prints one table per rung and position:
per layer and head, the share of the head's object attention that lands on the named object (100 = looks it
up, the printed chance = looks at objects without choosing), with the mass on it in brackets
(benchmarks/ladder/attention.py).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the ladder package (see benchmarks/ladder.py)

from ladder.attention import POSITIONS, lookup_attention, table  # noqa: E402
from ladder.tasks import heldout, task_by_name  # noqa: E402

from sphinx_x.model import SphinxX  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/ladder_attention.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a trained model directory (sphinx-x train's OUT/final)")
    ap.add_argument("--rungs", default="9,10", help="comma list of lookup rungs (3, 6, 9, 10)")
    ap.add_argument("--at", default="last,key", help=f"comma list of query positions: {', '.join(POSITIONS)}")
    ap.add_argument("--n", type=int, default=60, help="held-out items per rung")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = SphinxX.from_pretrained(args.model)
    for spec in args.rungs.split(","):
        task = task_by_name(spec.strip())
        items = heldout(task, args.n)
        for at in args.at.split(","):
            print(table(args.model, task, at.strip(), lookup_attention(model, task, items, at.strip())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
