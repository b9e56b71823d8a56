"""Compile jitted programs ahead of time, in a background thread, while other work runs.

An analysis such as FEL runs a chain of large programs (GTR fit, MG94 fit, site fits), each
compiled on its first call. Their shapes are known from the data before the first one runs, so
the later programs can be compiled while the earlier ones execute: XLA compiles in C++ with the
GIL released, and ``jit(f).lower(...).compile()`` fills the same caches a later ordinary call of
``jit(f)`` reads (that call then neither retraces nor recompiles). Measured in
``benchmarks/RESULTS_fel.md`` (cold end-to-end runs).

Usage::

    job = aot.compile_later(_FAST, tips, problem, grid, 5, 3)   # arrays or ShapeDtypeStructs
    ...                                                         # other work
    aot.wait(job)                                               # before calling _FAST
    _FAST(tips, problem, grid, 5, 3)

One worker thread: compile jobs run one after another, in the order they were submitted.
``PHYLOJAX_PRECOMPILE=off`` turns this off (every program is compiled on its first call).
A job that fails is ignored here: the ordinary call compiles again and raises the error itself.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading

import jax
import numpy as np

_LOCK = threading.Lock()
_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_JOBS: dict = {}  # (program, abstract signature) -> job, so a repeated analysis submits nothing


def enabled() -> bool:
    return os.environ.get("PHYLOJAX_PRECOMPILE", "on").lower() not in ("off", "0", "no", "false")


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="phylojax-compile"
            )
        return _EXECUTOR


def abstract(tree):
    """``tree`` with every array leaf replaced by its ``ShapeDtypeStruct`` (other leaves kept)."""

    def leaf(x):
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        return x

    return jax.tree.map(leaf, tree)


def compile_later(jitted, *args, **kwargs) -> concurrent.futures.Future | None:
    """Start compiling ``jitted(*args, **kwargs)`` in the background; returns a job for
    :func:`wait` (``None`` when precompilation is off).

    ``args``/``kwargs`` are what the later call will pass (static arguments included); array
    leaves may already be ``jax.ShapeDtypeStruct``. Shapes and dtypes must match that call
    exactly (a mismatch is harmless: the call compiles its own program).
    """
    if not enabled():
        return None
    args, kwargs = abstract(args), abstract(kwargs)
    leaves, tree = jax.tree.flatten((args, kwargs))
    try:
        key = (id(jitted), tree, tuple(leaves))  # ShapeDtypeStructs hash by shape and dtype
        hash(key)
    except TypeError:  # an unhashable static argument: let the job fail (and the call report it)
        key = None
    with _LOCK:
        job = _JOBS.get(key) if key is not None else None
        if job is not None and not (job.done() and job.exception() is not None):
            return job  # compiled (or being compiled) already: a second analysis pays nothing
    job = _executor().submit(lambda: jitted.lower(*args, **kwargs).compile())
    if key is not None:
        with _LOCK:
            if len(_JOBS) > 256:
                _JOBS.clear()
            _JOBS[key] = job
    return job


def wait(*jobs) -> None:
    """Block until the given jobs (from :func:`compile_later`, ``None`` allowed) are done."""
    for job in jobs:
        if job is None:
            continue
        try:
            job.result()
        except Exception:  # noqa: BLE001 -- the ordinary call recompiles and reports it
            pass
