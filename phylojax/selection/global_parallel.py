"""FEL's MG94 objective (global fit steps 3 and 4) split by codon pattern over the worker
processes of :mod:`phylojax.workers`.

The log-likelihood is a sum over site patterns, so ``k`` workers each evaluate the value and
gradient of ``1/k`` of every partition's patterns and the parent adds them up (always in worker
order, so a fit is reproducible). Each share is padded to one size with zero-weight copies of
its first pattern, so the workers run one compiled program (the first compiles it, the others
read it from the cache: :func:`phylojax.workers.compile_lock`).

The transition matrices do not depend on the patterns, so every worker computes all of them:
on one core, half of the patterns takes 55 % of the time on rbp3 and 68 % on HIV_RT
(RESULTS_fel.md), and below :data:`MIN_PATTERNS_PER_WORKER` patterns per worker the split is
not worth its messages. The workers evaluate it from the second analysis of the same shapes in
a process on (a notebook, ``bench_fel.py``'s warm run): :func:`prepare`, after an analysis, has
them compile it in the background. :func:`objective` returns ``None`` when the objective should
stay in this process, and the objective it returns gives ``None`` once a worker has failed (the
caller then evaluates in its own process).
"""

from __future__ import annotations

import itertools
import threading
import warnings

import jax
import numpy as np

from .. import workers

MIN_PATTERNS_PER_WORKER = 128
_PAD = 8  # shares are padded to a multiple of this many patterns
_KEYS = itertools.count()


def plan(pattern_count: int) -> int:
    """How many workers would share ``pattern_count`` codon patterns (0: none)."""
    if jax.default_backend() != "cpu":
        return 0
    count = min(workers.worker_count(), pattern_count // MIN_PATTERNS_PER_WORKER)
    return count if count >= 2 else 0


def _shares(data, count: int) -> list:
    """``count`` pattern shares of one partition's codon ``PhyloData`` (numpy), each padded to
    one size with zero-weight copies of its first pattern."""
    n = int(np.shape(data.pattern_weights)[-1])
    per_worker = -(-n // count)
    size = -(-per_worker // _PAD) * _PAD
    tips, weights = np.asarray(data.tip_partials), np.asarray(data.pattern_weights)
    invariant, operations = np.asarray(data.invariant_states), np.asarray(data.operations)
    out = []
    for rows in np.array_split(np.arange(n), count):
        idx = np.concatenate([rows, np.repeat(rows[:1], size - len(rows))])
        w = weights[idx].copy()
        w[len(rows):] = 0.0
        out.append(type(data)(tips[..., idx], w, operations, invariant[:, idx]))
    return out


_PREPARED: set = set()  # shapes whose objective the workers were given to compile (prepare)


def _layout(parts, position_frequencies, code):
    """``(pool, count, load arguments without the key, shape signature)`` or ``None``."""
    from .global_fits import _codon_arguments

    total = sum(int(np.shape(p.codon.pattern_weights)[-1]) for p in parts)
    count = plan(total)
    pool = workers.get() if count else None
    if pool is None:
        return None
    free, codon, background, g, two_class = _codon_arguments(parts, position_frequencies)
    shares = [_shares(d, count) for d in codon]
    fixed = ([np.asarray(f) for f in free], [np.asarray(b) for b in background], np.asarray(g))
    n = 5 + (2 if two_class else 1) + sum(int(f.shape[0]) for f in free)
    shape = (count, n, code, bool(two_class),
             tuple(np.shape(s[0].tip_partials) for s in shares))  # fmt: skip
    return pool, count, (fixed, shares, n, code, bool(two_class)), shape


def _send(pool, count: int, key: int, load, failed: list) -> threading.Thread:
    """Send each worker its share on a thread (sending blocks until a worker that is still
    starting reads it); a failure is appended to ``failed``."""
    fixed, shares, n, code, two_class = load

    def run():
        try:
            for k in range(count):
                pool.result(pool.submit(k, f"{__name__}:_load", key, fixed,
                                        [s[k] for s in shares], n, code, two_class))  # fmt: skip
        except workers.WorkerError as e:
            failed.append(e)

    thread = threading.Thread(target=run, name="phylojax-global-load", daemon=True)
    thread.start()
    return thread


def prepare(parts, position_frequencies, code=1) -> None:
    """Have the workers compile the objective for these shapes now, in the background (``fel``
    calls this after an analysis that fitted in its own process): the next analysis of the same
    shapes then evaluates it on the workers (:func:`objective`)."""
    layout = _layout(parts, position_frequencies, code)
    if layout is None:
        return
    pool, count, load, shape = layout
    if shape not in _PREPARED:
        _PREPARED.add(shape)
        _send(pool, count, next(_KEYS), load, [])


def objective(parts, position_frequencies, code=1):
    """``value_and_grad(x) -> (lnL, gradient)`` of :func:`.global_fits._full_value_and_grad`
    evaluated on the workers, or ``None`` when it should run in this process: no pool, too few
    patterns, or shapes the workers have not been given to compile before (:func:`prepare`).

    Only prepared shapes go to the workers because a worker is pinned to one CPU: compiling the
    objective there, and then the site program beside its evaluations, made cold runs slower
    (rbp3 19.0 -> 24.0 / 30.7 s with an empty cache) and cached runs no faster."""
    layout = _layout(parts, position_frequencies, code)
    if layout is None or layout[3] not in _PREPARED:
        return None
    pool, count, load, _ = layout
    key = next(_KEYS)
    failed = []

    loading = _send(pool, count, key, load, failed)

    def value_and_grad(x):
        loading.join()
        if failed:
            if len(failed) == 1:  # warn once
                _warn(failed[0])
                failed.append(None)
            return None
        x = np.asarray(x, dtype=np.float64)
        try:
            tickets = [pool.submit(k, f"{__name__}:_evaluate", key, x) for k in range(count)]
            out = [pool.result(t) for t in tickets]
        except workers.WorkerError as e:
            failed.extend([e, None])
            _warn(e)
            return None
        value = out[0][0]
        grad = np.array(out[0][1])
        for v, gr in out[1:]:
            value = value + v
            grad = grad + gr
        return value, grad

    return value_and_grad


def _warn(e: Exception):
    warnings.warn(f"global fit in worker processes failed ({e}); fitting in this process",
                  RuntimeWarning, stacklevel=3)  # fmt: skip


# ------------------------------------------------------------------------- worker side
_LOADED: dict = {}  # the objective of the latest key: {"key", "args", "job"}


def _load(key: int, fixed, codon, n: int, code, two_class: bool) -> None:
    """Keep this worker's share and start compiling its objective on the worker's compile
    thread (the reply does not wait for it)."""
    import jax.numpy as jnp

    from .global_fits import _full_value_and_grad
    from .parallel import _compile_async, _signature

    free, background, g = fixed
    args = ([jnp.asarray(f) for f in free], [jax.tree.map(jnp.asarray, d) for d in codon],
            [jnp.asarray(b) for b in background], jnp.asarray(g))  # fmt: skip
    x = jax.ShapeDtypeStruct((n,), jnp.float64)
    _LOADED.clear()
    _LOADED.update(key=key, args=args, code=code, two_class=two_class)

    def lower():
        return _full_value_and_grad.lower(x, *args, code, two_class)

    _compile_async("global", "global-mg94", lower, _signature("global", x, *args, code, two_class))


def _evaluate(key: int, x: np.ndarray):
    import jax.numpy as jnp

    from .global_fits import _full_value_and_grad
    from .parallel import _await

    if _LOADED.get("key") != key:
        raise RuntimeError(f"global objective {key} is not loaded here")
    _await("global")
    f, grad = _full_value_and_grad(jnp.asarray(x), *_LOADED["args"], _LOADED["code"],
                                   _LOADED["two_class"])  # fmt: skip
    return float(f), np.asarray(grad)
