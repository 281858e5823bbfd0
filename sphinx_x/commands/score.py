"""`sphinx-x score --metric NAME --input ROWS.jsonl`: score saved predictions without a model.

Exit codes: 0 scored; 2 bad input (unreadable file, malformed JSON, a row missing a field; the message names
the file, line and field).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """The rows file cannot be scored; the message names the file and, where it applies, line and field."""


def read_rows(path: Path, metric: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Read a JSONL file of rows for `metric` (blank lines skipped), checking every row's fields.
    Returns the rows and the file line number of each."""
    from sphinx_x.eval.metrics import check_row
    from sphinx_x.eval.rows_io import iter_checked_rows

    rows, linenos = [], []
    for lineno, row in iter_checked_rows(path, lambda r: check_row(metric, r), InputError):
        rows.append(row)
        linenos.append(lineno)
    if not rows:
        raise InputError(f"{path}: no rows to score")
    return rows, linenos


def format_summary(metric: str, result: dict[str, Any]) -> str:
    """A readable summary: the score, then the scalar details and one line per category where there are some."""
    unit = "" if metric == "mme" else "%"
    lines = [f"{metric}: {result['score']:.2f}{unit} over {len(result['per_row'])} rows"]
    for key, value in result["details"].items():
        if isinstance(value, dict):
            lines.append(f"  {key}:")
            for name, sub in value.items():
                shown = sub if not isinstance(sub, dict) else ", ".join(f"{k}={_fmt(v)}" for k, v in sub.items())
                lines.append(f"    {name}: {shown}")
        else:
            lines.append(f"  {key}: {_fmt(value)}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _fail(message: str) -> int:
    print(f"sphinx-x score: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from sphinx_x.errors import RowError
    from sphinx_x.eval.metrics import score_rows

    opts: dict[str, Any] = {}
    if args.metric == "rec":
        opts = {"anchor": args.anchor, "coords": args.coords}
    path = Path(args.input)
    try:
        rows, linenos = read_rows(path, args.metric)
        result = score_rows(args.metric, rows, **opts).as_dict(args.metric)
    except InputError as e:
        return _fail(str(e))
    except RowError as e:  # a content check inside the metric, e.g. an mc answer that is no letter
        where = f"{path}:{linenos[e.row]}" if e.row is not None else str(path)
        return _fail(f"{where}: {e.message}")
    except NotImplementedError as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_summary(args.metric, result))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from sphinx_x.eval.metrics import ANCHORS, METRICS

    parser = subparsers.add_parser("score", help="score a JSONL file of predictions with a standard metric")
    parser.add_argument("--metric", required=True, choices=sorted(METRICS), help="which metric")
    parser.add_argument("--input", required=True, metavar="ROWS.jsonl", help="one JSON row per line")
    parser.add_argument(
        "--anchor", choices=ANCHORS, default="top-left", help="rec: the model's pad anchor for canvas-normalised boxes"
    )
    parser.add_argument(
        "--coords",
        choices=("canvas", "pixels"),
        default="canvas",
        help="rec: boxes in the answer are canvas-normalised (default) or original-image pixels",
    )
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.set_defaults(func=run)
