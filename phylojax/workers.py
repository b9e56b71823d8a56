"""Persistent worker processes, one pinned to each CPU, for data-parallel work on XLA:CPU.

XLA:CPU parallelises single operations, and the small matrix products of a batched site fit
(a few hundred rows of 61 states) do not split: FEL's site stage runs at ~1.15x of one core on
two cores. Sites are independent, so two processes each fitting half of them on one core
finish in ~0.55x of the time (HepatitisD, benchmarks/RESULTS_fel.md). Threads in one process
cannot do this: concurrent XLA:CPU calls deadlock (``benchmarks/concurrent_sites.py``).

A worker has its CPU affinity set before its JAX backend starts (so XLA runs one thread),
float64 on, and the parent's persistent compilation cache (else one of the pool's own, removed
with it). It is a ``fork`` of the parent where that is safe (:func:`can_fork`: the parent's JAX
backend has not started and no other thread runs, as in the command line, which starts the pool
first thing), so it begins with JAX and phylojax imported (~0.9 s of CPU less per worker); else
a fresh ``python -c``. It
receives ``(function path, args)`` over a socket and sends back the result; it stays alive
between analyses, so a second analysis in the same process (a notebook, a benchmark's warm
run) finds its programs compiled. Workers exit when the parent closes the socket or exits.

Workers compile a program one after another under a file lock (:func:`compile_lock`), so a
program of the same shape is compiled once and read from the cache by the others.

A worker that fails, dies, exceeds ``PHYLOJAX_CHILD_TIMEOUT`` seconds (default 3600) or uses no
CPU for 60 s while it has work is killed, the pool is closed, and the caller gets
:class:`WorkerError` (and falls back to in-process work). ``PHYLOJAX_WORKERS=off`` disables the
pool; ``PHYLOJAX_WORKERS=N`` sets the number of workers (default: one per CPU, at most 8).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import gc
import importlib
import itertools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection

STALL_SECONDS = 60.0
MAX_DEFAULT_WORKERS = 8
_CODE = """
import os, sys
os.sched_setaffinity(0, {{{cpu}}})
from phylojax.workers import _worker_main
_worker_main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
"""


class WorkerError(RuntimeError):
    """A worker failed, died or stalled; the pool has been closed."""


def worker_count() -> int:
    """How many workers :func:`get` would start (0: the pool is off or cannot run here)."""
    if not hasattr(os, "sched_setaffinity"):
        return 0
    flag = os.environ.get("PHYLOJAX_WORKERS", "").strip().lower()
    if flag in ("off", "0", "no", "false"):
        return 0
    cpus = len(os.sched_getaffinity(0))
    if flag:
        try:
            return max(0, int(flag))
        except ValueError:
            return 0
    return min(cpus, MAX_DEFAULT_WORKERS) if cpus >= 2 else 0


class _Forked:
    """The parts of :class:`subprocess.Popen` the pool uses, for a worker made by ``os.fork``."""

    def __init__(self, pid: int, stderr):
        self.pid, self.stderr, self.returncode = pid, stderr, None

    def poll(self):
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("phylojax worker", timeout)
            time.sleep(0.005)
        return self.returncode

    def kill(self):
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


_OWN_THREAD = "phylojax-worker-stderr"


def can_fork() -> bool:
    """Whether a worker can be forked from this process: JAX's backends are not initialised
    yet (XLA's threads and device state do not survive ``fork``) and no other threads run
    than this module's stderr readers. ``PHYLOJAX_WORKER_START=spawn`` forces a fresh
    interpreter for every worker."""
    if os.environ.get("PHYLOJAX_WORKER_START", "").strip().lower() == "spawn":
        return False
    if not hasattr(os, "fork") or "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        if xla_bridge.backends_are_initialized():
            return False
    except (ImportError, AttributeError):
        return False
    others = [t for t in threading.enumerate()
              if t is not threading.current_thread() and t.name != _OWN_THREAD]  # fmt: skip
    return not others


class _Worker:
    def __init__(self, cpu: int, cache: str, preload: str, close_in_child=()):
        parent, child = socket.socketpair()
        if can_fork():
            self.proc = self._fork(cpu, cache, preload, parent, child, close_in_child)
        else:
            self.proc = self._spawn(cpu, cache, preload, child)
        child.close()
        self.conn = Connection(parent.detach())
        self.cpu = cpu
        self.pending: collections.deque = collections.deque()  # tickets in submission order
        self.results: dict = {}
        self.lock = threading.Lock()  # one thread at a time sends to or reads from the socket
        self.stderr: list[bytes] = []
        # started by the pool once every worker exists, so that no thread runs while it forks
        self._reader = threading.Thread(target=self._drain, daemon=True, name=_OWN_THREAD)

    @staticmethod
    def _spawn(cpu, cache, preload, child):
        env = dict(os.environ)
        # the worker imports the same phylojax as this process
        root = str(pathlib.Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
        return subprocess.Popen(
            [sys.executable, "-c", _CODE.format(cpu=cpu), str(child.fileno()), cache, preload],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=env,
        )  # fmt: skip

    @staticmethod
    def _fork(cpu, cache, preload, parent, child, close_in_child):
        """A copy of this process (JAX and phylojax already imported: ~0.9 s of CPU less than
        a fresh interpreter per worker), pinned to ``cpu`` before JAX starts its backend."""
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        # Python's advice for fork without exec: the objects made so far (the imported modules)
        # go to the collector's permanent generation, so that neither process's collections
        # walk them again (nor write to their pages, which the processes share copy-on-write).
        # Traced JAX programs make many collections: HepatitisD FEL, 0.5-0.6 s of each worker's
        # CPU went to walking them (cli._collect_garbage_rarely).
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the caller's code
            code = 0
            try:
                os.close(read_end)
                parent.close()
                for fd in close_in_child:  # the other workers' ends of their sockets and pipes
                    with contextlib.suppress(OSError):
                        os.close(fd)
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                os.dup2(write_end, 2)
                os.sched_setaffinity(0, {cpu})
                _worker_main(child.detach(), cache, preload)
            except BaseException:  # noqa: BLE001 -- reported on stderr, read by the parent
                import traceback

                with contextlib.suppress(Exception):
                    os.write(2, traceback.format_exc().encode())
                code = 1
            finally:
                os._exit(code)
        os.close(write_end)
        return _Forked(pid, os.fdopen(read_end, "rb"))

    def child_fds(self) -> list[int]:
        """This worker's file descriptors that a later forked worker must not keep open."""
        fds = [self.conn.fileno()]
        if self.proc.stderr is not None:
            fds.append(self.proc.stderr.fileno())
        return fds

    def _drain(self):  # keep the worker's stderr pipe from filling (and the last of it for errors)
        for line in self.proc.stderr:
            self.stderr.append(line)
            del self.stderr[:-40]

    def stderr_tail(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")[-2000:]

    def close(self, kill: bool = False):
        with contextlib.suppress(OSError):
            self.conn.close()
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Ticket:
    """A submitted call; :meth:`Pool.result` waits for it."""

    def __init__(self, worker: _Worker, number: int):
        self.worker, self.number = worker, number


class Pool:
    """One worker per CPU (see the module docstring)."""

    def __init__(self, count: int, preload=()):
        import jax

        cache = jax.config.jax_compilation_cache_dir or ""
        self._private_cache = None
        if not cache:  # a cache of the pool's own, so that workers compile each program once
            self._private_cache = tempfile.TemporaryDirectory(prefix="phylojax-workers-xla-")
            cache = self._private_cache.name
        cpus = sorted(os.sched_getaffinity(0))
        self.workers = []
        for k in range(count):
            inherited = [fd for w in self.workers for fd in w.child_fds()]
            self.workers.append(_Worker(cpus[k % len(cpus)], cache, ",".join(preload), inherited))
        for w in self.workers:
            w._reader.start()
        self._numbers = itertools.count(1)  # ticket numbers (next() is atomic under the GIL)
        self.closed = False

    def __len__(self) -> int:
        return len(self.workers)

    def submit(self, k: int, function: str, *args) -> Ticket:
        """Queue ``function(*args)`` (``"module:name"``) on worker ``k``; returns at once."""
        worker = self.workers[k]
        with worker.lock:
            ticket = Ticket(worker, next(self._numbers))
            try:
                worker.conn.send((function, args))
            except OSError as e:
                self._fail(f"worker on CPU {worker.cpu} cannot be reached ({e})")
            worker.pending.append(ticket.number)
        return ticket

    def result(self, ticket: Ticket, timeout: float | None = None):
        """Wait for ``ticket``'s result (earlier results of its worker are read and kept)."""
        worker = ticket.worker
        if timeout is None:
            timeout = float(os.environ.get("PHYLOJAX_CHILD_TIMEOUT", "3600"))
        start = time.monotonic()
        last_cpu, last_change = _cpu_seconds(worker.proc.pid), start
        while ticket.number not in worker.results:
            if self.closed:
                raise WorkerError("the worker pool was closed")
            with worker.lock:  # another thread may be reading this worker's replies
                if ticket.number in worker.results:
                    break
                if worker.conn.poll(1.0):
                    try:
                        status, value = worker.conn.recv()
                    except (EOFError, OSError):
                        self._fail(f"worker on CPU {worker.cpu} died:\n{worker.stderr_tail()}")
                    worker.results[worker.pending.popleft()] = (status, value)
                    continue
            now = time.monotonic()
            if worker.proc.poll() is not None:
                self._fail(f"worker on CPU {worker.cpu} exited:\n{worker.stderr_tail()}")
            cpu = _cpu_seconds(worker.proc.pid)
            if cpu is not None and (last_cpu is None or cpu > last_cpu + 0.05):
                last_cpu, last_change = cpu, now
            if now - start > timeout:
                self._fail(f"worker on CPU {worker.cpu} did not finish in {timeout:.0f} s")
            if cpu is not None and now - last_change > STALL_SECONDS:
                self._fail(f"worker on CPU {worker.cpu} used no CPU for {STALL_SECONDS:.0f} s")
        status, value = worker.results.pop(ticket.number)
        if status != "ok":
            self._fail(f"worker on CPU {worker.cpu} raised:\n{value}")
        return value

    def map(self, function: str, arg_lists) -> list:
        """``function(*args)`` for each ``args`` of ``arg_lists``, on workers 0, 1, ... at once."""
        tickets = [self.submit(k, function, *args) for k, args in enumerate(arg_lists)]
        return [self.result(t) for t in tickets]

    def _fail(self, why: str):
        self.close(kill=True)
        raise WorkerError(why)

    def close(self, kill: bool = False):
        global _POOL
        self.closed = True
        for w in self.workers:
            w.close(kill=kill)
        if self._private_cache is not None:
            self._private_cache.cleanup()
            self._private_cache = None
        with _LOCK:
            if _POOL is self:
                _POOL = None


_LOCK = threading.RLock()  # re-entrant: get() closes a pool of the wrong size while holding it
_POOL: Pool | None = None


def get(minimum: int = 2, preload=()) -> Pool | None:
    """The process's pool (started on first use), or ``None`` when fewer than ``minimum``
    workers would run (see :func:`worker_count`). ``preload``: modules a new pool's workers
    import as they start, before their first request."""
    global _POOL
    count = worker_count()
    if count < minimum:
        return None
    with _LOCK:
        if _POOL is None or _POOL.closed or len(_POOL) != count:
            if _POOL is not None:
                _POOL.close()
            _POOL = Pool(count, preload)
        return _POOL


def shutdown(kill: bool = False):
    """Close the pool (workers exit; ``kill``: at once); a later :func:`get` starts a new one."""
    pool = _POOL
    if pool is not None:
        pool.close(kill=kill)


atexit.register(shutdown, kill=True)  # workers hold nothing to save; their exit would take ~1 s


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process from ``/proc`` (``None`` where there is no /proc)."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def compile_lock(name: str = "program"):
    """In a worker: hold the pool's compile lock for ``name`` (a file in the compilation cache)
    so workers compile a program one after another and the later ones read it from the cache.
    A no-op without a cache."""
    import jax

    cache = jax.config.jax_compilation_cache_dir
    if not cache:
        yield
        return
    import fcntl

    path = pathlib.Path(cache) / f".phylojax-compile-{name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 -- released in the finally below
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _worker_main(fd: int, cache: str, preload: str = "") -> None:
    import traceback

    from .cli import GC_THRESHOLDS
    from .memory import keep_freed_memory

    gc.set_threshold(*GC_THRESHOLDS)  # a worker is a program of ours (cli._collect_garbage_rarely)
    # and evaluates the same large programs again and again: malloc keeps XLA's temporary blocks
    # (phylojax/memory.py; a forked worker of the command line has it already, a spawned one or
    # one forked from a notebook did not; PHYLOJAX_MALLOC_TUNING=off leaves malloc alone)
    keep_freed_memory()
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    for module in filter(None, preload.split(",")):  # while the parent is busy elsewhere
        importlib.import_module(module)
    conn = Connection(fd)
    while True:
        try:
            function, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            module, name = function.split(":")
            reply = ("ok", getattr(importlib.import_module(module), name)(*args))
        except BaseException:  # noqa: BLE001 -- reported to the parent, which raises
            reply = ("error", traceback.format_exc()[-4000:])
        try:
            conn.send(reply)
        except (OSError, EOFError):
            return
