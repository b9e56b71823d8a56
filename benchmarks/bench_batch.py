"""Batched lnL + gradient throughput (parameter sets per second) vs libpll one set at a time.

    python benchmarks/bench_batch.py [--size 100x10000] [--batch 16] [--repeat 3]

phylojax evaluates B GTR+G4 parameter sets (different exchangeabilities, frequencies and alpha on
the same tree and data) in one compiled call (`phylojax.batch`), with and without gradients of
all branch lengths and parameters; libpll (AVX2, via ctypes) evaluates the same B sets one after
the other (lnL only: libpll has no gradient of the model parameters). Same data, same run.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import libpll_ctypes  # noqa: E402
import simulate_data as sim  # noqa: E402

from phylojax.batch import batched_log_likelihood, batched_value_and_grad, stack  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.likelihood import prepare  # noqa: E402
from phylojax.models import discrete_gamma_rates, gtr, rate_model  # noqa: E402


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="100x10000")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    n, s = (int(x) for x in args.size.split("x"))
    stem = HERE / "out" / f"sim_{n}x{s}"
    if not stem.with_suffix(".fa").exists():
        sim.write(n, s, 1)
    problem = prepare(read_alignment(stem.with_suffix(".fa")), read_tree(str(stem.with_suffix(".nwk"))))
    rng = np.random.default_rng(0)
    sets = []
    for _ in range(args.batch):
        rates = np.r_[rng.uniform(0.5, 5.0, 5), 1.0]
        freqs = rng.dirichlet(np.full(4, 20.0))
        alpha = rng.uniform(0.3, 2.0)
        sets.append((rates, freqs, alpha))
    models = stack([gtr(r, f) for r, f, _ in sets])
    rate_models = stack([rate_model(a, 4) for _, _, a in sets])
    bl = jnp.asarray(problem.branch_lengths)

    def value():
        return batched_log_likelihood(problem.data, bl, models, rate_models)

    def value_grad():
        return batched_value_and_grad(problem.data, bl, models, rate_models)

    t0 = time.perf_counter()
    ours = np.asarray(value())
    compile_v = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(value_grad())
    compile_g = time.perf_counter() - t0
    t_value = best(value, args.repeat)
    t_grad = best(value_grad, args.repeat)

    r0, f0, a0 = sets[0]
    cats = [np.asarray(discrete_gamma_rates(a, 4)) for _, _, a in sets]  # outside the timing
    cat0 = cats[0]
    with libpll_ctypes.problem_to_partition(problem, r0, f0, cat0, arch="avx2") as part:
        ref = []

        def libpll_all():
            ref.clear()
            for (r, f, _), cat in zip(sets, cats):
                part.set_model(r, f, cat)
                ref.append(part.loglik())
            return np.asarray(ref)

        t_pll = best(libpll_all, args.repeat)
    diff = np.max(np.abs(np.asarray(ref) - ours))
    b = args.batch
    print(f"{n} taxa x {problem.patterns.pattern_count} patterns, batch {b}, max |lnL diff| vs libpll {diff:.2e}")
    print(f"phylojax batched lnL:        {b / t_value:8.1f} sets/s  (compile {compile_v:.1f} s)")
    print(f"phylojax batched lnL + grad: {b / t_grad:8.1f} sets/s  (compile {compile_g:.1f} s)")
    print(f"libpll AVX2 one at a time:   {b / t_pll:8.1f} sets/s  (lnL only)")
    print(f"ratio lnL throughput phylojax/libpll: {t_pll / t_value:.2f}; with gradients: {t_pll / t_grad:.2f}")


if __name__ == "__main__":
    main()
