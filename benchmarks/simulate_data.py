"""Simulate GTR+G4 benchmark data sets (random rooted binary trees, numpy only).

Writes, for each size, ``benchmarks/out/sim_<taxa>x<sites>.fa`` (FASTA), ``.nwk`` (rooted binary
Newick with branch lengths) and ``.json`` (the generating model, in the IQ-TREE model syntax that
``phylojax loglik -m`` accepts, and the raw parameters).

Tree: random coalescent-style joining of uniformly chosen pairs (random topology, balanced-ish
depth ~ O(log n)); branch lengths i.i.d. exponential. Sequences: root states from ``pi``, a
Gamma category per site, then one vectorised draw per branch: for each site, the child state is
sampled from the row ``P_k(t)[parent_state]`` by inverse-CDF on a uniform (``P = V e^{lam r t}
V^{-1}`` from one symmetric eigendecomposition).

Usage::

    python benchmarks/simulate_data.py                 # 100x10000 and 500x50000 (seed 1)
    python benchmarks/simulate_data.py --sizes 50x10000 200x10000 --seed 3
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from scipy import special, stats

OUT = pathlib.Path(__file__).resolve().parent / "out"

# GTR exchangeabilities (AC, AG, AT, CG, CT, GT), frequencies (A, C, G, T), Gamma shape.
RATES = (1.5, 4.0, 0.8, 1.2, 5.0, 1.0)
FREQS = (0.3, 0.2, 0.25, 0.25)
ALPHA = 0.7
CATEGORIES = 4
MEAN_BRANCH = 0.05


def model_string(rates=RATES, freqs=FREQS, alpha=ALPHA, k=CATEGORIES) -> str:
    r = ",".join(repr(float(x)) for x in rates[:5])
    f = ",".join(repr(float(x)) for x in freqs)
    return f"GTR{{{r}}}+F{{{f}}}+G{k}{{{alpha!r}}}"


def gamma_mean_rates(alpha: float, k: int) -> np.ndarray:
    """Yang (1994) mean rates of ``k`` equiprobable categories (same as PLL_GAMMA_RATES_MEAN)."""
    cuts = stats.gamma.ppf(np.arange(1, k) / k, alpha, scale=1.0 / alpha)
    upper = np.append(special.gammainc(alpha + 1.0, cuts * alpha), 1.0)
    lower = np.insert(upper[:-1], 0, 0.0)
    return k * (upper - lower)


def eigen(rates, freqs):
    """Normalised GTR Q as ``(lam, V, V^-1)`` from the symmetrised matrix."""
    pi = np.asarray(freqs, float)
    r = np.zeros((4, 4))
    r[np.triu_indices(4, 1)] = rates
    r = r + r.T
    q = r * pi[None, :]
    q -= np.diag(q.sum(1))
    q /= -(pi * np.diag(q)).sum()
    s = np.sqrt(pi)
    lam, u = np.linalg.eigh(s[:, None] * q / s[None, :])
    return lam, u / s[:, None], (u * s[:, None]).T


def random_tree(n: int, rng: np.random.Generator):
    """Rooted binary tree: ``children[v]`` for internal nodes ``n..2n-2`` (root last)."""
    active = list(range(n))
    children = {}
    for v in range(n, 2 * n - 1):
        i, j = sorted(rng.choice(len(active), 2, replace=False))
        a, b = active[i], active[j]
        active.pop(j)
        active.pop(i)
        active.append(v)
        children[v] = (a, b)
    lengths = rng.exponential(MEAN_BRANCH, 2 * n - 1)
    lengths[-1] = 0.0
    return children, lengths


def newick(children, lengths, names, root) -> str:
    def render(v):
        if v < len(names):
            return f"{names[v]}:{lengths[v]:.10f}"
        a, b = children[v]
        inner = f"({render(a)},{render(b)})"
        return inner if v == root else f"{inner}:{lengths[v]:.10f}"

    import sys

    sys.setrecursionlimit(max(10000, 4 * len(names)))
    return render(root) + ";"


def simulate(n: int, sites: int, seed: int):
    rng = np.random.default_rng(seed)
    children, lengths = random_tree(n, rng)
    lam, v, vinv = eigen(RATES, FREQS)
    cat_rates = gamma_mean_rates(ALPHA, CATEGORIES)
    cats = rng.integers(0, CATEGORIES, sites)
    root = 2 * n - 2
    states = np.empty((2 * n - 1, sites), np.int8)
    states[root] = rng.choice(4, sites, p=np.asarray(FREQS))
    for parent in range(root, n - 1, -1):  # preorder: parents have higher indices
        for child in children[parent]:
            t = lengths[child] * cat_rates  # [k]
            p = np.einsum("ij,kj,jl->kil", v, np.exp(lam[None, :] * t[:, None]), vinv)
            cdf = np.cumsum(np.clip(p, 0, None), axis=-1)
            cdf /= cdf[..., -1:]
            rows = cdf[cats, states[parent]]  # [site, 4]
            u = rng.random(sites)
            states[child] = (u[:, None] > rows[:, :3]).sum(1)
    names = [f"t{i}" for i in range(n)]
    seqs = np.frombuffer(b"ACGT", np.uint8)[states[:n]]
    return names, seqs, newick(children, lengths, names, root)


def write(n: int, sites: int, seed: int, out: pathlib.Path = OUT) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"sim_{n}x{sites}"
    names, seqs, tree = simulate(n, sites, seed)
    with open(stem.with_suffix(".fa"), "wb") as fh:
        for name, row in zip(names, seqs):
            fh.write(b">" + name.encode() + b"\n" + row.tobytes() + b"\n")
    stem.with_suffix(".nwk").write_text(tree + "\n")
    meta = {
        "taxa": n, "sites": sites, "seed": seed, "model": model_string(),
        "rates": list(RATES), "freqs": list(FREQS), "alpha": ALPHA, "categories": CATEGORIES,
        "mean_branch": MEAN_BRANCH,
    }
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return stem


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["100x10000", "500x50000"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=pathlib.Path, default=OUT)
    args = ap.parse_args(argv)
    for size in args.sizes:
        n, s = (int(x) for x in size.lower().split("x"))
        t0 = time.perf_counter()
        stem = write(n, s, args.seed, args.out)
        print(f"{stem}.{{fa,nwk,json}}  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
