"""FEL site stage (fast path) alone: optimiser settings against a high-effort reference, and the
chunked driver's time and memory.

    python benchmarks/site_stage_variants.py --set rbp3.nex [--variants "{'grid_size': 17}" ...]
    python benchmarks/site_stage_variants.py --set HIV_RT.nex --chunks
    python benchmarks/site_stage_variants.py --set CD2.nex --srv-no [--variants ...]
    PHYLOJAX_CACHE_DIR=off python benchmarks/site_stage_variants.py --set HepatitisD.nex --compile
    python benchmarks/site_stage_variants.py --set HepatitisD.nex --workers [--steps 32 8]

The global fit is run once (our own, as in ``phylojax fel``) and the site stage is then timed
warm. ``--variants``: each keyword set of ``fit_sites_fast`` (and the defaults, ``{}``) is compared per
site with a reference fit (grid 49, 8 refinement rounds, 4 Newton steps per grid angle): min
ΔLRT, sites below −1e-3, and the best of ``--repeat`` (3) timed runs, the settings alternating. ``--chunks``:
the driver with and without the site chunking (``SITE_BUFFER_BYTES``): time, XLA's temporary
bytes, and the largest per-site difference. ``--srv-no``: the same for the ``--srv No`` profile
path (``site_srv_no.fit_sites_srv_no``; reference grid 120, 20 refinement rounds), differences in
the alternative lnL. ``--compile``: lowering and compilation time of the fast-path program for
the set's shape and the size of its StableHLO text (run with the compilation cache off).
``--workers``: the fast path in this process against the worker processes
(:mod:`phylojax.selection.parallel`) with each share padding step of ``--steps``, alternating,
three warm rounds each; prints the times and whether the outputs are identical.
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import phylojax.selection.site_fits as S  # noqa: E402
from phylojax.io import read_alignment  # noqa: E402
from phylojax.models.codon import codon_frequencies, mg94_parts_jit  # noqa: E402
from phylojax.selection.fel import prepare_partitions  # noqa: E402
from phylojax.selection.global_fits import fit_global  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"
REFERENCE = {"grid_size": 49, "refine_rounds": 8, "grid_steps": 4, "stencil": (), "grid_dtype": None}
SRV_NO_REFERENCE = {"grid_size": 120, "refine_rounds": 20}


def site_problem(name: str):
    aln = read_alignment(SHARED / name)
    parts, nuc_pi, counts = prepare_partitions(aln)
    _, g = codon_frequencies(counts, "CF3X4", 1)
    fit = fit_global([p.data for p in parts], nuc_pi, g)
    r_s, r_n, pi = mg94_parts_jit(fit.theta, g, 1)
    part = parts[0]
    problem = S.SiteProblem(r_s, r_n, pi, jnp.asarray(fit.times[0]),
                            jnp.asarray(part.data.background),
                            jnp.asarray(part.data.codon.operations))  # fmt: skip
    tips = np.moveaxis(np.asarray(part.data.codon.tip_partials), 2, 0)
    return problem, tips[~(tips.prod(axis=1).sum(-1) > 0)]


def warm(f):
    f()
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="HepatitisD.nex", help="file in ../shared/data/hyphy")
    ap.add_argument("--variants", nargs="*", default=[])
    ap.add_argument("--chunks", action="store_true")
    ap.add_argument("--srv-no", action="store_true", help="the --srv No profile path")
    ap.add_argument("--compile", action="store_true", help="compile time of the fast path")
    ap.add_argument("--workers", action="store_true", help="in process vs worker processes")
    ap.add_argument("--steps", nargs="*", type=int, default=[32, 8], help="share padding steps")
    ap.add_argument("--repeat", type=int, default=3, help="alternating timed runs per variant")
    args = ap.parse_args()
    problem, tips = site_problem(args.set)
    print(f"{args.set}: {len(tips)} variable patterns")
    if args.compile:
        program, shape, _, _, grid, static = S._fast_program(problem, *tips.shape)
        t = time.perf_counter()
        lowered = program.lower(jax.ShapeDtypeStruct(shape, tips.dtype), problem, grid, *static)
        t_lower = time.perf_counter() - t
        t = time.perf_counter()
        lowered.compile()
        print(f"lowering {t_lower:.2f} s, compilation {time.perf_counter() - t:.2f} s, "
              f"StableHLO {len(lowered.as_text())} characters")  # fmt: skip
        return
    if args.workers:
        from phylojax.selection import parallel

        here = S.fit_sites_fast(problem, tips)
        default = parallel.SHARE_STEP
        for step in args.steps:  # compile each setting before timing
            parallel.SHARE_STEP = step
            parallel.fit(problem, tips, "fast")
        times = {"in process": [], **{f"workers, step {st}": [] for st in args.steps}}
        same = True
        for _ in range(3):
            t = time.perf_counter()
            S.fit_sites_fast(problem, tips)
            times["in process"].append(time.perf_counter() - t)
            for step in args.steps:
                parallel.SHARE_STEP = step
                t = time.perf_counter()
                fits = parallel.fit(problem, tips, "fast")
                times[f"workers, step {step}"].append(time.perf_counter() - t)
                same &= bool(np.array_equal(fits.lrt, here.lrt) and np.array_equal(fits.alpha, here.alpha))
        parallel.SHARE_STEP = default
        for label, ts in times.items():
            print(f"{label}: {' / '.join(f'{x:.2f}' for x in ts)} s")
        print(f"outputs identical to the in-process fits: {same}")
        return
    if args.srv_no:
        from phylojax.selection.site_srv_no import fit_sites_srv_no

        ref = fit_sites_srv_no(problem, tips, **SRV_NO_REFERENCE)
        for text in ["{}", *args.variants]:
            kw = ast.literal_eval(text)
            fits, dt = warm(lambda kw=kw: fit_sites_srv_no(problem, tips, **kw))
            d = fits.alt_loglik - ref.alt_loglik
            print(f"srv No {kw}: {dt:.2f} s, min Δ alt lnL {d.min():.2e}, max {d.max():.2e}")
        return
    if args.variants:
        ref = S.fit_sites_fast(problem, tips, **REFERENCE)
        settings = [ast.literal_eval(text) for text in ["{}", *args.variants]]
        fits = [S.fit_sites_fast(problem, tips, **kw) for kw in settings]  # compiles each
        times = [[] for _ in settings]
        for _ in range(args.repeat):  # alternating, so that drift hits every setting alike
            for kw, ts in zip(settings, times):
                t = time.perf_counter()
                S.fit_sites_fast(problem, tips, **kw)
                ts.append(time.perf_counter() - t)
        for kw, f, ts in zip(settings, fits, times):
            d = f.lrt - ref.lrt
            print(f"{kw}: best of {args.repeat} {min(ts):.2f} s, min ΔLRT {d.min():.2e}, "
                  f"sites < -1e-3: {np.sum(d < -1e-3)}")  # fmt: skip
    if args.chunks:
        default = S.SITE_BUFFER_BYTES
        results = {}
        for label, budget in (("chunked", default), ("one batch", 2**62)):
            S.SITE_BUFFER_BYTES = budget
            fits, dt = warm(lambda: S.fit_sites_fast(problem, tips))
            results[label] = fits
            print(f"{label}: {dt:.2f} s")
        S.SITE_BUFFER_BYTES = default
        n = S._bucket(len(tips))
        padded = jnp.asarray(np.concatenate([tips, np.repeat(tips[:1], n - len(tips), 0)]))
        grid = jnp.linspace(0.0, np.pi / 2, 25)
        static = (5, 3, 5, 4, 3)
        whole = S._FAST.lower(padded, problem, grid, *static).compile().memory_analysis()
        c = 64 if n % 64 == 0 else n
        parts = padded.reshape((n // c, c) + padded.shape[1:])
        chunked = S._FAST_CHUNKED.lower(parts, problem, grid, *static).compile().memory_analysis()
        print(f"XLA temporaries: one batch of {n} sites {whole.temp_size_in_bytes / 2**30:.2f} GiB,"
              f" chunks of {c} {chunked.temp_size_in_bytes / 2**30:.2f} GiB")  # fmt: skip
        diff = np.abs(results["chunked"].alt_loglik - results["one batch"].alt_loglik).max()
        print(f"max |Δ alt lnL| chunked vs one batch: {diff:.1e}")


if __name__ == "__main__":
    main()
