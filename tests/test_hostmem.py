"""Keeping freed host memory (sphinx_x/hostmem.py): an activation-sized block stays in the process when freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from sphinx_x import cli, hostmem

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


PROBE = """
import resource, sys, torch
from sphinx_x import hostmem
if sys.argv[1] == "retain":
    assert hostmem.retain_freed_host_memory() is True
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
t = torch.ones(6 << 20)  # 24 MiB: above glibc's starting mmap threshold (128 KiB), below the one set (32 MiB)
held = rss_mib()
del t
print(held - rss_mib())
"""


def _returned_on_free(mode: str) -> float:
    """MiB the process hands back to the kernel when a 24 MiB tensor is freed, in a fresh interpreter (the
    setting is process-wide, and glibc's own threshold moves with what the process freed before)."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere the call returns False (tested below)")
def test_a_freed_activation_sized_block_stays_in_the_process():
    assert _returned_on_free("default") >= 23  # glibc's default: mmapped, unmapped on free, faulted in again
    assert _returned_on_free("retain") <= 1  # kept in the heap for the next forward pass


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(hostmem.platform, "libc_ver", lambda: ("", ""))
    assert hostmem.retain_freed_host_memory() is False


def test_the_environment_chooses(monkeypatch):
    calls = []
    monkeypatch.setattr(hostmem, "retain_freed_host_memory", lambda: calls.append(1) or True)
    assert hostmem.configure_from_env({}) is True
    assert hostmem.configure_from_env({hostmem.ENV: "Retain"}) is True
    assert hostmem.configure_from_env({hostmem.ENV: "default"}) is False
    assert len(calls) == 2
    with pytest.raises(ValueError, match="SPHINX_X_HOST_MALLOC='jemalloc'"):
        hostmem.configure_from_env({hostmem.ENV: "jemalloc"})


def test_inference_commands_set_it_before_they_run_and_reject_a_bad_value(monkeypatch, capsys):
    order = []
    monkeypatch.delenv(hostmem.ENV, raising=False)  # a caller's own choice would change what runs
    monkeypatch.setattr(hostmem, "retain_freed_host_memory", lambda: order.append("malloc") or True)
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert cli.HOST_MEMORY_COMMANDS <= set(commands)

    def parser_for(argv):
        args = parser.parse_args(argv)
        args.func = lambda a: order.append(a.command) or 0
        return lambda: type("P", (), {"parse_args": lambda self, _: args})()

    monkeypatch.setattr(cli, "build_parser", parser_for(["chat", "--model", "m", "--image", "x.png"]))
    assert cli.main([]) == 0
    assert order == ["malloc", "chat"]
    monkeypatch.setattr(cli, "build_parser", parser_for(["info", "nano"]))  # not an inference command
    assert cli.main([]) == 0
    assert order == ["malloc", "chat", "info"]
    monkeypatch.setattr(cli, "build_parser", parser_for(["chat", "--model", "m", "--image", "x.png"]))
    monkeypatch.setenv(hostmem.ENV, "nope")
    assert cli.main([]) == 2
    assert "SPHINX_X_HOST_MALLOC='nope'" in capsys.readouterr().err
    assert order == ["malloc", "chat", "info"]  # neither ran again
