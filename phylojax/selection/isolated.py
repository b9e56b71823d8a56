"""The batched two-class site fits (:mod:`.site_classes`) in a child process pinned to one CPU.

With background branches (a nuisance beta) the batched site program deadlocks XLA:CPU (jaxlib
0.10.2) at random when XLA runs it on two or more threads: no CPU use, the main thread waiting in
``BlockUntilReady`` (``benchmarks/general_path_hang.py`` reproduces it). Pinned to one CPU before
JAX starts, XLA runs it on a single thread, and it completes. Measured on 48 CD2 codons
(``--branches Internal``): 12.1 s first call, 2.7 s warm, against 39 s for the sequential
optax path (:mod:`.site_general`). That path barely uses a second core.

So :func:`fit_sites_classes_isolated` writes the problem to a temporary ``.npz`` and runs
``python -c`` with the affinity set before anything imports JAX. The child reads the problem
and writes the fits back (and, for ``--ci``, the profile intervals). With two CPUs and at least
``2 * MIN_SITES_PER_CHILD`` sites, two children pinned to different CPUs take half of the sites
each (sites are independent; the results are those of one child). The persistent compilation cache is shared with the parent when the
parent has one.

If a child fails, exceeds ``PHYLOJAX_CHILD_TIMEOUT`` seconds (default 3600), or uses no CPU for
60 s (a deadlock: it waits without computing; read from ``/proc``), it is killed, the caller
gets ``None`` and falls back to the sequential path. ``PHYLOJAX_BATCHED_GENERAL=off`` skips the
child, and so does a platform without ``os.sched_setaffinity``.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from ..workers import _cpu_seconds
from .site_fits import SiteFits, SiteProblem

STALL_SECONDS = 60.0  # a child using no CPU this long is taken as deadlocked and killed
MIN_SITES_PER_CHILD = 16  # below this a second child costs more (its start-up) than it saves
_CHILD = """
import os, sys
os.sched_setaffinity(0, {{{cpu}}})
from phylojax.selection.isolated import _child_main
_child_main(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def available() -> bool:
    flag = os.environ.get("PHYLOJAX_BATCHED_GENERAL", "on").lower()
    return hasattr(os, "sched_setaffinity") and flag not in ("off", "0", "no", "false")


def fit_sites_classes_isolated(problem: SiteProblem, tips, srv: bool, ci: bool = False) -> SiteFits | None:
    """Batched two-class site fits in a one-CPU child process; ``None`` when unavailable or the
    child failed (the caller then uses :func:`.site_general.fit_sites_general`). ``ci``: the
    child also computes the profile intervals of dN/dS (:func:`.intervals.profile_ci`, in
    ``SiteFits.dnds_ci``)."""
    if not available():
        return None
    import jax

    timeout = float(os.environ.get("PHYLOJAX_CHILD_TIMEOUT", "3600"))
    cache = jax.config.jax_compilation_cache_dir or ""
    tips = np.asarray(tips)
    # one child per CPU (at most two), each pinned to its own and given a share of the sites:
    # sites are independent, and each child runs single-threaded anyway
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(tips) < 2 * MIN_SITES_PER_CHILD:
        cpus = cpus[:1]
    shares = np.array_split(np.arange(len(tips)), len(cpus))
    with tempfile.TemporaryDirectory(prefix="phylojax-sites-") as tmp:
        procs = []
        for k, (cpu, rows) in enumerate(zip(cpus, shares)):
            inp, out = pathlib.Path(tmp) / f"in{k}.npz", pathlib.Path(tmp) / f"out{k}.npz"
            np.savez(inp, syn=np.asarray(problem.syn), nonsyn=np.asarray(problem.nonsyn),
                     frequencies=np.asarray(problem.frequencies), times=np.asarray(problem.times),
                     background=np.asarray(problem.background),
                     operations=np.asarray(problem.operations),
                     has_background=bool(problem.has_background), tips=tips[rows],
                     srv=bool(srv), ci=bool(ci))  # fmt: skip
            cmd = [sys.executable, "-c", _CHILD.format(cpu=cpu), str(inp), str(out), cache]
            err = pathlib.Path(tmp) / f"stderr{k}.txt"
            stderr = open(err, "w")  # noqa: SIM115 -- closed below, after the child ends
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr),
                          stderr, out, err))  # fmt: skip
        problem_text = None
        for proc, stderr, out, err in procs:
            why = _watch(proc, timeout) if problem_text is None else _kill(proc)
            stderr.close()
            if why is None and (proc.returncode or not out.exists()):
                why = f"failed in the child process:\n{err.read_text()[-2000:]}"
            problem_text = problem_text or why
        if problem_text is not None:
            warnings.warn(f"batched site fits {problem_text}; using the sequential path",
                          RuntimeWarning, stacklevel=2)  # fmt: skip
            return None
        parts = []
        for _, _, out, _ in procs:
            with np.load(out) as d:
                parts.append({f.name: d[f.name] for f in dataclasses.fields(SiteFits) if f.name in d})
        return SiteFits(**{key: np.concatenate([q[key] for q in parts]) for key in parts[0]})


def _kill(proc: subprocess.Popen) -> str:
    proc.kill()
    proc.wait()
    return "stopped after another child failed"


def _watch(proc: subprocess.Popen, timeout: float, idle: float = STALL_SECONDS) -> str | None:
    """Wait for ``proc``; kill it after ``timeout`` seconds, or when it has used no CPU for
    ``idle`` seconds (the deadlock's signature: it waits without computing). Returns why it was
    killed, or ``None``."""
    start = time.monotonic()
    last_cpu, last_change = _cpu_seconds(proc.pid), time.monotonic()
    while True:
        try:
            proc.wait(timeout=1.0)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        cpu = _cpu_seconds(proc.pid)
        if cpu is not None and (last_cpu is None or cpu > last_cpu + 0.05):
            last_cpu, last_change = cpu, now
        reason = None
        if now - start > timeout:
            reason = f"did not finish in {timeout:.0f} s"
        elif cpu is not None and now - last_change > idle:
            reason = f"used no CPU for {idle:.0f} s (deadlocked)"
        if reason is not None:
            proc.kill()
            proc.wait()
            return reason


def _child_main(inp: str, out: str, cache: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from ..host import to_device
    from .site_classes import fit_sites_classes

    with np.load(inp) as d:
        problem = SiteProblem(
            *(to_device(d[f]) for f in ("syn", "nonsyn", "frequencies", "times", "background",
                                        "operations")),
            has_background=bool(d["has_background"]),
        )  # fmt: skip
        tips, srv, ci = d["tips"], bool(d["srv"]), bool(d["ci"])
    fits = fit_sites_classes(problem, tips, srv=srv)
    if ci:
        from .intervals import profile_ci

        fits = dataclasses.replace(fits, dnds_ci=profile_ci(problem, tips, fits, srv))
    np.savez(out, **{k: v for k, v in dataclasses.asdict(fits).items() if v is not None})
