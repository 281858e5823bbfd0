"""Files on disk, written so that a crash never leaves half of one, and read with errors that name them.

- `write_atomic` / `atomic_path`: one file, written under a temporary name in the same folder, flushed to
  disk (fsync) and renamed over the target with `os.replace`: a reader sees the old file or the new one.
- `atomic_directory`: a whole directory (a model, a checkpoint, a converted release) built under a
  temporary sibling name, fsynced file by file, then renamed into place; an existing one is moved aside
  first and deleted last, so a crash keeps one complete copy.
- `read_jsonl_for_resume` / `open_jsonl_append`: append-only JSONL outputs of resumable runs (predictions,
  answers, training metrics). Records are appended a line at a time; a last line that a crash cut short
  is removed before the run continues, and a complete last record missing only its newline is kept.
- `read_json_object`, `read_state_dict`: a JSON object file, and the tensors of a weights file or of a
  transformers weights directory (never unpickling anything but tensors: `weights_only=True`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import torch
from safetensors.torch import load_file

from sphinx_x.errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


# ---- atomic files --------------------------------------------------------------------------------
def _temporary_sibling(path: Path) -> Path:
    # Same folder (a rename across file systems is not atomic), hidden, and with the target's suffix kept,
    # because some writers pick the format from it (np.save appends .npy, matplotlib reads .png).
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file below `directory` and every directory's entries, `directory`'s own included."""
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(Path(directory))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` for a writer that wants a file name (torch.save, np.save,
    savefig); on success it is flushed and renamed to `path`, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text is UTF-8 encoded) to `path` so that readers, and a resumed run, never see a
    half-written file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """A matplotlib figure, laid out tight, as an image file (format from the suffix), atomically; the figure
    is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def write_json_atomic(path: str | Path, data, indent: int | None = 2, **dumps_kwargs) -> None:
    """`data` as JSON (with a final newline), written atomically."""
    write_atomic(path, json.dumps(data, indent=indent, **dumps_kwargs) + "\n")


# ---- atomic directories --------------------------------------------------------------------------
def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_directory(final: str | Path, before_publish: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary directory next to `final`; when the block ends without an exception, flush
    everything in it to disk, call `before_publish(tmp)` (a seam for tests that simulate a crash at the
    worst moment) and rename it to `final`, replacing what was there (a file or a directory, empty or not).
    On an exception the temporary directory is removed and `final` is untouched. A process killed before
    the rename leaves `final` as it was, plus a `.tmp-<name>.<pid>` directory that callers may clean up."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}.{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        if before_publish is not None:
            before_publish(tmp)
        if final.exists() or final.is_symlink():  # move the old copy aside first: a crash keeps one complete copy
            old = final.with_name(f".old-{final.name}.{os.getpid()}")
            _remove(old)
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(final.parent)


# ---- append-only JSONL ---------------------------------------------------------------------------
def read_jsonl_for_resume(path: str | Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of an append-only JSONL file, [] when there is none.

    A last line without its newline that is not valid JSON was cut short by a crash mid-append: it is
    removed from the file (truncated in place, with a note on stderr) so the run can append after it. A
    complete record missing only its newline is kept (`open_jsonl_append` starts a new line after it).
    The lines are returned unparsed: what a malformed line in the middle means is the caller's to say."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
        except ValueError:  # JSONDecodeError, or a UTF-8 sequence cut in the middle
            lineno = data.count(b"\n") + 1
            print(f"note: {path}:{lineno}: dropping a line cut short by an interrupted run", file=sys.stderr)
            with open(path, "r+b") as f:
                f.truncate(start)
                os.fsync(f.fileno())
            data = data[:start]
    return _numbered_lines(data.decode("utf-8"))


def read_jsonl_lines(path: str | Path, error: type[Exception] = ValueError) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 JSONL file (rows to read, not to append to);
    `error` naming the file when it cannot be read. The lines are returned unparsed, for the caller's checks."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: cannot read ({e})") from None
    return _numbered_lines(text)


def _numbered_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def open_jsonl_append(path: str | Path) -> IO[str]:
    """Open a JSONL file for appending records (UTF-8, one `json.dumps(record) + "\\n"` each; the caller
    closes it). A last record missing its newline gets one first, so new records start on their own line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - returned to the caller, who closes it
    if f.tell():
        with open(path, "rb") as r:
            r.seek(-1, os.SEEK_END)
            if r.read(1) != b"\n":
                f.write("\n")
    return f


# ---- reading -------------------------------------------------------------------------------------
def read_json_object(path: str | Path, error: type[Exception] = ValueError, what: str = "") -> dict:
    """The JSON object in `path`; `error` naming the file when it is missing, not JSON, or not an object.
    `what` says what the file is for, in the message about a missing file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: missing" + (f" ({what})" if what else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    return data


def read_state_dict(path: str | Path, what: str = "weights file") -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a weights file or a transformers weights directory.

    A file: `.safetensors`, or `.bin/.pt/.pth` read with `weights_only=True` (memory-mapped when it is a
    zip-format file); the weights of a training checkpoint nested under "state_dict" or "model" are taken,
    and a "module." prefix on every key (a DistributedDataParallel save) is dropped. A directory:
    model.safetensors, pytorch_model.bin, or either sharded with an `*.index.json` whose `weight_map`
    names the shards. Every problem raises CheckpointError naming the file; `what` names the file in the
    message for a missing one (e.g. "vision expert checkpoint")."""
    path = Path(path)
    if path.is_dir():
        return _read_weights_dir(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from e
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: unsupported checkpoint suffix {path.suffix!r} ({', '.join(WEIGHT_SUFFIXES)})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # noqa: BLE001 - any unpickling failure (corrupt, truncated, not tensors) is a bad file
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from e
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _read_weights_dir(directory: Path) -> dict[str, torch.Tensor]:
    for index_name in INDEX_NAMES:
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                shards = sorted(set(weight_map.values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{index}: not a shard index with a 'weight_map': {e}") from e
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(directory / shard, "shard listed in the index"))
            missing = sorted(set(weight_map) - set(state))
            if missing:
                raise CheckpointError(f"{index}: tensor {missing[0]!r} is listed but not in its shard")
            return state
    for name in SINGLE_WEIGHT_NAMES:
        if (directory / name).is_file():
            return read_state_dict(directory / name)
    raise CheckpointError(f"{directory}: no weights found: no model.safetensors, pytorch_model.bin or sharded "
                          "*.index.json in this directory")
