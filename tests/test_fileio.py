"""sphinx_x.fileio: atomic files and directories leave nothing behind on failure, append-only JSONL recovers
from a crash mid-line, and state dicts are read from every supported layout with weights_only."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sphinx_x import fileio
from sphinx_x.errors import CheckpointError
from sphinx_x.fileio import (
    atomic_directory,
    atomic_path,
    open_jsonl_append,
    read_json_object,
    read_jsonl_for_resume,
    read_state_dict,
    write_atomic,
)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ---- atomic files --------------------------------------------------------------------------------
def test_write_atomic_replaces_and_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    write_atomic(path, "first ü")
    write_atomic(path, b"\x00second")
    assert path.read_bytes() == b"\x00second"
    assert listing(tmp_path) == ["a", "a/b", "a/b/out.json"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "scores.json"
    path.write_text("old")

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new")
    assert path.read_text() == "old" and listing(tmp_path) == ["scores.json"]


def test_atomic_path_keeps_the_suffix_and_cleans_up_after_an_error(tmp_path):
    target = tmp_path / "plot.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != target
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"png" and listing(tmp_path) == ["plot.png"]


# ---- atomic directories --------------------------------------------------------------------------
def test_atomic_directory_replaces_a_directory_a_file_or_an_empty_directory(tmp_path):
    final = tmp_path / "model"
    for before in ("dir", "file", "empty", "none"):
        if before == "dir":
            final.mkdir()
            (final / "stale.txt").write_text("x")
        elif before == "file":
            final.write_text("not a directory")
        elif before == "empty":
            final.mkdir()
        with atomic_directory(final) as tmp:
            (tmp / "config.json").write_text(before)
            (tmp / "sub").mkdir()
            (tmp / "sub" / "w.bin").write_bytes(b"1")
        assert listing(tmp_path) == ["model", "model/config.json", "model/sub", "model/sub/w.bin"], before
        assert (final / "config.json").read_text() == before
        shutil.rmtree(final)


@pytest.mark.parametrize("where", ["body", "before_publish"])
def test_a_failed_directory_write_keeps_the_old_one_and_leaves_no_temporary(tmp_path, where):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "weights").write_text("old")

    def fail(tmp: Path) -> None:
        assert (tmp / "weights").read_text() == "new"  # called with everything written
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        with atomic_directory(final, before_publish=fail if where == "before_publish" else None) as tmp:
            (tmp / "weights").write_text("new")
            if where == "body":
                raise RuntimeError("crash")
    assert listing(tmp_path) == ["ckpt", "ckpt/weights"] and (final / "weights").read_text() == "old"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to map fsynced descriptors to paths")
def test_every_file_and_directory_is_flushed_before_the_rename(tmp_path, monkeypatch):
    flushed: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fileio.os, "fsync", recording_fsync)
    seen_at_publish: list[str] = []
    with atomic_directory(tmp_path / "out", before_publish=lambda tmp: seen_at_publish.extend(flushed)) as tmp:
        (tmp / "a.txt").write_text("a")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("b")
    tmp_dir = str(tmp)
    assert {tmp_dir, f"{tmp_dir}/a.txt", f"{tmp_dir}/sub", f"{tmp_dir}/sub/b.txt"} <= set(seen_at_publish)
    assert flushed[-1] == str(tmp_path)  # the rename itself, last


# ---- append-only JSONL ---------------------------------------------------------------------------
def test_a_line_cut_short_is_removed_and_appending_continues(tmp_path, capsys):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3, "answ')
    assert read_jsonl_for_resume(path) == [(1, '{"id": 1}'), (3, '{"id": 2}')]
    assert path.read_text() == '{"id": 1}\n\n{"id": 2}\n'  # truncated in place
    assert f"{path}:4: dropping a line cut short" in capsys.readouterr().err
    with open_jsonl_append(path) as f:
        f.write(json.dumps({"id": 3}) + "\n")
    assert [json.loads(line)["id"] for _, line in read_jsonl_for_resume(path)] == [1, 2, 3]


def test_a_complete_record_without_its_newline_is_kept_and_the_next_one_starts_a_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}')
    assert read_jsonl_for_resume(path) == [(1, '{"id": 1}'), (2, '{"id": 2}')]
    with open_jsonl_append(path) as f:
        f.write('{"id": 3}\n')
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n{"id": 3}\n'


def test_a_utf8_character_cut_in_half_counts_as_a_cut_line(tmp_path):
    path = tmp_path / "p.jsonl"
    whole = json.dumps({"id": 1, "a": "é"}, ensure_ascii=False).encode()
    path.write_bytes(b'{"id": 0}\n' + whole[: whole.index("é".encode()) + 1])
    assert read_jsonl_for_resume(path) == [(1, '{"id": 0}')]
    assert read_jsonl_for_resume(tmp_path / "absent.jsonl") == []
    with open_jsonl_append(tmp_path / "new" / "x.jsonl") as f:  # a new file: no leading newline
        f.write("{}\n")
    assert (tmp_path / "new" / "x.jsonl").read_text() == "{}\n"


# ---- reading -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("content", "message"), [
    (None, r"meta\.json: missing \(the model type\)"),
    ("{oops", r"meta\.json: not valid JSON"),
    ("[1, 2]", r"meta\.json: expected a JSON object"),
])
def test_read_json_object_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "meta.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(KeyError, match=message):
        read_json_object(path, KeyError, "the model type")
    path.write_text('{"llama_type": "x"}')
    assert read_json_object(path, KeyError) == {"llama_type": "x"}


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.int64)}


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_state_dict_from_safetensors_and_pickled_files(tmp_path, state):
    save_file(state, str(tmp_path / "w.safetensors"))
    assert_same(read_state_dict(tmp_path / "w.safetensors"), state)
    torch.save(state, tmp_path / "w.bin")
    assert_same(read_state_dict(tmp_path / "w.bin"), state)
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)  # not memory-mappable
    assert_same(read_state_dict(tmp_path / "legacy.pt"), state)
    # Training checkpoints nest the weights; DistributedDataParallel prefixes every key.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ddp.pth")
    assert_same(read_state_dict(tmp_path / "ddp.pth"), state)


class NotATensor:
    pass


def test_pickles_are_read_with_weights_only(tmp_path):
    torch.save({"w": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: cannot read checkpoint"):
        read_state_dict(tmp_path / "evil.pt")  # weights_only refuses to build an arbitrary class
    torch.save({"w": torch.zeros(1), "lr": 0.1}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"mixed\.pt: expected a dict of tensors"):
        read_state_dict(tmp_path / "mixed.pt")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="unsupported checkpoint suffix '.npz'"):
        read_state_dict(tmp_path / "w.npz")
    with pytest.raises(CheckpointError, match=r"gone\.bin: vision expert checkpoint not found"):
        read_state_dict(tmp_path / "gone.bin", "vision expert checkpoint")


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_state_dict_from_a_sharded_directory_and_its_errors(tmp_path, state, suffix):
    names = sorted(state)
    shards = {f"model-0000{i + 1}-of-00002.{suffix}": {n: state[n]} for i, n in enumerate(names)}
    for filename, part in shards.items():
        if suffix == "safetensors":
            save_file(part, str(tmp_path / filename))
        else:
            torch.save(part, tmp_path / filename)
    index_name = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = {n: f for f, part in shards.items() for n in part}
    (tmp_path / index_name).write_text(json.dumps({"weight_map": weight_map}))
    assert_same(read_state_dict(tmp_path), state)

    (tmp_path / index_name).write_text(json.dumps({"weight_map": {**weight_map, "c.weight": next(iter(shards))}}))
    with pytest.raises(CheckpointError, match=r"tensor 'c.weight' is listed but not in its shard"):
        read_state_dict(tmp_path)
    (tmp_path / index_name).write_text("{}")
    with pytest.raises(CheckpointError, match="not a shard index with a 'weight_map'"):
        read_state_dict(tmp_path)
    (tmp_path / index_name).unlink()
    with pytest.raises(CheckpointError, match="no weights found: no model.safetensors, pytorch_model.bin"):
        read_state_dict(tmp_path)


def test_save_figure_writes_the_image_atomically_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fileio.save_figure(fig, tmp_path / "curve.png", dpi=50)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert listing(tmp_path) == ["curve.png"] and not plt.fignum_exists(fig.number)


def test_read_jsonl_lines_numbers_the_lines_and_names_an_unreadable_file(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": 1}\n\n  \n{"id": 2}\n')
    assert fileio.read_jsonl_lines(path) == [(1, '{"id": 1}'), (4, '{"id": 2}')]
    path.write_bytes(b'{"q": "\xff"}\n')
    with pytest.raises(KeyError, match=r"q\.jsonl: cannot read"):
        fileio.read_jsonl_lines(path, KeyError)
    with pytest.raises(ValueError, match=r"absent\.jsonl: cannot read"):
        fileio.read_jsonl_lines(tmp_path / "absent.jsonl")
