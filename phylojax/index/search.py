"""Batched exact pattern search over the suffix array: learned model or plain binary search.

Every pattern P of m >= 1 bases (A/C/G/T) is answered with its suffix-array interval [lo, hi):
``hi - lo`` is the number of (overlapping) occurrences and ``suffix_array[lo:hi]`` their text
positions.

Comparison rule. ``sorted_keys[i]`` is the 32-base key of suffix ``suffix_array[i]`` (BREAK and
everything after it read as T) and ``key_lengths[i]`` its number of bases before the first BREAK.
For a pattern chunk of ``m <= 32`` bases, with ``top(x) = x >> (64 - 2m)``:

* suffix < P           iff  top(key) < top(P)
* suffix <= P (as a prefix, i.e. "< P or starts with P")
                       iff  top(key) < top(P)  or  (top(key) == top(P) and key_length >= m)

Both predicates are monotone along the suffix array (BREAK sorts after T), so ``lo`` and ``hi``
are the first ranks where they turn false. Patterns longer than 32 bases are refined chunk by
chunk inside [lo, hi) by reading the packed text at ``suffix_array[i] + 32 c``.

Learned search (:func:`count` with ``use_model=True``): one fused jitted call per block of
:data:`BLOCK` queries. Predict the ranks of the pattern's lowest and highest k-base keys; place a
window of 2**bits ranks (bits fixed per index from the measured error range, 7 for E. coli) so
that the error range lies strictly inside it; run ``bits`` unrolled branch-free halving probes
over the 32-base keys for the lower and the upper bound. An answer strictly inside its window is
proven by the two neighbouring ranks the probes read; an answer at a window edge, or an upper
bound whose last suffix holds a separator, sends the lane to the exact binary search, run on
the device over the compacted flagged lanes only. Answers are therefore exact whatever the
model predicts. ``use_model=False`` runs the same code with one window over the whole array.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from ..errors import PrecisionError, input_error
from . import learned, suffix_array

_ALL_ONES = 0xFFFFFFFFFFFFFFFF


class SuffixIndex(NamedTuple):
    """Everything a query needs (numpy arrays; see :func:`prepare` for the device copy).

    text_length: n, text symbols including the BREAK separators.
    words: uint64[ceil(n/32)+2] and breaks: uint32[ceil(n/32)+2], the packed text.
    suffix_array: int32[n] (int64 when n >= 2**31).
    sorted_keys: uint64[n], key_lengths: uint8[n], 32-base keys in suffix-array order (derived
      from the text and the suffix array at build/load time, never stored).
    model: LearnedModel, or None for an index without one.
    record_names, record_starts (int64[r]), record_lengths (int64[r]), non_acgt_count.
    """

    text_length: int
    words: np.ndarray
    breaks: np.ndarray
    suffix_array: np.ndarray
    sorted_keys: np.ndarray
    key_lengths: np.ndarray
    model: learned.LearnedModel | None
    record_names: tuple
    record_starts: np.ndarray
    record_lengths: np.ndarray
    non_acgt_count: int


class Patterns(NamedTuple):
    """Packed query patterns.

    chunks: uint64[q, c], chunk j holds bases 32j .. 32j+31 left-aligned, zero (A) padded.
    lengths: int64[q], pattern lengths (>= 1).
    """

    chunks: np.ndarray
    lengths: np.ndarray


class DeviceIndex(NamedTuple):
    """JAX copies of the arrays the kernels read, plus static metadata (see :func:`prepare`).

    ``sorted_keys`` carries sentinel (all-T, no bases) entries past rank ``n`` so that windows
    near the end read sentinels instead of being clamped; use ``sorted_keys[:n]`` for the data.
    ``plan`` is the static shape of the learned search and ``arrays`` everything the fused kernel
    reads, in its argument order.
    """

    n: int
    words: object
    breaks: object
    suffix_array: object
    sorted_keys: object
    key_lengths: object
    model: learned.LearnedModel | None
    plan: object
    arrays: tuple


def _require_x64() -> None:
    import jax

    if not jax.config.jax_enable_x64:
        raise PrecisionError(
            "the suffix-array index uses 64-bit keys: call "
            "jax.config.update('jax_enable_x64', True) first (the phylojax CLI does)"
        )


def derive_keys(words: np.ndarray, breaks: np.ndarray, sa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sorted_keys uint64[n] and key_lengths uint8[n] of the suffixes in suffix-array order."""
    return suffix_array.keys_at(words, breaks, sa)


def build_index(
    records: list[tuple[str, bytes]],
    *,
    k: int = 21,
    model_fraction: float = 0.01,
    epsilon: float | None = None,
    with_model: bool = True,
) -> SuffixIndex:
    """Build the suffix array, packed text and learned model of FASTA ``records``.

    The model is kept within ``max(model_fraction * suffix_array.nbytes, 1024)`` bytes (the floor
    only matters for toy texts whose 1 % is smaller than two knots).
    """
    text = suffix_array.encode_text(records)
    words, breaks = suffix_array.pack_text(text.codes)
    sa = suffix_array.build_suffix_array(text.codes)
    keys, lengths = derive_keys(words, breaks, sa)
    model = None
    if with_model:
        budget = max(int(model_fraction * sa.nbytes), 1024)
        model = learned.fit_model(keys, min(k, 31), budget_bytes=budget, epsilon=epsilon)
    return SuffixIndex(
        text_length=len(text.codes),
        words=words,
        breaks=breaks,
        suffix_array=sa,
        sorted_keys=keys,
        key_lengths=lengths,
        model=model,
        record_names=text.record_names,
        record_starts=text.record_starts,
        record_lengths=text.record_lengths,
        non_acgt_count=text.non_acgt_count,
    )


def prepare(index: SuffixIndex) -> DeviceIndex:
    """Move the index arrays to the JAX device once, so repeated queries do not copy them."""
    _require_x64()
    import jax.numpy as jnp

    n = int(index.text_length)
    if index.model is not None:
        plan, tables = _fast_model(index.model, n)
        tables = tuple(jnp.asarray(t) for t in tables)
        error_max, error_min = index.model.error_max, index.model.error_min
    else:
        plan, tables, error_max, error_min = QueryPlan(n, 0, 0, 0, 0, 0), (), 0.0, 0.0
    # One sentinel past the end (all-T key, no bases): probes clamp to it instead of branching.
    sorted_keys = jnp.asarray(np.append(index.sorted_keys, np.uint64(_ALL_ONES)))
    key_lengths = jnp.asarray(np.append(index.key_lengths, np.uint8(0)))
    words, breaks, sa = jnp.asarray(index.words), jnp.asarray(index.breaks), jnp.asarray(index.suffix_array)
    arrays = (
        sorted_keys,
        key_lengths,
        sa,
        words,
        breaks,
        tables,
        jnp.asarray(error_max, jnp.float64),
        jnp.asarray(error_min, jnp.float64),
    )
    return DeviceIndex(
        n=n,
        words=words,
        breaks=breaks,
        suffix_array=sa,
        sorted_keys=sorted_keys,
        key_lengths=key_lengths,
        model=index.model,
        plan=plan,
        arrays=arrays,
    )


# --------------------------------------------------------------------------- patterns


def encode_patterns(
    patterns: list, *, source: str | None = None, lines: list[int] | None = None
) -> Patterns:
    """Pack A/C/G/T patterns (str or bytes, any case) into :class:`Patterns`.

    Raises :class:`InputError` naming ``source`` and the pattern's line (``lines[i]``, else its
    1-based number) for an empty pattern or one with a symbol other than A/C/G/T.
    """
    if len(patterns) == 0:
        raise input_error("no query patterns", file=source)
    raw = [p.encode("ascii", "replace") if isinstance(p, str) else bytes(p) for p in patterns]
    lengths = np.fromiter((len(p) for p in raw), dtype=np.int64, count=len(raw))
    where = lines if lines is not None else list(range(1, len(raw) + 1))
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise input_error("empty pattern; patterns need at least one base", file=source, line=where[empty[0]])
    chunk_count = int(-(-lengths.max() // 32))
    width = chunk_count * 32
    matrix = np.zeros((len(raw), width), dtype=np.uint8)
    flat = np.frombuffer(b"".join(raw), dtype=np.uint8)
    rows = np.repeat(np.arange(len(raw)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    codes = suffix_array._CODES[flat]
    bad = np.flatnonzero(codes == suffix_array.BREAK)
    if bad.size:
        i = int(bad[0])
        symbol = chr(flat[i]) if 32 < flat[i] < 127 else f"byte {flat[i]}"
        raise input_error(
            f"pattern has '{symbol}' at position {int(cols[i]) + 1}; only A, C, G, T can be searched",
            file=source,
            line=where[int(rows[i])],
        )
    matrix[rows, cols] = codes
    shifts = (2 * (31 - np.arange(32))).astype(np.uint64)
    blocks = matrix.reshape(len(raw), chunk_count, 32).astype(np.uint64) << shifts
    chunks = np.bitwise_or.reduce(blocks, axis=2).astype(np.uint64)
    return Patterns(chunks=chunks, lengths=lengths)


def patterns_at(index: SuffixIndex, positions: np.ndarray, length: int) -> Patterns:
    """The patterns of ``length`` bases starting at text ``positions`` (int[q]), read from the
    packed text (used by benchmarks and tests to draw substrings of the genome)."""
    positions = np.asarray(positions, dtype=np.int64)
    chunk_count = -(-length // 32)
    chunks = np.zeros((len(positions), chunk_count), dtype=np.uint64)
    for c in range(chunk_count):
        keys, _ = suffix_array.keys_at(index.words, index.breaks, positions + 32 * c)
        take = min(32, length - 32 * c)
        mask = np.uint64(_ALL_ONES) << np.uint64(64 - 2 * take) if take < 32 else np.uint64(_ALL_ONES)
        chunks[:, c] = keys & mask
    return Patterns(chunks=chunks, lengths=np.full(len(positions), length, dtype=np.int64))


# --------------------------------------------------------------------------- kernels


def _keys_at(words, breaks, positions):
    """JAX twin of :func:`suffix_array.keys_at`: (uint64 keys, int32 lengths) at ``positions``."""
    import jax.numpy as jnp
    from jax import lax

    positions = positions.astype(jnp.int64)
    w = positions >> 5
    offset = (positions & 31).astype(jnp.uint64)
    shift = jnp.uint64(2) * offset
    high = words[w] << shift
    low = jnp.where(offset == 0, jnp.uint64(0), words[w + 1] >> (jnp.uint64(64) - jnp.maximum(shift, jnp.uint64(1))))
    keys = high | low
    pair = (breaks[w].astype(jnp.uint64) << jnp.uint64(32)) | breaks[w + 1].astype(jnp.uint64)
    mask = ((pair << offset) >> jnp.uint64(32)).astype(jnp.uint32)
    lengths = lax.clz(mask).astype(jnp.int32)
    fill_shift = (jnp.uint64(2) * jnp.minimum(lengths, 31).astype(jnp.uint64))
    fill = jnp.where(lengths < 32, jnp.uint64(_ALL_ONES) >> fill_shift, jnp.uint64(0))
    return keys | fill, lengths


def _predicates(keys, key_lengths, pattern, m):
    """(suffix < P, suffix <= P as prefix) for chunks of ``m`` (1..32) bases; see module doc."""
    import jax.numpy as jnp

    shift = (64 - 2 * m).astype(jnp.uint64)
    a = keys >> shift
    b = pattern >> shift
    less = a < b
    return less, less | ((a == b) & (key_lengths.astype(jnp.int64) >= m))


def _sorted_predicate(sorted_keys, key_lengths, pattern, m, which, n: int):
    """Exact predicate over ranks (int64[q]) of the key array; rank < 0 is True, rank >= n False.

    ``sorted_keys``/``key_lengths`` may carry sentinel entries past ``n`` (see :func:`prepare`),
    which are never read as data.
    """
    import jax.numpy as jnp

    def predicate(rank):
        i = jnp.clip(rank, 0, n - 1)
        value = _predicates(sorted_keys[i], key_lengths[i], pattern, m)[which]
        return jnp.where(rank < 0, True, jnp.where(rank >= n, False, value))

    return predicate


def _lower_bound_dynamic(predicate, base, length):
    """First rank in [base, base + length] where ``predicate`` is False (per-lane lengths)."""
    import jax.numpy as jnp
    from jax import lax

    def body(state):
        base, length = state
        half = length // 2
        probe = base + half
        go = predicate(probe) & (length > 0)
        base = jnp.where(go, probe + 1, base)
        length = jnp.where(go, length - half - 1, jnp.where(length > 0, half, 0))
        return base, length

    return lax.while_loop(lambda s: jnp.any(s[1] > 0), body, (base, length))[0]


# --------------------------------------------------------------------------- fused query kernel

# Lanes per compiled block: big enough that dispatch overhead vanishes, small enough that the
# per-lane state of one block stays in cache (2**14 was fastest of 2**11 .. 2**20 on E. coli). Every block of every batch has this shape (the
# last one padded on the device), so one compilation serves batches of any size >= BLOCK.
BLOCK = 1 << 14
_FINE_RADIX_BITS = 16


class QueryPlan(NamedTuple):
    """Static (compile-time) shape of the learned search for one index (see :func:`prepare`)."""

    n: int
    k: int
    key_bits: int
    radix_bits: int
    probes: int
    window_bits: int


def _fast_model(model: learned.LearnedModel, n: int):
    """Device tables that evaluate :func:`learned.predict` with fewer dependent gathers.

    The function is unchanged (same segment, same four knot values, same float arithmetic), so the
    error bounds measured at build time still describe it. Only the segment lookup differs: a
    finer radix table (2**16 buckets, derived here, not stored) leaves at most ``probes`` knots
    per bucket (3 for E. coli), which are tested with independent probes instead of a chain of
    halving steps. Returns the :class:`QueryPlan` and the tables.
    """
    knot_keys = np.asarray(model.knot_keys, dtype=np.uint64)
    count = len(knot_keys)
    radix_bits = min(model.key_bits, max(model.radix_bits, _FINE_RADIX_BITS))
    starts = np.arange(2**radix_bits + 1, dtype=np.uint64) << np.uint64(model.key_bits - radix_bits)
    table = np.clip(np.searchsorted(knot_keys, starts, side="right") - 1, 0, count - 1)
    firsts = table.astype(np.int32)
    lasts = np.append(table[1:], table[-1]).astype(np.int32)
    probes = max(int(np.max(lasts - firsts)), 1)
    padded = np.append(model.knot_keys.astype(np.uint32), np.full(probes + 1, 0xFFFFFFFF, np.uint32))
    x = model.knot_keys.astype(np.float64)
    y = np.asarray(model.knot_ranks).astype(np.float64)
    # Offsets of the true ranks inside a window must fit in [1, 2**bits - 2] (see _count_block).
    window_bits = int(np.ceil(model.error_max - model.error_min) + 3).bit_length()
    tables = (firsts, lasts, padded, x[:-1], x[1:], y[:-1], y[1:])
    plan = QueryPlan(n, model.k, model.key_bits, radix_bits, probes, window_bits)
    return plan, tables


def _predict_fast(tables, keys, plan: QueryPlan):
    """:func:`learned.predict` (float64[q]) of k-mer ``keys`` with the tables of :func:`_fast_model`."""
    import jax.numpy as jnp

    firsts, lasts, knot_keys, x0s, x1s, y0s, y1s = tables
    shift = 2 * plan.k - plan.key_bits
    quantised = keys >> jnp.uint64(shift)
    bucket = (quantised >> jnp.uint64(plan.key_bits - plan.radix_bits)).astype(jnp.int64)
    base, last = firsts[bucket].astype(jnp.int64), lasts[bucket].astype(jnp.int64)
    segment = base
    for j in range(1, plan.probes + 1):
        # Independent probes (not a chain): knot base + j is passed iff it lies in this bucket
        # and its key is <= the query's; knot keys increase, so the passes count the segment.
        passed = (base + j <= last) & (knot_keys[base + j].astype(jnp.uint64) <= quantised)
        segment = segment + passed.astype(jnp.int64)
    segment = jnp.minimum(segment, x0s.shape[0] - 1)
    x0, x1, y0, y1 = x0s[segment], x1s[segment], y0s[segment], y1s[segment]
    position = keys.astype(jnp.float64) / float(1 << shift)
    return y0 + (y1 - y0) * ((position - x0) / (x1 - x0))


def _window_count(sorted_keys, start, shift, top, strict: bool, bits: int, n: int):
    """Offset c in [0, 2**bits - 1] of the first rank in [start, start + 2**bits - 1) where
    ``top(key) < top(P)`` (``strict``) or ``top(key) <= top(P)`` turns False.

    ``bits`` unrolled branch-free halving probes, each one plain gather; ranks past ``n`` read the
    sentinel key. The predicate is monotone along the suffix array, so when 0 < c < 2**bits - 1
    the ranks start + c - 1 (True) and start + c (False) were both read and c is exact; c = 0
    or c = 2**bits - 1 means the answer may lie outside the window.
    """
    import jax.numpy as jnp

    position = jnp.zeros_like(start)
    for j in reversed(range(bits)):
        probe = sorted_keys[jnp.minimum(start + position + ((1 << j) - 1), n)] >> shift
        go = (probe < top) if strict else (probe <= top)
        position = jnp.where(go, position + (1 << j), position)
    return position


def _exact_interval(sorted_keys, key_lengths, pattern, m, n: int):
    """Full binary search with the exact rule (the fallback and ``--no-model``); always correct."""
    import jax.numpy as jnp

    less = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 0, n)
    less_equal = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 1, n)
    lo = _lower_bound_dynamic(less, jnp.zeros_like(m), jnp.full_like(m, n))
    hi = _lower_bound_dynamic(less_equal, lo, n - lo)
    return lo, hi


def _fix_lanes(bad, fix, values, room: int):
    """Recompute the lanes flagged in ``bad`` (bool[q]) without leaving the device.

    ``fix(take)`` answers the lanes ``take`` (int[room]) and returns new values for them. Flagged
    lanes are compacted ``room`` at a time (nothing runs when none is flagged), so the cost
    follows the number of flagged lanes and the fixing code is compiled once. Returns the new
    values and the number of flagged lanes.
    """
    import jax.numpy as jnp
    from jax import lax

    def body(state):
        values, bad = state
        take = jnp.nonzero(bad, size=room, fill_value=-1)[0]
        real = take >= 0
        # Padding slots re-answer the first flagged lane and write nothing back.
        take = jnp.where(real, take, jnp.max(take[:1]))
        fixed = fix(take)
        target = jnp.where(real, take, bad.shape[0])
        values = tuple(v.at[target].set(f, mode="drop") for v, f in zip(values, fixed, strict=True))
        return values, bad.at[target].set(False, mode="drop")

    values, _ = lax.while_loop(lambda s: jnp.any(s[1]), body, (values, bad))
    return values, jnp.sum(bad)


def _refine_chunks(suffix_array_, words, breaks, chunks, lengths, lo, hi, n: int, room: int):
    """Narrow [lo, hi) of the first 32 bases to the whole pattern, 32 bases at a time.

    An interval of one suffix (the common case) is settled with one read of the text; wider ones
    are bisected on a compacted subset of lanes (:func:`_fix_lanes`).
    """
    import jax.numpy as jnp

    for c in range(1, chunks.shape[1]):
        m = jnp.clip(lengths - 32 * c, 0, 32)
        pattern = chunks[:, c]
        mc = jnp.maximum(m, 1)

        def predicate(rank, which, lanes=None, pattern=pattern, mc=mc, c=c):
            pattern_, mc_ = (pattern, mc) if lanes is None else (pattern[lanes], mc[lanes])
            i = jnp.clip(rank, 0, n - 1)
            position = jnp.minimum(suffix_array_[i].astype(jnp.int64) + 32 * c, n - 1)
            keys, key_lengths = _keys_at(words, breaks, position)
            return _predicates(keys, key_lengths, pattern_, mc_)[which]

        single = (m > 0) & (hi - lo == 1)
        less, less_equal = predicate(lo, 0), predicate(lo, 1)
        lo, hi = (
            jnp.where(single, lo + less, lo),
            jnp.where(single, lo + less_equal, hi),
        )
        wide = (m > 0) & (hi - lo > 1)

        def narrow(lanes, lo=lo, hi=hi, wide=wide, predicate=predicate):
            a, b, active = lo[lanes], hi[lanes], wide[lanes]
            new_lo = _lower_bound_dynamic(lambda r: predicate(r, 0, lanes), a, jnp.where(active, b - a, 0))
            new_hi = _lower_bound_dynamic(lambda r: predicate(r, 1, lanes), new_lo, jnp.where(active, b - new_lo, 0))
            # Padding lanes (lane 0) and narrow lanes keep their interval.
            return jnp.where(active, new_lo, a), jnp.where(active, new_hi, b)

        (lo, hi), _ = _fix_lanes(wide, narrow, (lo, hi), room)
    return lo, hi


@partial(jax.jit, static_argnames=("plan", "use_model"))
def _count_block(arrays, chunks, lengths, *, plan: QueryPlan, use_model: bool):
    """One fused, jitted call per block: predict -> window search -> check -> fallback -> refine.

    Returns lo, hi (int64[q]) and the number of lanes the exact fallback answered.
    """
    import jax.numpy as jnp

    sorted_keys, key_lengths, suffix_array_, words, breaks, tables, error_max, error_min = arrays
    n = plan.n
    chunk0 = chunks[:, 0]
    m = jnp.minimum(lengths, 32)
    room = max(chunks.shape[0] // 64, 64)
    shift = (64 - 2 * m).astype(jnp.uint64)
    top = chunk0 >> shift

    if use_model:
        k = plan.k
        bits = plan.window_bits
        size = 1 << bits
        low_key = chunk0 >> jnp.uint64(64 - 2 * k)
        pad = jnp.maximum(k - m, 0).astype(jnp.uint64)
        high_key = low_key | ((jnp.uint64(1) << (jnp.uint64(2) * pad)) - jnp.uint64(1))
        first = _predict_fast(tables, low_key, plan)
        past = _predict_fast(tables, high_key + jnp.uint64(1), plan)
        # Windows with the measured error range strictly inside: for m <= k the true lower
        # bound lies in [first - error_max, first - error_min] and the upper one in the same
        # range around ``past``, so each answer lands at an offset in [1, size - 2]. For m > k
        # the windows bracket the k-mer's block, which is usually one or two suffixes.
        start_lo = jnp.clip(jnp.floor(first - error_max).astype(jnp.int64) - 1, 0, n)
        start_hi = jnp.clip(jnp.ceil(past - error_min).astype(jnp.int64) + 2 - size, 0, n)
    else:
        # Plain binary search: one window over the whole array.
        bits = max(int(n + 1).bit_length(), 1)
        size = 1 << bits
        start_lo = start_hi = jnp.zeros_like(lengths)
    below = _window_count(sorted_keys, start_lo, shift, top, True, bits, n)
    not_above = _window_count(sorted_keys, start_hi, shift, top, False, bits, n)
    lo = start_lo + below
    hi = jnp.minimum(start_hi + not_above, n)
    # An offset strictly inside its window is proven by the two ranks read beside it; at an edge
    # the answer may lie outside (a window reaching past n is closed by the sentinels).
    ok = ((below > 0) | (start_lo == 0)) & (below < size - 1)
    ok &= ((not_above > 0) | (start_hi == 0)) & ((not_above < size - 1) | (start_hi + size - 1 >= n))
    # The upper bound ignored separators: it is exact iff the last suffix counted holds all m
    # bases (no BREAK among them), or the interval is empty.
    ok &= (hi == lo) | ((hi > lo) & (key_lengths[jnp.maximum(hi - 1, 0)].astype(jnp.int64) >= m))

    def exact(lanes):
        return _exact_interval(sorted_keys, key_lengths, chunk0[lanes], m[lanes], n)

    (lo, hi), fallback = _fix_lanes(~ok, exact, (lo, hi), room)
    if chunks.shape[1] > 1:
        lo, hi = _refine_chunks(suffix_array_, words, breaks, chunks, lengths, lo, hi, n, room)
    return lo, hi, fallback


def count(device: DeviceIndex, patterns: Patterns, *, use_model: bool = True, stats: dict | None = None):
    """Exact suffix-array intervals of ``patterns``: (lo int64[q], hi int64[q]); count = hi - lo.

    ``patterns`` may hold numpy or JAX arrays. Batches run as blocks of :data:`BLOCK` lanes (a
    smaller batch as one block of the next power of two >= 64), one fused jitted call per block,
    dispatched without waiting on the host. ``use_model=False`` runs the plain batched binary
    search over the same keys. ``stats``, when given, receives ``window_steps`` and ``fallback``
    (lanes answered by the exact fallback); filling it waits for the answers.
    """
    _require_x64()
    import jax.numpy as jnp

    use_model = bool(use_model and device.model is not None)
    query_count = int(patterns.lengths.shape[0])
    block = BLOCK if query_count > BLOCK else max(64, 1 << int(query_count - 1).bit_length())
    padded = -(-query_count // block) * block
    chunks = jnp.asarray(patterns.chunks)
    lengths = jnp.asarray(patterns.lengths)
    if padded != query_count:
        # Padding lanes repeat the first query (a valid pattern) and are dropped afterwards.
        extra = padded - query_count
        chunks = jnp.concatenate([chunks, jnp.broadcast_to(chunks[:1], (extra, chunks.shape[1]))])
        lengths = jnp.concatenate([lengths, jnp.broadcast_to(lengths[:1], (extra,))])
    arrays = device.arrays
    outs = [
        _count_block(arrays, chunks[i : i + block], lengths[i : i + block], plan=device.plan, use_model=use_model)
        for i in range(0, padded, block)
    ]
    if len(outs) == 1:
        lo, hi = outs[0][0], outs[0][1]
    else:
        lo = jnp.concatenate([o[0] for o in outs])
        hi = jnp.concatenate([o[1] for o in outs])
    if padded != query_count:
        lo, hi = lo[:query_count], hi[:query_count]
    if stats is not None:
        stats.update(
            window_steps=device.plan.window_bits if use_model else None,
            fallback=int(jnp.sum(jnp.stack([o[2] for o in outs]))),
        )
    return lo, hi


def locate(index: SuffixIndex, lo: np.ndarray, hi: np.ndarray) -> list[list[tuple[str, int]]]:
    """Occurrences of each query as sorted ``(record name, 0-based offset)`` pairs."""
    lo = np.asarray(lo)
    hi = np.asarray(hi)
    out = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        positions = np.sort(index.suffix_array[a:b].astype(np.int64))
        record = np.searchsorted(index.record_starts, positions, side="right") - 1
        offsets = positions - index.record_starts[record]
        out.append([(index.record_names[r], int(o)) for r, o in zip(record.tolist(), offsets.tolist(), strict=True)])
    return out


def naive_count(codes: np.ndarray, pattern_codes: np.ndarray) -> int:
    """Overlapping occurrences of ``pattern_codes`` in ``codes`` by direct scan (test oracle)."""
    m = len(pattern_codes)
    if m == 0 or m > len(codes):
        return 0
    windows = np.lib.stride_tricks.sliding_window_view(codes, m)
    return int(np.count_nonzero(np.all(windows == pattern_codes, axis=1)))

