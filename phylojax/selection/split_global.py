"""FEL's global MG94 objective split by site patterns over the worker processes.

A global MG94×REV evaluation (lnL and its gradient over every branch and model parameter) is one
pruning pass and its reverse pass over all codon patterns. Patterns are independent given the
parameters, so ``k`` workers (:mod:`phylojax.workers`, one pinned to each CPU, XLA on one thread
each) can each evaluate the same parameters on ``1/k`` of the patterns, and the parent adds up
their lnL and gradients. On two cores one XLA program in one process gets only ~1.2x from its
second thread (its matrix products are ``61 x 61`` by a few hundred patterns, too small to split
well), while two processes on half of the patterns each run side by side: HIV_RT's MG94
value-and-gradient 409-428 -> 295-336 ms (benchmarks/RESULTS_fel.md).

Each worker's share is padded to one size with zero-weight copies of its first pattern (they add
nothing to lnL or its gradient), so the workers run one compiled program; the first compiles it
and the other reads it from the pool's compilation cache. The parameters ``x`` go to every worker
at each evaluation (a few kB); the data go once, when the objective is installed.

Only worth it for large problems (:data:`MIN_CELLS` taxon-patterns): every evaluation pays two
messages per worker, and on a cold run the workers compile the MG94 program beside their
site-fit programs. Small data sets keep the in-process objective.
"""

from __future__ import annotations

import itertools
import os
import warnings

import jax
import numpy as np

from .. import workers
from ..host import to_device
from ..likelihood.api import PhyloData

# taxa x codon patterns, summed over partitions, from which the split pays: HIV_RT (476 x 334 =
# 158,984) gains 1.3x per evaluation; HepatitisD (33 x 183) would gain ~5 ms of 26 ms per
# evaluation and pay the workers' compilation on its cold run (docs/fel.md "Worker processes").
MIN_CELLS = 50_000
_KEYS = itertools.count(1)


def enabled() -> bool:
    """``PHYLOJAX_SPLIT_GLOBAL=off`` keeps the global objective in this process."""
    flag = os.environ.get("PHYLOJAX_SPLIT_GLOBAL", "on").strip().lower()
    return flag not in ("off", "0", "no", "false")


def worth_splitting(codon: list[PhyloData]) -> int:
    """How many workers should share the patterns of ``codon`` (0: none, stay in process)."""
    if not enabled() or jax.default_backend() != "cpu":
        return 0
    cells = sum(int(d.tip_partials.shape[0]) * int(d.pattern_count) for d in codon)
    if cells < MIN_CELLS:
        return 0
    count = workers.worker_count()
    smallest = min(int(d.pattern_count) for d in codon)
    count = min(count, smallest)  # every worker gets at least one real pattern of each partition
    return count if count >= 2 else 0


def share_patterns(data: PhyloData, count: int) -> list[PhyloData]:
    """``data``'s patterns in ``count`` contiguous shares of one size; the shorter shares are
    padded with zero-weight copies of their first pattern."""
    tips = np.asarray(data.tip_partials)
    weights = np.asarray(data.pattern_weights)
    invariant = np.asarray(data.invariant_states)
    groups = np.array_split(np.arange(weights.shape[0]), count)
    size = max(len(g) for g in groups)
    shares = []
    for g in groups:
        pad = size - len(g)
        rows = np.concatenate([g, np.repeat(g[:1], pad)])
        w = np.concatenate([weights[g], np.zeros(pad, weights.dtype)])
        shares.append(PhyloData(tip_partials=tips[:, :, rows], pattern_weights=w,
                                operations=np.asarray(data.operations),
                                invariant_states=invariant[:, rows]))  # fmt: skip
    return shares


class SplitObjective:
    """``x -> (lnL, d lnL / dx)`` of :func:`.global_fits._full_value_and_grad`, evaluated by the
    workers on their shares of the patterns and summed here (NumPy results).

    Raises :class:`phylojax.workers.WorkerError` when a worker fails (the pool is then closed);
    :func:`.global_fits.fit_global` falls back to the in-process objective.
    """

    def __init__(self, pool: workers.Pool, count: int, key: int):
        self.pool, self.count, self.key = pool, count, key

    def __call__(self, x):
        x = np.asarray(x, dtype=np.float64)
        parts = self.pool.map(f"{__name__}:_evaluate", [(self.key, x)] * self.count)
        f = float(sum(p[0] for p in parts))
        g = np.sum([p[1] for p in parts], axis=0)
        return f, g

    def close(self) -> None:
        """Free the workers' copies of the data (errors ignored: the pool may be gone)."""
        try:
            if not self.pool.closed:
                self.pool.map(f"{__name__}:_release", [(self.key,)] * self.count)
        except workers.WorkerError:
            pass


def install(parts, position_frequencies, code) -> SplitObjective | None:
    """Send every worker its share of each partition's codon patterns and have it compile the
    MG94 objective on its compile thread (it runs while this process fits the GTR model).
    ``None`` when the objective should stay in this process."""
    from .global_fits import _codon_arguments

    count = worth_splitting([p.codon for p in parts])
    pool = workers.get() if count else None
    if pool is None or len(pool) < count:
        return None
    free, codon, background, g, two_class = _codon_arguments(parts, position_frequencies)
    shares = [share_patterns(d, count) for d in codon]  # [partition][worker]
    host = {"free": [np.asarray(f) for f in free],
            "background": [np.asarray(b) for b in background],
            "g": np.asarray(g), "code": code, "two_class": two_class}  # fmt: skip
    key = next(_KEYS)
    try:
        pool.map(f"{__name__}:_install",
                 [(key, host, [_host_data(s[k]) for s in shares]) for k in range(count)])  # fmt: skip
    except workers.WorkerError as e:
        warnings.warn(f"global fits in worker processes failed ({e}); fitting in this process",
                      RuntimeWarning, stacklevel=2)  # fmt: skip
        return None
    return SplitObjective(pool, count, key)


def _host_data(d: PhyloData) -> dict:
    return {f: np.asarray(getattr(d, f))
            for f in ("tip_partials", "pattern_weights", "operations", "invariant_states")}  # fmt: skip


# ------------------------------------------------------------------------- worker side
_OBJECTIVES: dict = {}  # key -> (arguments of _full_value_and_grad after x, static arguments)


def _install(key: int, host: dict, shares: list[dict]) -> None:
    from .global_fits import _full_value_and_grad
    from .parallel import _compile_async, _signature

    codon = [PhyloData(tip_partials=to_device(s["tip_partials"]),
                       pattern_weights=to_device(s["pattern_weights"]),
                       operations=to_device(s["operations"], np.int32),
                       invariant_states=to_device(s["invariant_states"])) for s in shares]  # fmt: skip
    free = [to_device(f) for f in host["free"]]
    background = [to_device(b) for b in host["background"]]
    args = (free, codon, background, to_device(host["g"]))
    static = {"code": host["code"], "two_class": host["two_class"]}
    _OBJECTIVES[key] = (args, static)
    n = 5 + (2 if static["two_class"] else 1) + sum(int(f.shape[0]) for f in free)
    x = jax.ShapeDtypeStruct((n,), np.float64)
    _compile_async(f"objective-{key}", "global-mg94",
                   lambda: _full_value_and_grad.lower(x, *args, **static),
                   _signature("global-mg94", x, *args, static["code"], static["two_class"]))  # fmt: skip


def _evaluate(key: int, x: np.ndarray):
    from .global_fits import _full_value_and_grad
    from .parallel import _await

    _await(f"objective-{key}")
    args, static = _OBJECTIVES[key]
    f, g = _full_value_and_grad(to_device(x), *args, **static)
    return float(f), np.asarray(g)


def _release(key: int) -> None:
    _OBJECTIVES.pop(key, None)


def _installed() -> list[int]:
    """Keys of the objectives this worker holds."""
    return sorted(_OBJECTIVES)
