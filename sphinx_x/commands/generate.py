"""`sphinx-x generate --model DIR --input Q.jsonl --output A.jsonl [--batch-size N]`: answer many questions.

Input rows: `{"id": ..., "question": "...", "image": "path" | ["path", ...] (optional)}`; image paths are
relative to `--image-root` (default: the input file's directory). Output rows (appended, one per answered
question): `{"id", "question", "image"?, "answer", "finish_reason", "prompt_tokens", "completion_tokens"}`.

Resumable: ids already in the output are skipped, and a partial last line left by a crash is dropped.
A bad row (invalid JSON, missing field, unreadable image, prompt too long) is reported with its line number
and the run goes on. Exit codes: 0 all answered; 1 some rows failed; 2 fatal (model, input file, options).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sphinx_x.canvas import ImageError, load_image
from sphinx_x.commands.cli_args import CommandError, add_generation_args, add_model_args, generation_config, load_model
from sphinx_x.errors import RowError
from sphinx_x.fileio import open_jsonl_append, read_jsonl_for_resume, read_jsonl_lines
from sphinx_x.infer.prompts import EncodedPrompt, PromptEncoder, PromptError, user_turn


def answered_ids(output: Path) -> set[str]:
    """Ids in an existing output file. A last line cut short by a crash mid-write is cut off the file."""
    ids = set()
    for lineno, line in read_jsonl_for_resume(output):
        try:
            ids.add(_key(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CommandError(f"{output}:{lineno}: existing output row is not a JSON object with an 'id' ({e})") from e
    return ids


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def read_rows(path: Path) -> list[tuple[int, str]]:
    return read_jsonl_lines(path, CommandError)


def parse_row(line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise RowError(f"not valid JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise RowError(f"expected a JSON object, got {type(row).__name__}")
    if "id" not in row or not isinstance(row["id"], (str, int)):
        raise RowError("missing 'id' (a string or integer)")
    if not isinstance(row.get("question"), str):
        raise RowError("missing 'question' (a string)")
    image = row.get("image")
    if image is not None and not (isinstance(image, str) or (isinstance(image, list) and
                                                             all(isinstance(i, str) for i in image))):
        raise RowError("'image' must be a path or a list of paths")
    return row


def encode_row(row: dict[str, Any], encoder: PromptEncoder, image_root: Path, budget: int) -> EncodedPrompt:
    paths = row.get("image") or []
    paths = [paths] if isinstance(paths, str) else paths
    try:
        images = [load_image(image_root / p) for p in paths]
    except ImageError as e:
        raise RowError(f"image: {e}") from e
    try:
        prompt = encoder.encode([user_turn(row["question"], images)])
    except PromptError as e:
        raise RowError(str(e)) from e
    if len(prompt.input_ids) > budget:
        raise RowError(f"prompt of {len(prompt.input_ids)} tokens leaves no room for the answer (budget {budget})")
    return prompt


def run(args: argparse.Namespace) -> int:
    from sphinx_x.infer.generate import generate_batch

    src, dst = Path(args.input), Path(args.output)
    try:
        if args.batch_size < 1:
            raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
        gen = generation_config(args)
        rows = read_rows(src)
        done = answered_ids(dst)
        model = load_model(args)
    except CommandError as e:
        print(f"sphinx-x generate: {e}", file=sys.stderr)
        return 2
    encoder = PromptEncoder.for_model(model)
    image_root = Path(args.image_root) if args.image_root else src.parent
    budget = model.llm.config.max_position_embeddings - gen.max_new_tokens
    failed = skipped = answered = 0

    def report(lineno: int, message: str) -> None:
        nonlocal failed
        failed += 1
        tqdm.write(f"{src}:{lineno}: {message}", file=sys.stderr)

    todo = []
    for lineno, line in rows:
        try:
            row = parse_row(line)
        except RowError as e:
            report(lineno, str(e))
            continue
        if _key(row["id"]) in done:
            skipped += 1
            continue
        done.add(_key(row["id"]))  # a repeated id later in the input is skipped too
        todo.append((lineno, row))

    with open_jsonl_append(dst) as out, tqdm(total=len(todo), unit="q", file=sys.stderr) as bar:
        for start in range(0, len(todo), args.batch_size):
            batch = []
            for lineno, row in todo[start : start + args.batch_size]:
                try:
                    batch.append((row, encode_row(row, encoder, image_root, budget)))
                except RowError as e:
                    report(lineno, str(e))
            results = generate_batch(model, [p for _, p in batch], gen) if batch else []
            for (row, _), res in zip(batch, results):
                record = {"id": row["id"], "question": row["question"]}
                if row.get("image") is not None:
                    record["image"] = row["image"]
                record.update(answer=res.text, finish_reason=res.finish_reason, prompt_tokens=res.prompt_tokens,
                              completion_tokens=res.completion_tokens)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                answered += 1
            out.flush()
            bar.update(len(todo[start : start + args.batch_size]))
    print(f"answered {answered}, skipped {skipped} already answered, {failed} failed -> {dst}", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="answer a JSONL file of questions in batches (resumable)")
    add_model_args(p)
    p.add_argument("--input", required=True, metavar="Q.jsonl", help='rows {"id", "question", "image"?}')
    p.add_argument("--output", required=True, metavar="A.jsonl", help="answers are appended here")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-root", metavar="DIR", help="image paths are relative to DIR (default: the input's dir)")
    add_generation_args(p)
    p.set_defaults(func=run)
