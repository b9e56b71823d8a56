"""Reproducer for the XLA:CPU run-time deadlock that shapes the FEL general site path, and the
measurement of a one-start refinement (``site_general._fit`` refines the alternative from the
grid's best point *and* from the null's MLE).

    timeout 300 python benchmarks/general_path_hang.py [--sites 48]          # both starts
    timeout 300 python benchmarks/general_path_hang.py --starts best         # one start: hangs
    taskset -c 0 timeout 300 python benchmarks/general_path_hang.py --starts best   # completes

CD2 with ``--branches Internal`` and HyPhy's own global fit (``tests/data/hyphy/reference``).
``--starts best`` refines once, from the better of the two starts (their log-likelihoods are
evaluated for all sites with one ``vmap``), then compares with the shipped two-start fit.

Observed with jaxlib 0.10.2 on 2 cores (2026-12-01): ``--starts best`` hung in 3 of 3 runs (no
CPU use, main thread in ``BlockUntilReady``), also with ``OPENBLAS_NUM_THREADS=1`` (2 of 2); under
``taskset -c 0`` it completed. Use it to bisect a later jaxlib.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import test_fel as T  # noqa: E402

import phylojax.selection.site_general as G  # noqa: E402


def one_start(tips, points, extra_start, problem, config, iterations):
    """``site_general._fit`` with a single refinement from the better start."""
    if extra_start is None:
        return SHIPPED(tips, points, None, problem, config, iterations)
    grid = G._grid_values(points, tips, problem, config)
    x0, f0 = points[jnp.argmax(grid, axis=1)], jnp.max(grid, axis=1)
    fe = jax.vmap(lambda x, t: G._loglik_raw(x, t, problem, config))(extra_start, tips)
    start = jnp.where((fe > f0)[:, None], extra_start, x0)
    x, f = jax.lax.map(lambda a: G._refine(a[0], a[1], problem, config, iterations), (start, tips))
    fs = jnp.maximum(fe, f0)
    return jnp.where((f >= fs)[:, None], x, start), jnp.maximum(f, fs)


SHIPPED = G._fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=48)
    ap.add_argument("--starts", choices=["both", "best"], default="both")
    args = ap.parse_args()
    problem, tips, _ = T._site_problem_from_hyphy("CD2.internal.intermediate-fits.json", "Internal")
    var = tips[~(tips.prod(axis=1).sum(-1) > 0)][: args.sites]
    t = time.perf_counter()
    both = G.fit_sites_general(problem, var, srv=True)
    print(f"two starts (shipped): {time.perf_counter() - t:.1f} s", flush=True)
    if args.starts == "best":
        G._fit = one_start
        G._CACHE.clear()
        t = time.perf_counter()
        one = G.fit_sites_general(problem, var, srv=True)
        print(f"one start: {time.perf_counter() - t:.1f} s", flush=True)
        d = one.alt_loglik - both.alt_loglik
        print(f"alt lnL one - two starts: min {d.min():.3g}, sites below -1e-6: "
              f"{int(np.sum(d < -1e-6))}, max |ΔLRT| {np.abs(one.lrt - both.lrt).max():.3g}")  # fmt: skip


if __name__ == "__main__":
    main()
