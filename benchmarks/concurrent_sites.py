"""The FEL fast path on both cores by splitting the sites between two Python threads: the
measurement behind docs/fel.md ("Measured and dropped"). It can hang (XLA:CPU, jaxlib 0.10.2):
run it under ``timeout``.

    timeout 600 python benchmarks/concurrent_sites.py --set HepatitisD.nex [--threads 2]

Prints the one-call time of the whole site set, then each round of the split run (every thread
calls ``fit_sites_fast`` on its share, padded to a multiple of 8 rows and compiled on first use
in the threads themselves). A round that prints nothing for minutes while the process uses no
CPU is the deadlock.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from site_stage_variants import site_problem  # noqa: E402

import phylojax.selection.site_fits as S  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="HepatitisD.nex", help="file in ../shared/data/hyphy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    problem, tips = site_problem(args.set)
    n = len(tips)
    whole = S.fit_sites_fast(problem, tips)
    t = time.perf_counter()
    whole = S.fit_sites_fast(problem, tips)
    print(f"one call, {n} sites: {time.perf_counter() - t:.2f} s", flush=True)
    share = -(-n // args.threads)  # ceil
    size = -(-share // 8) * 8
    layout = S._fast_layout
    S._fast_layout = lambda op, s, st: (size, size) if s <= size else layout(op, s, st)
    shares = [tips[i : i + size] for i in range(0, n, size)]
    with ThreadPoolExecutor(args.threads) as pool:
        for k in range(args.rounds):
            t = time.perf_counter()
            outs = list(pool.map(lambda tp: S.fit_sites_fast(problem, tp), shares))
            print(f"round {k + 1}: {len(shares)} threads x {size} rows, "
                  f"{time.perf_counter() - t:.2f} s", flush=True)  # fmt: skip
    alt = np.concatenate([o.alt_loglik for o in outs])
    print(f"max |difference| from the one call: {np.abs(alt - whole.alt_loglik).max():.1e}")


if __name__ == "__main__":
    main()
