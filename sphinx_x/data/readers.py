"""Reading dialogue records from disk: LLaVA / LLaMA2-Accessory JSON and JSONL, and the data-mix YAML.

A JSON file holds an array of records and is loaded whole (the format cannot be streamed cheaply);
its items' line numbers are recorded while parsing so errors can point at them. A JSONL file is
only indexed (byte offset of every non-blank line) and each record is read on demand, so a
multi-GB file never sits in memory.

The mix YAML (LLaMA2-Accessory shape):

    META:
      - path: general.jsonl     # relative to the YAML file
        type: image_text        # every global batch holds a single type
        root: images/           # optional: image paths are relative to it (default: the data file's dir)
        ratio: 0.5              # optional: < 1 sub-samples, > 1 repeats (deterministic by seed)
        phase: 0                # optional curriculum: in every epoch, all samples of phase 0 sources are
                                # trained before any of phase 1, and so on (default 0 = one phase, mixed)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml


class DataError(ValueError):
    """A data file or record is malformed. `reason` is a short stable code used to count skips."""

    def __init__(self, location: Location | str, message: str, field: str | None = None, reason: str = "invalid"):
        self.location = location
        self.field = field
        self.reason = reason
        self.detail = message
        where = f"{location}: " if location else ""
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")


@dataclass(frozen=True)
class Location:
    """Where a record lives. JSONL: 1-based `line`. JSON: 0-based `index` plus the line it starts on."""

    path: str
    line: int | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.path}:{self.line or 0}: item {self.index}"
        return f"{self.path}:{self.line}" if self.line is not None else self.path


class RecordReader:
    """Random access to the raw (decoded JSON) records of one file."""

    path: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def location(self, i: int) -> Location:
        raise NotImplementedError

    def read(self, i: int) -> Any:
        """The decoded record; raises DataError (reason 'invalid_json') when it cannot be decoded."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[Location, Any | DataError]]:
        """Every record with its location; undecodable records come as their DataError (for checks)."""
        for i in range(len(self)):
            try:
                yield self.location(i), self.read(i)
            except DataError as e:
                yield self.location(i), e


class JsonlReader(RecordReader):
    """Lazy JSONL: indexes line offsets once, seeks and decodes one line per read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        offsets, lines = [], []
        with open(self.path, "rb") as f:
            pos = 0
            for lineno, raw in enumerate(f, start=1):
                if raw.strip():  # blank lines are allowed and are not records
                    offsets.append(pos)
                    lines.append(lineno)
                pos += len(raw)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lines = np.asarray(lines, dtype=np.int64)
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return len(self._offsets)

    def location(self, i: int) -> Location:
        return Location(str(self.path), line=int(self._lines[i]))

    def _handle(self):
        # One handle per process: DataLoader workers fork, and a shared file position would race.
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open for fast seeks
            self._pid = os.getpid()
        return self._file

    def read(self, i: int) -> Any:
        f = self._handle()
        f.seek(int(self._offsets[i]))
        raw = f.readline()
        try:
            return json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(self.location(i), f"line is not valid UTF-8 ({e.reason} at byte {e.start})",
                            reason="invalid_json") from e
        except json.JSONDecodeError as e:
            raise DataError(self.location(i), f"invalid JSON: {e.msg} (column {e.colno})", reason="invalid_json") from e

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # file handles do not pickle (spawned workers)
        return state


class JsonReader(RecordReader):
    """A JSON array of records, parsed item by item so each item's starting line is known."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(str(self.path), f"not valid UTF-8 ({e.reason} at byte {e.start})",
                            reason="invalid_json") from e
        self._items, self._lines = _parse_json_array(text, str(self.path))

    def __len__(self) -> int:
        return len(self._items)

    def location(self, i: int) -> Location:
        return Location(str(self.path), line=self._lines[i], index=i)

    def read(self, i: int) -> Any:
        return self._items[i]


def _parse_json_array(text: str, name: str) -> tuple[list[Any], list[int]]:
    decoder = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(pos: int) -> int:
        while pos < len(text) and text[pos] in ws:
            pos += 1
        return pos

    def fail(pos: int, msg: str) -> DataError:
        line = text.count("\n", 0, pos) + 1
        return DataError(f"{name}:{line}", msg, reason="invalid_json")

    pos = skip(0)
    if pos >= len(text) or text[pos] != "[":
        raise fail(pos, "a .json data file must hold a JSON array of records (use .jsonl for one record per line)")
    items, lines = [], []
    pos, line, counted = skip(pos + 1), 1, 0
    if pos < len(text) and text[pos] == "]":
        return items, lines
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise fail(e.pos, f"invalid JSON: {e.msg}") from e
        items.append(item)
        lines.append(line)
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            if skip(pos + 1) != len(text):
                raise fail(pos + 1, "extra data after the JSON array")
            return items, lines
        else:
            raise fail(pos, "expected ',' or ']' between records")


def open_records(path: str | Path) -> RecordReader:
    """A reader of the records of a .json (one array) or .jsonl (one record per line) data file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "data file not found", reason="missing_file")
    if path.suffix == ".jsonl":
        return JsonlReader(path)
    if path.suffix == ".json":
        return JsonReader(path)
    raise DataError(str(path), "data files must end in .json (an array) or .jsonl (one record per line)",
                    reason="bad_suffix")


# ---- the mix -----------------------------------------------------------------------------------
@dataclass
class Source:
    """One META entry: a data file, its type, image root and sampling ratio."""

    path: Path
    type: str
    root: Path
    ratio: float = 1.0
    phase: int = 0  # curriculum phase: lower phases are trained first in every epoch
    yaml_line: int | None = None  # line of the entry in the mix file, for messages

    def open(self) -> RecordReader:
        return open_records(self.path)


@dataclass
class Mix:
    """A data mix (`load_mix`): the mix YAML's path and its sources."""

    path: Path
    sources: list[Source]

    @property
    def types(self) -> list[str]:
        """The sources' data types, sorted and without repeats."""
        return sorted({s.type for s in self.sources})


def load_mix(path: str | Path) -> Mix:
    """Parse and validate a mix YAML; every problem names the YAML file, its line and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(str(path), f"cannot read mix file ({e.strerror or e})", reason="missing_file") from e
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(str(path), f"not valid YAML: {e}", reason="invalid_yaml") from e
    if not isinstance(data, dict) or not isinstance(data.get("META"), list) or not data["META"]:
        raise DataError(f"{path}:1", "expected a mapping with a non-empty list under META", field="META",
                        reason="invalid_mix")
    meta_node = next(v for k, v in node.value if k.value == "META")
    sources = []
    for i, (entry, entry_node) in enumerate(zip(data["META"], meta_node.value)):
        where = f"{path}:{entry_node.start_mark.line + 1}"
        if not isinstance(entry, dict):
            raise DataError(where, "each META entry must be a mapping with path and type", field=f"META[{i}]",
                            reason="invalid_mix")
        unknown = sorted(set(entry) - {"path", "type", "root", "ratio", "phase"})
        if unknown:
            raise DataError(where, f"unknown key {unknown[0]!r}; valid keys: path, type, root, ratio, phase",
                            field=f"META[{i}]", reason="invalid_mix")
        for key in ("path", "type"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise DataError(where, "required, a non-empty string", field=f"META[{i}].{key}", reason="invalid_mix")
        ratio = entry.get("ratio", 1.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
            raise DataError(where, f"must be a positive number, got {ratio!r}", field=f"META[{i}].ratio",
                            reason="invalid_mix")
        phase = entry.get("phase", 0)
        if isinstance(phase, bool) or not isinstance(phase, int) or phase < 0:
            raise DataError(where, f"must be an integer >= 0, got {phase!r}", field=f"META[{i}].phase",
                            reason="invalid_mix")
        data_path = (path.parent / entry["path"]).resolve()
        if not data_path.is_file():
            raise DataError(where, f"data file not found: {data_path}", field=f"META[{i}].path", reason="invalid_mix")
        root = entry.get("root")
        if root is not None and not isinstance(root, str):
            raise DataError(where, "must be a string", field=f"META[{i}].root", reason="invalid_mix")
        root_path = (path.parent / root).resolve() if root else data_path.parent
        sources.append(Source(data_path, entry["type"], root_path, float(ratio), phase, entry_node.start_mark.line + 1))
    return Mix(path, sources)


def expand_ratio(n: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """Record indices after applying `ratio`: whole repeats, then a sorted random subset for the fraction."""
    whole = int(ratio)
    extra = round((ratio - whole) * n)
    parts = [np.tile(np.arange(n, dtype=np.int64), whole)]
    if extra:
        parts.append(np.sort(rng.choice(n, size=extra, replace=False)).astype(np.int64))
    return np.concatenate(parts)
