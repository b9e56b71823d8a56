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
import os
import re
import pathlib
import shutil
import subprocess
import tempfile
import time

import jax

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from phylojax.alphabets import nucleotide_bitsets  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.parsimony import fitch, search, spr  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


DNAPARS = shutil.which("dnapars") or "/usr/lib/phylip/bin/dnapars"
IUPAC = {1: "A", 2: "C", 4: "G", 8: "T", 3: "M", 5: "R", 9: "W", 6: "S", 10: "Y", 12: "K",
         14: "B", 13: "D", 11: "H", 7: "V", 15: "N"}


def _newick_ids(parents: np.ndarray, leaf_count: int) -> str:
    """Topology only, leaves named ``t<index>`` (PHYLIP's 10-character names)."""
    parents = np.asarray(parents)
    kids: dict[int, list[int]] = {}
    for v, p in enumerate(parents):
        if p >= 0:
            kids.setdefault(int(p), []).append(v)
    root = int(np.flatnonzero(parents == -1)[0])

    def render(v):
        if v < leaf_count:
            return f"t{v}"
        return "(" + ",".join(render(c) for c in kids[v]) + ")"

    import sys
    sys.setrecursionlimit(100000)
    return render(root) + ";"


def dnapars_lengths(leaf_sets: np.ndarray, trees: list[np.ndarray]) -> list[int]:
    """Parsimony length of each user tree (parent arrays, leaves ``0..leaf-1``) by PHYLIP
    ``dnapars`` (option U).  Taxa are renamed ``t<index>``; state sets are written as IUPAC codes
    (all four states as ``N``: dnapars treats ``-`` as a fifth state, so gaps are not written)."""
    leaf_sets = np.asarray(leaf_sets)
    taxa, sites = leaf_sets.shape
    lut = np.array([IUPAC.get(b, "?") for b in range(16)])
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "infile"), "w") as f:
            f.write(f"{taxa} {sites}\n")
            for i in range(taxa):
                f.write(f"{f't{i}':<10}{''.join(lut[leaf_sets[i]])}\n")
        with open(os.path.join(tmp, "intree"), "w") as f:
            f.write("".join(_newick_ids(p, taxa) + "\n" for p in trees))
        # U: use the user trees in `intree`; Y: accept the settings.
        subprocess.run([DNAPARS], input="U\nY\n", text=True, cwd=tmp, capture_output=True,
                       check=True, timeout=600)
        out = open(os.path.join(tmp, "outfile")).read()
    lengths = [float(x) for x in re.findall(r"requires a total of\s+([0-9.]+)", out)]
    if len(lengths) != len(trees):
        raise RuntimeError(f"dnapars scored {len(lengths)} of {len(trees)} trees")
    return [int(round(x)) for x in lengths]


def load(aln, nwk):
    a = read_alignment(aln)
    t = read_tree(nwk).reorder_leaves(a.names)
    return t, nucleotide_bitsets(a)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--plateau-rounds", type=int, default=0)
    parser.add_argument("--skip-dnapars", action="store_true", help="no PHYLIP dnapars cross-check")
    args = parser.parse_args()
    use_dnapars = not args.skip_dnapars and os.path.exists(DNAPARS)
    to_check = []  # (label, tree, leaf_sets, our length) for dnapars
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
        to_check.append((name, t, s, kernel))
        b = t.resolve_binary()
        binary = int(fitch.parsimony_length(jnp.asarray(s), fitch.tree_arrays(b.parents, b.leaf_count)))
        to_check.append((name + " (resolve_binary)", b, s, binary))

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
    times = []
    for _ in range(3):
        start = time.perf_counter()
        spr.score_all_moves(t.parents, s, arrays, radius=64, words=None)
        times.append(time.perf_counter() - start)
    print(f"spr radius<=64, preorder on every word (words=None): best of 3 {min(times):.2f} s"
          f" (all: {', '.join(f'{x:.2f}' for x in times)})")
    if not args.skip_search:
        run_search(t, s, args, to_check)
    if use_dnapars:
        cross_check(to_check)


def cross_check(to_check) -> None:
    """Score every tree with PHYLIP dnapars, one run per alignment."""
    start = time.perf_counter()
    groups: dict[bytes, list] = {}
    for item in to_check:
        groups.setdefault(np.asarray(item[2]).tobytes(), []).append(item)
    bad = 0
    for items in groups.values():
        theirs = dnapars_lengths(items[0][2], [item[1].parents for item in items])
        for (label, _, _, ours), other in zip(items, theirs):
            flag = "ok" if ours == other else "MISMATCH"
            bad += ours != other
            print(f"dnapars {label}: phylojax {ours}  dnapars {other}  {flag}")
    print(f"dnapars cross-check: {len(to_check) - bad}/{len(to_check)} equal"
          f" ({time.perf_counter() - start:.0f} s)")


def run_search(t, s, args, to_check) -> None:
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
    to_check.append(("search output", final, s, min(result.lengths)))


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    main()
