"""The learned model: packed k-mer key -> predicted suffix-array rank, with measured error bounds.

Sapling (Kirsche, Das & Schatz 2021, Bioinformatics 37:744) predicts the rank of a query's packed
k-base prefix with a piecewise-linear function over 2^nb *equal-width* key bins. On E. coli with a
1 % memory budget that leaves a worst-case error of ~256 ranks. We instead fit an *error-bounded*
linear spline with the greedy spline corridor of RadixSpline (Kipf et al. 2020, aiDM '20), which
guarantees |prediction - rank| <= epsilon at every fitted point with far fewer knots (E. coli,
epsilon = 62: ~9.6 k knots, 0.4 % of the suffix array), and locate a key's spline segment with a
small radix table over the key's top bits plus a few probes, as RadixSpline does.

The function is fitted to, and its error measured over, *every* distinct k-mer key present in the
text (its lower-bound rank) and every key + 1 (the rank just past that k-mer). Because the spline
is monotone, the bound then holds for *any* k-base key, present or not: an absent key lies between
some ``a + 1`` and the next present key ``b``, which share the same true rank. The search kernel
still verifies every answer and falls back to a full binary search, so answers never depend on
that argument.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import PrecisionError


class LearnedModel(NamedTuple):
    """Monotone linear spline over quantised k-mer keys plus a radix table.

    k, key_bits, radix_bits, segment_steps: Python ints (static). Keys are the first k bases packed
    2 bits each (``2k`` bits); they are quantised to ``key_bits = min(2k, 31)`` bits for storage.
    knot_keys: uint32[knot] strictly increasing quantised keys, first 0, last ``2**key_bits``.
    knot_ranks: int64[knot] non-decreasing ranks (0 .. n).
    radix_table: int32[2**radix_bits + 1]; entry p is the last knot with key <= p's bucket start.
    error_max, error_min: float, max and min over all fitted keys of (prediction - true rank).
    error_p95: float, 95th percentile of |prediction - true rank| over the same keys.
    epsilon: the corridor's target bound.
    """

    k: int
    key_bits: int
    radix_bits: int
    segment_steps: int
    knot_keys: np.ndarray
    knot_ranks: np.ndarray
    radix_table: np.ndarray
    error_max: float
    error_min: float
    error_p95: float
    epsilon: float

    @property
    def nbytes(self) -> int:
        """Bytes the model occupies on disk (knots stored as uint32 key + int32/64 rank)."""
        rank_bytes = 4 if self.knot_ranks.size == 0 or int(self.knot_ranks[-1]) < 2**31 else 8
        return int(self.knot_keys.size * (4 + rank_bytes) + self.radix_table.nbytes + 64)


def kmer_points(sorted_keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The (key, rank) points the model must fit.

    sorted_keys: uint64[n] 32-base keys in suffix-array order. Returns ``x`` uint64[p] strictly
    increasing k-mer keys and ``y`` int64[p] their lower-bound ranks: every distinct present key,
    every present key + 1, key 0 (rank 0) and key 4**k (rank n).
    """
    n = len(sorted_keys)
    kmer = sorted_keys >> np.uint64(64 - 2 * k)
    first = np.flatnonzero(np.concatenate([[True], kmer[1:] != kmer[:-1]]))
    distinct = kmer[first]
    after = np.append(first[1:], n)
    x = np.empty(2 * len(distinct), dtype=np.uint64)
    y = np.empty(2 * len(distinct), dtype=np.int64)
    x[0::2], x[1::2] = distinct, distinct + np.uint64(1)
    y[0::2], y[1::2] = first, after
    end = np.uint64(1) << np.uint64(2 * k) if k < 32 else None
    x = np.concatenate([np.zeros(1, np.uint64), x])
    y = np.concatenate([np.zeros(1, np.int64), y])
    keep = np.concatenate([x[1:] != x[:-1], [True]])
    x, y = x[keep], y[keep]
    if end is not None:
        x = x[x <= end]
        y = y[: len(x)]
        if x[-1] != end:
            x = np.append(x, end)
            y = np.append(y, n)
    return x, y


def _corridor_cuts(x: np.ndarray, y: np.ndarray, epsilon: float) -> np.ndarray:
    """Greedy spline corridor (RadixSpline, Kipf et al. 2020, Algorithm 1): bool[p-1] cut flags.

    A flag at i means point i (0-based, of the full array) becomes a knot. The scan is sequential,
    which is why it runs as a jitted ``lax.scan`` rather than a Python loop over millions of keys.
    """
    import jax
    import jax.numpy as jnp

    if not jax.config.jax_enable_x64:
        raise PrecisionError(
            "fitting the learned index needs float64: call "
            "jax.config.update('jax_enable_x64', True) first (the phylojax CLI does)"
        )
    return np.asarray(_corridor_jit()(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), epsilon))


_CORRIDOR = None


def _corridor_jit():
    global _CORRIDOR
    if _CORRIDOR is None:
        import jax
        import jax.numpy as jnp

        def corridor(xf, yf, epsilon):
            def step(carry, point):
                base_x, base_y, prev_x, prev_y, upper, lower = carry
                xi, yi = point
                slope = (yi - base_y) / (xi - base_x)
                cut = (slope > upper) | (slope < lower)
                base_x = jnp.where(cut, prev_x, base_x)
                base_y = jnp.where(cut, prev_y, base_y)
                dx = xi - base_x
                up = (yi + epsilon - base_y) / dx
                lo = (yi - epsilon - base_y) / dx
                upper = jnp.where(cut, up, jnp.minimum(upper, up))
                lower = jnp.where(cut, lo, jnp.maximum(lower, lo))
                return (base_x, base_y, xi, yi, upper, lower), cut

            init = (xf[0], yf[0], xf[0], yf[0], jnp.inf, -jnp.inf)
            _, cuts = jax.lax.scan(step, init, (xf[1:], yf[1:]))
            return cuts

        _CORRIDOR = jax.jit(corridor)
    return _CORRIDOR


def predict(model: LearnedModel, keys, xp=np):
    """Predicted lower-bound rank (float64[q]) of k-mer ``keys`` (uint64[q], each <= 4**k).

    ``xp`` is ``numpy`` (build time) or ``jax.numpy`` (inside the jitted query kernel); the
    arithmetic is the same so the measured error bounds describe both.
    """
    shift = 2 * model.k - model.key_bits
    keys = xp.asarray(keys).astype(xp.uint64)
    quantised = keys >> xp.uint64(shift)
    bucket = (quantised >> xp.uint64(model.key_bits - model.radix_bits)).astype(xp.int64)
    knot_keys = xp.asarray(model.knot_keys)
    knot_ranks = xp.asarray(model.knot_ranks)
    table = xp.asarray(model.radix_table)
    segment = table[bucket].astype(xp.int64)
    last = table[xp.minimum(bucket + 1, table.shape[0] - 1)].astype(xp.int64)
    for j in reversed(range(model.segment_steps)):
        candidate = segment + (1 << j)
        ok = (candidate <= last) & (knot_keys[xp.minimum(candidate, knot_keys.shape[0] - 1)].astype(xp.uint64) <= quantised)
        segment = xp.where(ok, candidate, segment)
    segment = xp.minimum(segment, knot_keys.shape[0] - 2)
    x0 = knot_keys[segment].astype(xp.float64)
    x1 = knot_keys[segment + 1].astype(xp.float64)
    y0 = knot_ranks[segment].astype(xp.float64)
    y1 = knot_ranks[segment + 1].astype(xp.float64)
    position = keys.astype(xp.float64) / float(1 << shift)
    return y0 + (y1 - y0) * ((position - x0) / (x1 - x0))


def _assemble(x: np.ndarray, y: np.ndarray, knots: np.ndarray, k: int, epsilon: float) -> LearnedModel:
    key_bits = min(2 * k, 31)
    shift = np.uint64(2 * k - key_bits)
    knot_keys = (x[knots] >> shift).astype(np.uint64)
    knot_ranks = y[knots].astype(np.int64)
    # Quantising can merge knots; keep the last of equal keys (so the end point survives). The
    # errors below are measured on the quantised model, so merging never loosens a stated bound.
    keep = np.concatenate([knot_keys[1:] != knot_keys[:-1], [True]])
    knot_keys, knot_ranks = knot_keys[keep], knot_ranks[keep]
    radix_bits = int(np.clip(int(np.log2(max(len(knot_keys), 2))) - 1, 1, key_bits))
    starts = np.arange(2**radix_bits + 1, dtype=np.uint64) << np.uint64(key_bits - radix_bits)
    table = (np.searchsorted(knot_keys, starts, side="right") - 1).astype(np.int32)
    table = np.clip(table, 0, len(knot_keys) - 1).astype(np.int32)
    widest = int(np.max(table[1:] - table[:-1])) if len(table) > 1 else 0
    model = LearnedModel(
        k=k,
        key_bits=key_bits,
        radix_bits=radix_bits,
        segment_steps=max(int(widest).bit_length(), 1),
        knot_keys=knot_keys.astype(np.uint32),
        knot_ranks=knot_ranks,
        radix_table=table,
        error_max=0.0,
        error_min=0.0,
        error_p95=0.0,
        epsilon=float(epsilon),
    )
    errors = predict(model, x) - y
    return model._replace(
        error_max=float(np.max(errors)),
        error_min=float(np.min(errors)),
        error_p95=float(np.percentile(np.abs(errors), 95)),
    )


def fit_model(
    sorted_keys: np.ndarray,
    k: int = 21,
    *,
    budget_bytes: int,
    epsilon: float | None = None,
) -> LearnedModel:
    """Fit the spline to the k-mers of ``sorted_keys`` (uint64[n], suffix-array order).

    With ``epsilon=None`` the smallest epsilon of the form 2**s/2 - 2 (so that a search window
    of 2*epsilon + 2 ranks is a power of two) whose model fits in ``budget_bytes`` is chosen;
    otherwise ``epsilon`` is used as given. Errors are then measured over every fitted key.
    """
    if not 1 <= k <= 31:
        raise ValueError(f"k must be in 1..31, got {k}")
    x, y = kmer_points(sorted_keys, k)
    n = len(sorted_keys)
    if epsilon is not None:
        candidates = [float(epsilon)]
    else:
        # Between knots the ranks of random text wander like a random walk, so a corridor of
        # half-width eps spans ~eps**2 points: start near the budget's implied eps.
        knots_allowed = max(budget_bytes // 12, 2)
        guess = max(int(np.sqrt(len(x) / knots_allowed)).bit_length(), 3)
        candidates = [float(2**s // 2 - 2) for s in range(guess, 40) if 2**s // 2 - 2 < 2 * n + 4]
        candidates.append(float(2 * n + 4))
    model = None
    for eps in candidates:
        cuts = _corridor_cuts(x, y, eps)
        knots = np.unique(np.concatenate([[0], np.flatnonzero(cuts), [len(x) - 1]]))
        model = _assemble(x, y, knots, k, eps)
        if model.nbytes <= budget_bytes:
            break
    assert model is not None
    return model
