"""Parsimony benchmarks on larch's seedtree (issue 4).

    python benchmarks/bench_parsimony.py [--skip-search]

1. exact length of seedtree / seedtree_optimized / test_5_trees (JAX kernel and the numpy Sankoff
   oracle);
2. exact delta of every SPR move with radius <= 64 on seedtree, time after compilation (best of 3);
3. SPR search from seedtree, with the length after each round and the wall time (compilation
   included).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from phylojax.alphabets import nucleotide_bitsets  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.parsimony import fitch, search, spr  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def load(aln, nwk):
    a = read_alignment(aln)
    t = read_tree(nwk).reorder_leaves(a.names)
    return t, nucleotide_bitsets(a)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--plateau-rounds", type=int, default=0)
    args = parser.parse_args()
    seed = DATA / "larch_seedtree"
    cases = [
        ("seedtree", seed / "seedtree_varsites.fasta", seed / "seedtree.nwk"),
        ("seedtree_optimized", seed / "seedtree_optimized_varsites.fasta", seed / "seedtree_optimized.nwk"),
    ] + [
        (f"test_5_trees/tree_{k}", DATA / "larch_test_5_trees" / f"tree_{k}_leaves.fasta",
         DATA / "larch_test_5_trees" / f"tree_{k}.nwk")
        for k in range(5)
    ]
    for name, aln, nwk in cases:
        t, s = load(aln, nwk)
        kernel = int(fitch.parsimony_length(jnp.asarray(s), fitch.tree_arrays(t.parents, t.leaf_count)))
        oracle = fitch.sankoff_length_numpy(t.parents, s)
        print(f"length {name}: jax {kernel}  numpy-sankoff {oracle}")

    t, s = load(seed / "seedtree_varsites.fasta", seed / "seedtree.nwk")
    arrays = fitch.tree_arrays(t.parents, t.leaf_count)
    start = time.perf_counter()
    moves = spr.score_all_moves(t.parents, s, arrays, radius=64)
    print(f"spr radius<=64: first call (compile + run) {time.perf_counter() - start:.2f} s")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        moves = spr.score_all_moves(t.parents, s, arrays, radius=64)
        times.append(time.perf_counter() - start)
    print(
        f"spr radius<=64: {len(moves.delta)} moves, best of 3 after compilation {min(times):.2f} s"
        f" (all: {', '.join(f'{x:.2f}' for x in times)}); improving {int((moves.delta < 0).sum())},"
        f" best delta {int(moves.delta.min())}"
    )
    if args.skip_search:
        return
    start = time.perf_counter()

    def report(round_, radius, length):
        print(f"  round {round_}: length {length}  ({time.perf_counter() - start:.1f} s)", flush=True)

    result = search.spr_search(t.parents, s, on_round=report, plateau_rounds=args.plateau_rounds)
    final = search.compact(result.parents, t.leaf_names).reorder_leaves(t.leaf_names)
    print(
        f"search: {result.lengths[0]} -> {min(result.lengths)} in {len(result.radii)} rounds,"
        f" {time.perf_counter() - start:.1f} s incl. compilation;"
        f" numpy-sankoff of the output tree {fitch.sankoff_length_numpy(final.parents, s)}"
    )
    print("trajectory", result.lengths)


if __name__ == "__main__":
    main()
