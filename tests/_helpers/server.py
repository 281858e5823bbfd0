"""A `sphinx-x` command run as a server process for the duration of a test (serve, demo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cli_server(args: list[str], ready_url: str, log_path: Path, timeout_s: float,
               env: dict[str, str] | None = None) -> Iterator[None]:
    """Run `python -m sphinx_x.cli ARGS` (output to `log_path`) until the block ends; first wait until `ready_url`
    answers 200. Raises RuntimeError with the end of the log if the process exits or is not ready in time."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sphinx_x.cli", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sphinx-x {args[0]} exited with {proc.returncode}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(ready_url, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sphinx-x {args[0]} did not answer on {ready_url} within {timeout_s} s:\n"
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
