"""`sphinx-x train` as separate processes: exact resume after SIGKILL, a kill while a checkpoint is being
written, and FSDP2 under `torchrun --nproc_per_node 2` (gloo) against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _helpers.train import NANO_YAML, fast_overrides, losses

from sphinx_x.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow  # separate processes, about a minute each

STEPS = 8
# Relative tolerance for FSDP vs one process: the same global batches and micro-batches, only the
# order of the gradient sums differs (reduce-scatter over 2 ranks vs accumulation in one process).
FSDP_RTOL = 1e-4


def command(mix: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sphinx_x.cli", "train", str(NANO_YAML),
            *fast_overrides(mix, out, **{"output.save_every": 2, "output.keep_last": 2,
                                         "train.deterministic": True}),
            "--max-steps", str(STEPS), *extra]


# `sphinx-x train` in a process whose checkpoint writer is SIGKILLed once step 4's files are written and
# flushed, just before the rename that would publish them (the seam `checkpoint.before_publish`).
KILL_BEFORE_PUBLISHING_STEP_4 = """
import os, signal, sys
from sphinx_x.train import checkpoint
def before_publish(tmp, final):
    if final.name == "step-000004":
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.before_publish = before_publish
from sphinx_x.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass
    return steps


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """An uninterrupted single-process run of STEPS steps."""
    out = tmp_path_factory.mktemp("reference")
    proc = run(command(corpus, out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert logged_steps(out) == list(range(1, STEPS + 1))
    return out


def test_sigkill_then_resume_gives_the_same_losses(corpus, reference, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(command(corpus, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while max(logged_steps(out), default=0) < 5:  # step 4's checkpoint is on disk before step 5 starts
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "training did not reach step 5"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    resumed_from = list_checkpoints(out / "ckpt")[-1][0]
    assert 4 <= resumed_from < STEPS

    proc = run(command(corpus, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from {out / 'ckpt' / f'step-{resumed_from:06d}'}" in proc.stdout + proc.stderr
    assert logged_steps(out) == list(range(1, STEPS + 1))  # records past the checkpoint were replaced
    assert losses(out) == losses(reference)  # bit-exact on CPU fp32
    assert [s for s, _ in list_checkpoints(out / "ckpt")] == [6, 8]  # keep_last: 2


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(corpus, reference, tmp_path):
    from sphinx_x.model import SphinxX

    out = tmp_path / "crash"
    cmd = command(corpus, out)
    assert cmd[1:3] == ["-m", "sphinx_x.cli"]
    proc = run([sys.executable, "-c", KILL_BEFORE_PUBLISHING_STEP_4, *cmd[3:]])
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(out / "ckpt")] == [2]
    unpublished = list((out / "ckpt").glob(".tmp-step-000004.*"))
    assert len(unpublished) == 1 and (unpublished[0] / "trainer_state.pt").is_file()  # the half-published one
    model = SphinxX.from_pretrained(out / "ckpt" / "step-000002")
    assert model.config.name == "nano"

    proc = run(command(corpus, out, "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(out) == losses(reference)
    assert not list((out / "ckpt").glob(".tmp-step-*"))


def test_fsdp_two_ranks_match_one_process(corpus, reference, tmp_path):
    from sphinx_x.model import SphinxX

    out = tmp_path / "fsdp"
    cmd = command(corpus, out)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "sphinx_x.cli", *cmd[3:]]
    proc = run(launcher, env={"OMP_NUM_THREADS": "1"}, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got, want = losses(out), losses(reference)
    assert len(got) == STEPS
    assert got == pytest.approx(want, rel=FSDP_RTOL)

    fsdp_model = SphinxX.from_pretrained(out / "final")  # gathered full state dict, loaded in one process
    single = SphinxX.from_pretrained(reference / "final")
    a, b = fsdp_model.state_dict(), single.state_dict()
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, worst
    ckpt_model = SphinxX.from_pretrained(out / "ckpt" / f"step-{STEPS:06d}")
    assert torch.equal(ckpt_model.skip_token, fsdp_model.skip_token)
