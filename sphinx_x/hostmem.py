"""Host memory for CPU tensors: keep freed blocks in the process so the next forward pass reuses them.

PyTorch's CPU tensors come from the C library's `malloc`. glibc serves a block above its mmap threshold
(128 KiB at start, moving up with use to at most 32 MiB) with a fresh `mmap` and unmaps it on `free`, and it
hands the top of its heap back to the kernel once more than the trim threshold (twice the mmap threshold) is
free. A model's activations are freed at the end of each forward pass, so the next pass touches new pages, and
every 4 KiB page costs a page fault in the kernel. The vision experts allocate the largest activations (the
ConvNeXt's first stage: 8 MiB per layer for the 32 views of 8 nano images), so they pay most: nano's experts on
a batch of 8 images 38.9 -> 27.4 ms, no page faults left; the `tiny` preset's experts on one 2:1 image (bf16,
2 threads) 5.1 -> 4.8 s, system time 1.65 -> 0.68 s (docs/experiments.md, stop 44).

`retain_freed_host_memory()` fixes glibc's thresholds with `mallopt`: blocks up to 32 MiB come from the heap
(M_MMAP_THRESHOLD; glibc's own ceiling for its moving threshold, reached at once instead of after the first
frees) and up to 256 MiB of freed heap stays in the process (M_TRIM_THRESHOLD). Higher values remove the
`tiny` experts' faults too (1 GiB: 4.35 s, no system time) but let the heap fragment: a loop of mixed 4-64 MiB
tensors then holds 800-870 MiB against 660 MiB by default (684 MiB at the values used). The `sphinx-x`
inference commands (chat, generate, serve, demo, eval) call it before they run (`SPHINX_X_HOST_MALLOC=default`
keeps the C library's own behaviour; training does not call it: its steps did not get faster and the
quickstart's peak RSS rose 9%); a program that imports sphinx_x calls it itself. A different allocator
loaded with `LD_PRELOAD` (jemalloc, tcmalloc; PyTorch's CPU performance guide) has the same effect without
the call. On a C library other than glibc the call changes nothing and returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Mapping

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MiB (glibc's own ceiling for its moving threshold) come from the heap
TRIM_THRESHOLD = 256 << 20  # and up to 256 MiB of freed heap is kept
ENV = "SPHINX_X_HOST_MALLOC"  # "default": leave the C library's settings alone


def retain_freed_host_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Serve blocks up to `mmap_threshold` bytes from the heap and keep up to `trim_threshold` bytes of freed
    heap; True when set (glibc on Linux), False where there is nothing to set."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
    ok &= libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold))
    return bool(ok)


def configure_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """What the `sphinx-x` inference commands do at start: retain freed memory unless SPHINX_X_HOST_MALLOC=default."""
    choice = environ.get(ENV, "retain").strip().lower()
    if choice == "default":
        return False
    if choice != "retain":
        raise ValueError(f"{ENV}={environ[ENV]!r}: expected 'retain' (the default) or 'default'")
    return retain_freed_host_memory()
