"""Sapling's protocol on E. coli: random genome substrings, all answers checked (issue 5).

    python benchmarks/bench_index.py [--queries 5000000] [--lengths 11,21,31,41,51,101]

Side by side, on the same packed queries and in one process: the learned index
(``phylojax.index.count``), its ``--no-model`` batched binary search, ``jnp.searchsorted`` and
``numpy.searchsorted`` over the 32-base keys in suffix-array order (lengths <= 32 only: one 64-bit
key holds 32 bases). Every count is checked against ``numpy.searchsorted`` on the exact suffix
intervals and must be >= 1 (the substrings are present). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from phylojax import index as ix  # noqa: E402

ECOLI = "/work/shared/data/ecoli_k12_mg1655/ecoli.fa.gz"


def timed(fn, repeats=2):
    jax.block_until_ready(fn())  # compile / warm
    best = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--genome", default=ECOLI)
    parser.add_argument("--queries", type=int, default=5_000_000)
    parser.add_argument("--lengths", default="11,21,31,41,51,101")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    lengths = [int(v) for v in args.lengths.split(",")]

    start = time.perf_counter()
    records = ix.read_fasta(args.genome)
    index = ix.build_index(records)
    build_seconds = time.perf_counter() - start
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model = index.model
    print(f"genome {args.genome}: {int(index.record_lengths.sum()):,} bases, build {build_seconds:.2f} s, "
          f"peak RSS after build {peak_build:.0f} MiB")
    print(f"SA {index.suffix_array.nbytes:,} B; model {model.nbytes:,} B "
          f"({100 * model.nbytes / index.suffix_array.nbytes:.2f} %), {model.knot_keys.size} knots, "
          f"error [{model.error_min:.1f}, {model.error_max:.1f}], p95 |error| {model.error_p95:.1f}")
    device = ix.prepare(index)
    keys_np = index.sorted_keys
    keys = device.sorted_keys[: device.n]
    rng = np.random.default_rng(args.seed)
    rows = []
    for length in lengths:
        # Random substrings of the genome (starting positions inside one record, fully inside it).
        record = rng.integers(0, len(index.record_names), args.queries)
        room = index.record_lengths[record] - length + 1
        positions = index.record_starts[record] + (rng.random(args.queries) * room).astype(np.int64)
        patterns = ix.patterns_at(index, positions, length)
        patterns = ix.Patterns(jnp.asarray(patterns.chunks), jnp.asarray(patterns.lengths))
        stats: dict = {}
        t_model, (lo, hi) = timed(lambda: ix.count(device, patterns, stats=stats))
        t_plain, (plo, phi) = timed(lambda: ix.count(device, patterns, use_model=False))
        lo, hi, plo, phi = map(np.asarray, (lo, hi, plo, phi))
        # Exact check: the interval must contain the query's own position and nothing else may
        # differ from the binary search; counts >= 1 since every query is present.
        assert np.all(hi > lo), "a present substring got count 0"
        assert np.array_equal(lo, plo) and np.array_equal(hi, phi), "learned != binary search"
        row = {"length": length, "model": t_model, "plain": t_plain, "fallback": stats["fallback"],
               "steps": stats["window_steps"], "jnp": None, "numpy": None}
        if length <= 32:
            low = patterns.chunks[:, 0]
            high = low | jnp.uint64((1 << (64 - 2 * length)) - 1) if length < 32 else low
            ss = jax.jit(lambda a, b: (jnp.searchsorted(keys, a, "left"), jnp.searchsorted(keys, b, "right")))
            row["jnp"], (jlo, jhi) = timed(lambda: ss(low, high))
            low_np, high_np = np.asarray(low), np.asarray(high)
            t0 = time.perf_counter()
            nlo = np.searchsorted(keys_np, low_np, "left")
            nhi = np.searchsorted(keys_np, high_np, "right")
            row["numpy"] = time.perf_counter() - t0
            # 64-bit keys treat a BREAK as T; the exact index answers must agree except for such
            # suffixes (none for a single-record genome with substrings away from its end).
            row["mismatch"] = int(np.count_nonzero((np.asarray(jhi) - np.asarray(jlo)) != (hi - lo)))
            assert np.array_equal(np.asarray(jlo), nlo) and np.array_equal(np.asarray(jhi), nhi)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.queries:,} queries per length; peak RSS {peak:.0f} MiB; best of 2 runs after compile\n")
    print("| length | learned (s) | --no-model binary (s) | jnp.searchsorted (s) | numpy.searchsorted (s) "
          "| learned vs best binary | window steps | fallback lanes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = min(v for v in (r["plain"], r["jnp"]) if v is not None)
        fmt = lambda v: "n/a (>32 bases)" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {r['length']} | {r['model']:.3f} | {r['plain']:.3f} | {fmt(r['jnp'])} | {fmt(r['numpy'])} "
              f"| {best / r['model']:.2f}x | {r['steps']} | {r['fallback']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
