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

Learned search (:func:`count` with ``use_model=True``): predict the ranks of the pattern's lowest
and highest k-base keys, take the window measured at build time around them, run a fixed number
of unrolled branchless halving steps inside the window, *verify* the answer against its two
neighbours, and send the lanes that fail verification (window too small, e.g. very repetitive
k-mers) to the full binary search. Answers are therefore exact whatever the model predicts.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import numpy as np

from ..errors import PrecisionError, input_error
from . import learned, suffix_array

_ALL_ONES = 0xFFFFFFFFFFFFFFFF
# Fraction of lanes the fixed learned window must cover; the rest take the exact fallback.
WINDOW_COVERAGE = 0.999


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
    """JAX copies of the arrays the kernels read, plus static metadata (see :func:`prepare`)."""

    n: int
    words: object
    breaks: object
    suffix_array: object
    sorted_keys: object
    key_lengths: object
    model: learned.LearnedModel | None
    model_arrays: tuple | None


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

    model_arrays = None
    if index.model is not None:
        m = index.model
        model_arrays = (
            jnp.asarray(m.knot_keys),
            jnp.asarray(m.knot_ranks),
            jnp.asarray(m.radix_table),
            jnp.asarray(m.error_max, jnp.float64),
            jnp.asarray(m.error_min, jnp.float64),
        )
    return DeviceIndex(
        n=int(index.text_length),
        words=jnp.asarray(index.words),
        breaks=jnp.asarray(index.breaks),
        suffix_array=jnp.asarray(index.suffix_array),
        # One sentinel past the end (all-T key, no bases) so probes can clamp instead of branch.
        sorted_keys=jnp.asarray(np.append(index.sorted_keys, np.uint64(_ALL_ONES))),
        key_lengths=jnp.asarray(np.append(index.key_lengths, np.uint8(0))),
        model=index.model,
        model_arrays=model_arrays,
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


def _sorted_predicate(sorted_keys, key_lengths, pattern, m, which):
    """Exact predicate over ranks (int64[q]) of the key array; rank < 0 is True, rank >= n False.

    ``sorted_keys``/``key_lengths`` may carry one sentinel entry at the end (see :func:`prepare`),
    which is never read as data.
    """
    import jax.numpy as jnp

    n = sorted_keys.shape[0] - 1

    def predicate(rank):
        i = jnp.clip(rank, 0, n - 1)
        value = _predicates(sorted_keys[i], key_lengths[i], pattern, m)[which]
        return jnp.where(rank < 0, True, jnp.where(rank >= n, False, value))

    return predicate


def _lower_bound_static(predicate, start, steps: int):
    """First rank in [start, start + 2**steps] where ``predicate`` is False, assuming it is True
    before ``start`` and monotone; ``steps + 1`` unrolled probes, no data-dependent loop."""
    import jax.numpy as jnp

    position = start
    for j in reversed(range(steps)):
        probe = position + (1 << j) - 1
        position = jnp.where(predicate(probe), position + (1 << j), position)
    return jnp.where(predicate(position), position + 1, position)


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


def _interval(sorted_keys, pattern, m, start, steps: int):
    """lo, hi (int64[q]) for a first chunk of m (1..32) bases, searching [start, start + 2**steps].

    The halving steps read only the key array, with the pattern's top bits precomputed: the
    lower bound needs nothing else, and for the upper bound "top(key) <= top(P)" only differs from
    the exact rule on suffixes that hit a BREAK inside the pattern. Those lanes, and any lane
    whose answer left the window, fail :func:`_verify` and go to :func:`_exact_interval`.
    """
    import jax.numpy as jnp

    n = sorted_keys.shape[0] - 1
    shift = (64 - 2 * m).astype(jnp.uint64)
    top = pattern >> shift

    def below(rank):
        return (sorted_keys[jnp.minimum(rank, n)] >> shift) < top

    def not_above(rank):
        return (sorted_keys[jnp.minimum(rank, n)] >> shift) <= top

    lo = jnp.minimum(_lower_bound_static(below, start, steps), n)
    hi = jnp.minimum(_lower_bound_static(not_above, lo, steps), n)
    return lo, hi


def _verify(sorted_keys, key_lengths, pattern, m, lo, hi):
    """bool[q]: lo and hi are exactly where the exact predicates turn false (four reads).

    Jitted on its own: fused into the search, XLA recomputed the whole chain of dependent gathers
    for each of these consumers, which made the search several times slower.
    """
    less = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 0)
    less_equal = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 1)
    return less(lo - 1) & ~less(lo) & less_equal(hi - 1) & ~less_equal(hi)


def _exact_interval(sorted_keys, key_lengths, pattern, m):
    """Full binary search with the exact rule (the fallback); always correct."""
    import jax.numpy as jnp

    n = sorted_keys.shape[0] - 1
    less = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 0)
    less_equal = _sorted_predicate(sorted_keys, key_lengths, pattern, m, 1)
    lo = _lower_bound_dynamic(less, jnp.zeros_like(m), jnp.full_like(m, n))
    hi = _lower_bound_dynamic(less_equal, lo, n - lo)
    return lo, hi


@partial(jax.jit, static_argnames=("k", "key_bits", "radix_bits", "segment_steps"))
def _windows(model_arrays, chunk0, m, n, *, k, key_bits, radix_bits, segment_steps):
    """Model step: window start (int64[q]) and width (int64[q]) for each pattern."""
    import jax.numpy as jnp

    knot_keys, knot_ranks, radix_table, error_max, error_min = model_arrays
    model = learned.LearnedModel(
        k, key_bits, radix_bits, segment_steps, knot_keys, knot_ranks, radix_table, 0.0, 0.0, 0.0, 0.0
    )
    low_key = chunk0 >> jnp.uint64(64 - 2 * k)
    pad = jnp.maximum(k - m, 0).astype(jnp.uint64)
    high_key = low_key | ((jnp.uint64(1) << (jnp.uint64(2) * pad)) - jnp.uint64(1))
    first = learned.predict(model, low_key, jnp)
    past = learned.predict(model, high_key + jnp.uint64(1), jnp)
    start = jnp.clip(jnp.floor(first - error_max).astype(jnp.int64) - 1, 0, n)
    end = jnp.clip(jnp.ceil(past - error_min).astype(jnp.int64) + 1, 0, n)
    return start, jnp.maximum(end - start, 1)


@partial(jax.jit, static_argnames=("steps",))
def _search(sorted_keys, chunk0, m0, start, *, steps):
    return _interval(sorted_keys, chunk0, m0, start, steps)


_verify_jit = jax.jit(_verify)


_exact = jax.jit(_exact_interval)


@jax.jit
def _refine(suffix_array_, words, breaks, chunks, lengths, lo, hi):
    """Narrow [lo, hi) of the first 32 bases to the whole pattern, 32 bases at a time."""
    import jax.numpy as jnp

    n = suffix_array_.shape[0]
    for c in range(1, chunks.shape[1]):
        m = jnp.clip(lengths - 32 * c, 0, 32)
        active = (m > 0) & (hi > lo)
        pattern = chunks[:, c]
        mc = jnp.maximum(m, 1)

        def predicate(rank, which, pattern=pattern, mc=mc, c=c):
            i = jnp.clip(rank, 0, n - 1)
            position = jnp.minimum(suffix_array_[i].astype(jnp.int64) + 32 * c, n - 1)
            keys, key_lengths = _keys_at(words, breaks, position)
            return _predicates(keys, key_lengths, pattern, mc)[which]

        new_lo = _lower_bound_dynamic(lambda r: predicate(r, 0), lo, jnp.where(active, hi - lo, 0))
        new_hi = _lower_bound_dynamic(lambda r: predicate(r, 1), new_lo, jnp.where(active, hi - new_lo, 0))
        lo = jnp.where(active, new_lo, lo)
        hi = jnp.where(active, new_hi, hi)
    return lo, hi


def _full_steps(n: int) -> int:
    return max(int(n).bit_length(), 1)


def window_steps(widths: np.ndarray, coverage: float = WINDOW_COVERAGE) -> int:
    """Smallest s with 2**s >= width for a ``coverage`` fraction of the lanes (int64[q] widths)."""
    bits = np.zeros(len(widths), dtype=np.int64)
    nonzero = widths > 1
    bits[nonzero] = np.frexp((widths[nonzero] - 1).astype(np.float64))[1]
    histogram = np.cumsum(np.bincount(bits))
    return int(np.searchsorted(histogram, coverage * len(widths)))


def count(device: DeviceIndex, patterns: Patterns, *, use_model: bool = True, stats: dict | None = None):
    """Exact suffix-array intervals of ``patterns``: (lo int64[q], hi int64[q]); count = hi - lo.

    ``use_model=False`` runs the plain batched binary search over the same keys. ``stats``, when
    given, receives ``window_steps`` and ``fallback`` (lanes answered by the fallback).
    """
    _require_x64()
    import jax.numpy as jnp

    query_count = patterns.lengths.shape[0]
    block = 1 << 16
    if query_count <= block:
        padded = max(64, 1 << int(query_count - 1).bit_length())
    else:
        padded = -(-query_count // block) * block
    if padded != query_count:
        # Batches are padded to a power of two so a session compiles a handful of shapes.
        pad = padded - query_count
        patterns = Patterns(
            chunks=np.concatenate([np.asarray(patterns.chunks), np.repeat(np.asarray(patterns.chunks)[:1], pad, 0)]),
            lengths=np.concatenate([np.asarray(patterns.lengths), np.repeat(np.asarray(patterns.lengths)[:1], pad)]),
        )
        lo, hi = count(device, patterns, use_model=use_model, stats=stats)
        return lo[:query_count], hi[:query_count]
    chunks = jnp.asarray(patterns.chunks)
    lengths = jnp.asarray(patterns.lengths)
    chunk0 = chunks[:, 0]
    m0 = jnp.minimum(lengths, 32)
    full = _full_steps(device.n)
    if use_model and device.model is not None:
        model = device.model
        start, width = _windows(
            device.model_arrays,
            chunk0,
            lengths,
            device.n,
            k=model.k,
            key_bits=model.key_bits,
            radix_bits=model.radix_bits,
            segment_steps=model.segment_steps,
        )
        steps = min(window_steps(np.asarray(width)), full)
    else:
        start, steps = jnp.zeros_like(lengths), full
    lo, hi = _search(device.sorted_keys, chunk0, m0, start, steps=steps)
    verified = _verify_jit(device.sorted_keys, device.key_lengths, chunk0, m0, lo, hi)
    missed = np.flatnonzero(~np.asarray(verified))
    if missed.size:
        # Pad the fallback batch to a power of two so its shapes (and compilations) are few.
        size = 1 << int(missed.size - 1).bit_length()
        take = jnp.asarray(np.resize(missed, size))
        flo, fhi = _exact(device.sorted_keys, device.key_lengths, chunk0[take], m0[take])
        lo = lo.at[take].set(flo)
        hi = hi.at[take].set(fhi)
    if stats is not None:
        stats.update(window_steps=steps, fallback=int(missed.size))
    if patterns.chunks.shape[1] > 1:
        lo, hi = _refine(device.suffix_array, device.words, device.breaks, chunks, lengths, lo, hi)
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

