"""Forward and value-and-gradient of the pruning kernel (``mixture_log_likelihoods``), and
the gradient itself, so that two commits can be compared.

    python benchmarks/bench_reverse_pass.py [--sets HepatitisD.nex HIV_RT.nex]
                                            [--nucleotide 100 8170 4] [--repeat 10]
                                            [--save FILE.npz] [--compare FILE.npz]

Codon sets: the FEL codon patterns of a file in ../shared/data/hyphy on its tree, one category;
nucleotide: a random 4-state problem (taxa, patterns, categories) on a random tree. Transition
matrices are random stochastic matrices (the kernel's speed does not depend on them). Prints the
best time of each; ``--save`` writes the gradients, ``--compare`` prints the largest difference
from saved ones. For the "before" figures of RESULTS_likelihood.md: ``git stash`` or ``git
checkout <commit>~1 -- phylojax``, run with ``--save before.npz``, restore, run with
``--compare before.npz``.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import phylojax.likelihood.pruning as pruning  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"


def codon_problem(name: str):
    from phylojax.io import read_alignment
    from phylojax.selection.fel import prepare_partitions

    parts, _, _ = prepare_partitions(read_alignment(SHARED / name))
    d = parts[0].data.codon
    return d.tip_partials, d.operations, d.pattern_weights, 1


def nucleotide_problem(taxa: int, patterns: int, categories: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nodes, ops, nxt = list(range(taxa)), [], taxa
    while len(nodes) > 1:
        i, j = sorted(rng.choice(len(nodes), 2, replace=False))
        ops.append([nxt, nodes[i], nodes[j]])
        nodes = [x for k, x in enumerate(nodes) if k not in (i, j)] + [nxt]
        nxt += 1
    tips = np.eye(4)[rng.integers(0, 4, (taxa, patterns))].transpose(0, 2, 1)
    return jnp.asarray(tips), jnp.asarray(ops, jnp.int32), jnp.ones(patterns), categories


def run(label: str, problem, repeat: int):
    tips, ops, weights, categories = problem
    states = tips.shape[1]
    rng = np.random.default_rng(1)
    p = rng.random((2 * tips.shape[0] - 1, categories, states, states))
    p = jnp.asarray(p / p.sum(-1, keepdims=True))
    root = jnp.full((categories, states), 1.0 / (categories * states))

    def f(p, tips, ops, weights):
        return weights @ pruning.mixture_log_likelihoods(tips, p, root, ops)

    functions = {"forward": jax.jit(f), "value-and-gradient": jax.jit(jax.value_and_grad(f))}
    args = (p, tips, ops, weights)
    _, grad = functions["value-and-gradient"](*args)
    times = {k: [] for k in functions}
    for _ in range(repeat):
        for k, fn in functions.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[k].append(time.perf_counter() - t)
    print(f"{label}: {tips.shape[0]} taxa, {states} states, {tips.shape[2]} patterns, "
          f"{categories} categories")  # fmt: skip
    for k, v in times.items():
        print(f"  {k:20s} {1e3 * min(v):9.2f} ms")
    return np.asarray(grad)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="*", default=["HepatitisD.nex", "HIV_RT.nex"])
    ap.add_argument("--nucleotide", nargs=3, type=int, default=[100, 8170, 4],
                    metavar=("TAXA", "PATTERNS", "CATEGORIES"))  # fmt: skip
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--save")
    ap.add_argument("--compare")
    args = ap.parse_args()
    grads = {name: run(name, codon_problem(name), args.repeat) for name in args.sets}
    grads["nucleotide"] = run("random nucleotide", nucleotide_problem(*args.nucleotide), args.repeat)
    if args.save:
        np.savez(args.save, **grads)
    if args.compare:
        saved = np.load(args.compare)
        for k, g in grads.items():
            print(f"{k}: max |gradient - saved| {np.max(np.abs(g - saved[k])):.2e}")


if __name__ == "__main__":
    main()
