"""Error types that several modules raise for the same meaning (one type per meaning).

An error raised and caught inside one module stays in that module (`ConfigError` in config.py,
`ConversionError` in convert/shards.py, ...); the ones here cross module lines: `CheckpointError` is raised
by the LLM loader, the vision experts and the shared state-dict reader (`sphinx_x.fileio`), `RowError` by
the metrics' row checks and by `sphinx-x generate`'s question rows.
"""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file or checkpoint directory (an LLM's, a vision expert's) is missing, malformed or of an
    unsupported kind; the message names the file and, where it applies, the offending keys."""


class RowError(ValueError):
    """One row of a JSONL input lacks a field or has a wrong value; the message names the field, and `row`
    (0-based) the row when known, so a caller reading a file can report the line instead."""

    def __init__(self, message: str, row: int | None = None):
        super().__init__(message if row is None else f"row {row}: {message}")
        self.message, self.row = message, row
