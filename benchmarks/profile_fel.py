"""Where FEL's time goes, stage by stage, on one shared data set (warm timings, one process).

    python benchmarks/profile_fel.py [--set rbp3.nex] [--repeat 5]

Prints: the codon log-likelihood (full MG94 at the CF3x4 frequencies) forward and
value-and-gradient in ms; each global fit's evaluations, per-evaluation ms inside the fit and
total s; the site stage (fast path) cold and warm s. Run it at an earlier commit for the
"before" figures quoted in RESULTS_fel.md (e.g. ``git checkout 5000814 -- phylojax``).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import phylojax.selection.global_fits as G  # noqa: E402
from phylojax.io import read_alignment  # noqa: E402
from phylojax.models.codon import codon_frequencies, mg94_parts  # noqa: E402
from phylojax.selection.fel import prepare_partitions  # noqa: E402
from phylojax.selection.site_fits import SiteProblem, fit_sites_fast  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"


def best_ms(f, *args, repeat: int) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="rbp3.nex", help="file in ../shared/data/hyphy")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    aln = read_alignment(SHARED / args.set)
    parts, nuc_pi, counts = prepare_partitions(aln)
    _, g = codon_frequencies(counts, "CF3X4", 1)
    part = parts[0]
    free = [jnp.asarray(p.data.free) for p in parts]
    codon = [p.data.codon for p in parts]
    background = [jnp.asarray(p.data.background) for p in parts]
    x = jnp.concatenate([jnp.ones(5), jnp.array([0.5])]
                        + [jnp.where(f, 0.05, 0.0) for f in free])  # fmt: skip
    gj = jnp.asarray(g)

    forward = jax.jit(lambda x: G._codon_loglik(
        G._theta6(x[:5]), jnp.stack([x[5], x[5]]), [jnp.where(free[0], x[6:], 0.0)], codon,
        background, gj, 1, False))  # fmt: skip
    print(f"{args.set}: {aln.taxon_count} taxa, codon patterns "
          f"{[p.data.codon.tip_partials.shape[-1] for p in parts]}")  # fmt: skip
    def value_and_grad(x):
        return G._full_value_and_grad(x, free, codon, background, gj, 1, False)

    print(f"codon lnL forward {best_ms(forward, x, repeat=args.repeat):.1f} ms, "
          f"value-and-gradient {best_ms(value_and_grad, x, repeat=args.repeat):.1f} ms")

    original = G.maximise

    def timed(value_and_grad, x0, *rest, **kw):
        per = []

        def wrapped(y):
            t = time.perf_counter()
            out = value_and_grad(y)
            jax.block_until_ready(out)
            per.append(time.perf_counter() - t)
            return out

        t = time.perf_counter()
        result = original(wrapped, x0, *rest, **kw)
        print(f"  fit with {len(x0)} parameters: {result[2]} evaluations, median "
              f"{1e3 * np.median(per):.1f} ms each, {time.perf_counter() - t:.2f} s")  # fmt: skip
        return result

    G.maximise = timed
    for label in ("global fits, cold (compiling)", "global fits, warm"):
        print(label)
        t = time.perf_counter()
        fit = G.fit_global([p.data for p in parts], nuc_pi, g)
        print(f"  total {time.perf_counter() - t:.2f} s, lnL {fit.loglik:.6f}")
    G.maximise = original

    r_s, r_n, pi = mg94_parts(fit.theta, g, 1)
    problem = SiteProblem(r_s, r_n, pi, jnp.asarray(fit.times[0]),
                          jnp.asarray(part.data.background), jnp.asarray(part.data.codon.operations),
                          has_background=False)  # fmt: skip
    tips = np.moveaxis(np.asarray(part.data.codon.tip_partials), 2, 0)
    tips = tips[~(tips.prod(axis=1).sum(-1) > 0)]
    for label in ("cold", "warm"):
        t = time.perf_counter()
        fits = fit_sites_fast(problem, tips)
        print(f"site stage ({len(tips)} variable patterns), {label}: "
              f"{time.perf_counter() - t:.2f} s, sum alt lnL {np.sum(fits.alt_loglik):.6f}")  # fmt: skip


if __name__ == "__main__":
    main()
