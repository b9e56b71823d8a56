"""glibc ``malloc`` settings for the ``phylojax`` program: keep freed memory for reuse.

XLA:CPU runs a compiled program with one block of temporary memory for all its intermediate
arrays, allocated with ``malloc`` when the run starts and freed when it ends. glibc serves a
block that large with a fresh ``mmap`` and gives it back with ``munmap``, so the next run touches
new pages again, and the kernel faults each one in and zeroes it. FEL's MG94 objective on HIV_RT
(476 taxa, 334 codon patterns) has a 300 MB block: every evaluation page-faulted ~73,000 pages,
0.17-0.25 s of kernel time in an evaluation of 0.80-0.94 s on one core (``strace`` shows one
``mmap`` and one ``munmap`` of 300,421,120 bytes per evaluation; benchmarks/RESULTS_fel.md).

:func:`keep_freed_memory` makes glibc keep such blocks: every thread allocates from the main heap
(``M_ARENA_MAX`` 1: the other arenas' heaps are capped at 64 MB, and a larger request there is
always an ``mmap``), large blocks come from that heap rather than from ``mmap`` (``M_MMAP_MAX``
0), and its free memory is not handed back to the kernel (``M_TRIM_THRESHOLD`` 2 GiB). A freed
block is then reused by the next evaluation: no page faults, HIV_RT's evaluation 0.80-0.94 ->
0.58-0.65 s on one core. The price is that the process keeps its peak heap until it exits, which
suits a command that runs one analysis; so only the ``phylojax`` program calls this
(:func:`phylojax.cli.run`) and the worker processes of :mod:`phylojax.workers` (each at its
start: they run the same large programs again and again), not ``import phylojax``. A notebook
may call it first thing, before any thread has allocated (threads that already have an arena
keep it).

glibc only (Linux); elsewhere, or with ``PHYLOJAX_MALLOC_TUNING=off``, it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- only glibc has it (not musl)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` with ``mallopt`` (see the module docstring); returns whether all
    were accepted."""
    setting = os.environ.get("PHYLOJAX_MALLOC_TUNING", "on").strip().lower()
    if setting in ("off", "0", "no", "false"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in SETTINGS)
