"""Reading JSONL rows files (predictions to score, benchmark rows) with errors that name file and line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sphinx_x.errors import RowError
from sphinx_x.fileio import read_jsonl_lines


def iter_checked_rows(
    path: Path, check: Callable[[Any], None], error: type[Exception]
) -> Iterator[tuple[int, Any]]:
    """Yield (line number, row) for every non-blank line, after `check(row)`; malformed JSON, an unreadable
    file or a `RowError` from `check` raise `error` with a `path:line: ...` message."""
    for lineno, line in read_jsonl_lines(path, error):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        try:
            check(row)
        except RowError as e:
            raise error(f"{path}:{lineno}: {e.message}") from None
        yield lineno, row
