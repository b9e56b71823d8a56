"""phylojax.memory: glibc keeps freed blocks for reuse in the ``phylojax`` program.

Oracle: the kernel's own count of minor page faults (``getrusage``). A 100 MiB block allocated,
written and freed four times by a thread that is not the main one (as XLA's threads are) faults
its pages in once with the settings, every time without them (glibc returns such a block to the
kernel with ``munmap``). Each case runs in a fresh interpreter: the settings are process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import ctypes, resource, sys, threading
from phylojax.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size, out = 100 * 2**20, {}

def work():
    for i in range(4):
        if i == 1:  # the first round faults in either case
            out["start"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - out["start"]

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(applied, out["faults"])
"""

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")


def _run(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True, env={**os.environ, **env})  # fmt: skip
    applied, faults = out.stdout.split()
    return applied, int(faults)


@glibc_only
def test_freed_blocks_are_reused_without_page_faults():
    applied, faults = _run("on")
    assert applied == "True"
    pages = 3 * 100 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults < 0.01 * pages
    _, faults_default = _run("off")
    assert faults_default > faults  # glibc's default: munmap, then fresh pages every round


@glibc_only
def test_switched_off_by_the_environment():
    applied, _ = _run("on", PHYLOJAX_MALLOC_TUNING="off")
    assert applied == "False"


def test_the_program_applies_it_before_anything_runs():
    """``cli.run`` calls it first (the workers it forks inherit the settings); ``main`` does not."""
    import inspect

    from phylojax import cli

    source = inspect.getsource(cli.run)
    assert source.index("keep_freed_memory()") < source.index("main()")
    assert "keep_freed_memory" not in inspect.getsource(cli.main)


WORKER_CODE = SCRIPT.replace("from phylojax.memory import keep_freed_memory\n", "").replace(
    'applied = keep_freed_memory() if sys.argv[1] == "on" else None\n', "").replace(
    'print(applied, out["faults"])',
    'import os; open(os.path.join(OUT, str(os.getpid())), "w").write(str(out["faults"]))')  # fmt: skip


@glibc_only
@pytest.mark.parametrize("mode", ["on", "off"])
def test_workers_keep_freed_memory(monkeypatch, tmp_path, mode):
    """The worker processes apply the setting themselves (a spawned worker, as a notebook whose
    JAX has started gets, does not inherit it): the same oracle, run in each worker."""
    from phylojax import workers

    assert "keep_freed_memory" not in WORKER_CODE
    monkeypatch.setenv("PHYLOJAX_WORKERS", "2")
    monkeypatch.setenv("PHYLOJAX_WORKER_START", "spawn")
    monkeypatch.setenv("PHYLOJAX_MALLOC_TUNING", mode)
    workers.shutdown()
    try:
        pool = workers.get()
        code = f"OUT = {str(tmp_path)!r}\n" + WORKER_CODE
        pool.map("builtins:exec", [(code, {}), (code, {})])  # a fresh namespace each
    finally:
        workers.shutdown()
    faults = [int(p.read_text()) for p in tmp_path.iterdir()]
    pages = 3 * 100 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert len(faults) == 2
    if mode == "on":
        assert max(faults) < 0.01 * pages
    else:
        assert min(faults) > 0.5 * pages
