"""FEL's site fits split over the worker processes of :mod:`phylojax.workers`.

Sites are independent, so ``k`` workers (one pinned to each CPU, XLA on one thread each) take
``1/k`` of the sites each. Every share is padded to one size (repeating its first site; the
padding rows are dropped), so the workers run one compiled program: with the compilation
cache on, the first worker compiles it and the others read it from the cache
(:func:`phylojax.workers.compile_lock`).

Each kind of fit runs the same function as in the main process, on its share:

* ``"fast"``: :func:`.site_fits.fit_sites_fast` (every branch tested, ``--srv Yes``);
* ``"srv_no"``: :func:`.site_srv_no.fit_sites_srv_no`;
* ``"classes"``: :func:`.site_classes.fit_sites_classes` (background branches), with the
  profile intervals when asked (:func:`.intervals.profile_ci`).

The profile intervals of the fast and ``--srv No`` fits can go to the workers too
(:func:`profile_ci`). Everything here returns ``None`` when the pool is off or fails, and the
caller then does the work in its own process.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from .. import aot, workers
from ..host import to_device
from .site_fits import SiteFits, SiteProblem, _bucket

SHARE_STEP = 4  # share padding: powers of two up to 64, then multiples of this (the per-site
# refinement's blocks of 4 sites need a multiple of 4; docs/fel.md 'Worker processes')
MIN_SITES_PER_WORKER = 16  # below this a worker's share is not worth its messages
_FIELDS = ("syn", "nonsyn", "frequencies", "times", "background", "operations")


def _count(site_count: int) -> int:
    """Workers worth starting for ``site_count`` sites, whatever the backend."""
    return min(workers.worker_count(), site_count // MIN_SITES_PER_WORKER)


def plan(site_count: int) -> tuple[int, int]:
    """``(workers, share)``: how many workers take the sites and each share's padded size;
    ``(0, 0)`` when the fits should stay in this process (pool off, fewer than two workers'
    worth of sites, or a backend other than the CPU)."""
    count = _count(site_count)
    if count < 2 or jax.default_backend() != "cpu":
        return 0, 0
    return count, _bucket(-(-site_count // count), SHARE_STEP)


def start(site_count: int) -> None:
    """Start the worker processes now if fits of ``site_count`` sites would use them (they
    import JAX and the site-fit modules while this process reads and fits the global model)."""
    preload = (__name__, f"{__package__}.site_fits", f"{__package__}.site_srv_no")
    if _count(site_count) < 2:
        return
    if workers.can_fork():
        # before plan() asks for the backend: a worker forked before JAX starts its backend
        # is a copy of this process with everything imported (workers.py)
        # scipy.linalg too: lowering eigh imports it (jaxlib's LAPACK kernels come from scipy),
        # 0.35 s a process; imported once here, the workers do not each import it again (cold
        # HepatitisD, empty cache, 8 alternating pairs: median 9.2 -> 8.9 s; cached unchanged)
        import scipy.linalg  # noqa: F401
        workers.get(preload=preload)
    if plan(site_count)[0]:
        workers.get(preload=preload)
    else:  # not the CPU backend after all
        workers.shutdown()


def _arrays(problem: SiteProblem) -> dict:
    out = {f: np.asarray(getattr(problem, f)) for f in _FIELDS}
    out["has_background"] = bool(problem.has_background)
    return out


def _problem(arrays: dict) -> SiteProblem:
    def value(f):
        a = arrays[f]
        return a if isinstance(a, jax.ShapeDtypeStruct) else to_device(a)

    return SiteProblem(*(value(f) for f in _FIELDS), has_background=arrays["has_background"])


def _share_rows(site_count: int, count: int, share: int) -> tuple[list[np.ndarray], list[int]]:
    """Row indices of ``count`` shares of ``share`` rows each (padded by repeating each share's
    first site) and the number of real rows in each."""
    rows = np.array_split(np.arange(site_count), count)
    return ([np.concatenate([r, np.repeat(r[:1], share - len(r))]) for r in rows],
            [len(r) for r in rows])  # fmt: skip


def _warn(e: Exception):
    warnings.warn(f"site fits in worker processes failed ({e}); fitting in this process",
                  RuntimeWarning, stacklevel=3)  # fmt: skip


# ------------------------------------------------------------------------- parent side
def compile_later(problem: SiteProblem, site_count: int, taxon_count: int, state_count: int,
                  kind: str) -> list | None:  # fmt: skip
    """Have the workers compile the ``kind`` program for their shares now (while the global
    fits run); ``problem``'s float arrays may be ``jax.ShapeDtypeStruct``. Returns the tickets
    (for :func:`wait`) or ``None`` when the fits will run in this process."""
    count, share = plan(site_count)
    pool = workers.get() if count else None
    if pool is None or not aot.enabled():  # PHYLOJAX_PRECOMPILE=off: compile on first use
        return None
    spec = {f: getattr(problem, f) for f in _FIELDS}
    spec = {f: (jax.ShapeDtypeStruct(a.shape, a.dtype) if f not in ("background", "operations")
                else np.asarray(a)) for f, a in spec.items()}  # fmt: skip
    spec["has_background"] = bool(problem.has_background)
    try:
        return [(pool, pool.submit(k, f"{__name__}:_compile_share", kind, spec, share,
                                   taxon_count, state_count, SHARE_STEP))
                for k in range(count)]  # fmt: skip
    except workers.WorkerError as e:
        _warn(e)
        return None


def wait(tickets) -> None:
    """Read :func:`compile_later`'s replies: they come as soon as a worker has queued the
    compilation on its own thread, which the fits then wait for (a failure is reported by the
    fits themselves)."""
    for pool, ticket in tickets or ():
        try:
            pool.result(ticket)
        except workers.WorkerError:
            return


def _on_workers(function: str, site_count: int, arguments):
    """``function`` on each worker's share of ``site_count`` sites: ``arguments(rows)`` gives
    the call's arguments for a share's padded row indices. Returns ``(results, sizes)``, or
    ``None`` when the work should be done in this process (pool off or failed)."""
    count, share = plan(site_count)
    pool = workers.get() if count else None
    if pool is None:
        return None
    rows, sizes = _share_rows(site_count, count, share)
    try:
        return pool.map(f"{__name__}:{function}", [arguments(r) for r in rows]), sizes
    except workers.WorkerError as e:
        _warn(e)
        return None


def fit(problem: SiteProblem, tips, kind: str, srv: bool = True, ci: bool = False) -> SiteFits | None:
    """The ``kind`` fits of ``tips [site, taxon, state]`` on the workers (``None``: do them here)."""
    tips, arrays = np.asarray(tips), _arrays(problem)
    done = _on_workers("_fit_share", len(tips),
                       lambda rows: (kind, arrays, tips[rows], srv, ci, SHARE_STEP))  # fmt: skip
    if done is None:
        return None
    parts, sizes = done

    def cat(name):
        values = [getattr(q, name) for q in parts]
        if values[0] is None:
            return None
        return np.concatenate([np.asarray(v)[:n] for v, n in zip(values, sizes)])

    return SiteFits(**{f.name: cat(f.name) for f in dataclasses.fields(SiteFits)})


def profile_ci(problem: SiteProblem, tips, fits: SiteFits, srv: bool) -> np.ndarray | None:
    """:func:`.intervals.profile_ci` of the fast / ``--srv No`` fits on the workers."""
    tips, arrays = np.asarray(tips), _arrays(problem)

    def share_of(rows):
        picked = {f.name: (None if getattr(fits, f.name) is None
                           else np.asarray(getattr(fits, f.name))[rows])
                  for f in dataclasses.fields(SiteFits)}  # fmt: skip
        return arrays, tips[rows], SiteFits(**picked), srv

    done = _on_workers("_ci_share", len(tips), share_of)
    if done is None:
        return None
    parts, sizes = done
    return np.concatenate([q[:n] for q, n in zip(parts, sizes)])


# ------------------------------------------------------------------------- worker side
# A worker compiles on a thread of its own (XLA compiles with the GIL released), so that a
# compilation request returns at once and later requests run beside it; a call waits only for
# its own program.
_COMPILER = None
_COMPILING: dict = {}  # name -> Future of the compilation
_COMPILED: set = set()  # signatures compiled here (a repeated analysis lowers nothing again)


def _signature(*args):
    from .. import aot

    leaves, tree = jax.tree.flatten(aot.abstract(args))
    return tree, tuple(leaves)


def _compile_async(name: str, lock: str, lower, signature) -> None:
    global _COMPILER
    import concurrent.futures

    if signature in _COMPILED:
        return
    _COMPILED.add(signature)
    if _COMPILER is None:
        _COMPILER = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="phylojax-compile")

    def job():
        lowered = lower()
        with workers.compile_lock(lock):  # the first worker compiles, the others read the cache
            lowered.compile()

    _COMPILING[name] = _COMPILER.submit(job)


def _await(name: str) -> None:
    job = _COMPILING.pop(name, None)
    if job is not None:
        job.exception()  # a failed compilation is left to the call, which raises it itself


def _compile_share(kind: str, spec: dict, share: int, taxon_count: int, state_count: int,
                   step: int) -> None:  # fmt: skip
    problem = _problem(spec)
    tips = jax.ShapeDtypeStruct((share, taxon_count, state_count), np.float64)
    if kind == "fast":
        from .site_fits import _fast_program

        program, shape, _, _, grid, static = _fast_program(problem, share, taxon_count,
                                                           state_count, step=step)  # fmt: skip
        args = (jax.ShapeDtypeStruct(shape, np.float64), problem, grid, *static)
    elif kind == "srv_no":
        from .site_srv_no import _DRIVER as program

        args = (tips, problem, jax.ShapeDtypeStruct((40,), np.float64), 7)
    else:
        raise ValueError(f"no ahead-of-time compilation for {kind!r} fits")
    _compile_async("sites", f"sites-{kind}", lambda: program.lower(*args), _signature(kind, *args))


def _fit_share(kind: str, arrays: dict, tips: np.ndarray, srv: bool, ci: bool,
               step: int) -> SiteFits:  # fmt: skip
    problem = _problem(arrays)
    _await("sites")
    if kind == "fast":
        from .site_fits import fit_sites_fast

        return fit_sites_fast(problem, tips, step=step)
    if kind == "srv_no":
        from .site_srv_no import fit_sites_srv_no

        return fit_sites_srv_no(problem, tips, step=step)
    if kind == "classes":
        from .site_classes import fit_sites_classes

        fits = fit_sites_classes(problem, tips, srv=srv)
        if ci:
            from .intervals import profile_ci as _profile

            fits = dataclasses.replace(fits, dnds_ci=_profile(problem, tips, fits, srv))
        return fits
    raise ValueError(f"unknown kind of site fits {kind!r}")


def _ci_share(arrays: dict, tips: np.ndarray, fits: SiteFits, srv: bool) -> np.ndarray:
    from .intervals import profile_ci as _profile

    return _profile(_problem(arrays), tips, fits, srv)
