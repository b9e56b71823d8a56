"""Likelihood-engine benchmark (issue 2): phylojax vs libpll 0.3.2, same data, same run.

For every simulated data set (``benchmarks/simulate_data.py``; GTR+G4, rooted binary tree) it
times one *full* evaluation (all P matrices + every partial + root lnL) of

* phylojax ``jit(log_likelihood)`` in float64 (and float32 with ``--float32``),
* libpll AVX2, libpll AVX2 with tip-pattern lookup (``PLL_ATTRIB_PATTERN_TIP``), libpll plain C,

interleaved round-robin (``--repeat`` rounds, min and median reported) because the machine is
shared; it checks that libpll's lnL equals phylojax's (|diff| <= 1e-6), then times phylojax's
gradient with respect to every branch length and the model parameters (6 exchangeabilities, 4
frequencies, Gamma shape) against the same function's forward pass. Finally, compile time at
several taxon counts with a fixed pattern count, and a second tree of the same size (no retrace).

Results are printed and written to ``benchmarks/RESULTS_likelihood.md`` (``--md``).

Usage::

    python benchmarks/simulate_data.py
    python benchmarks/bench_likelihood.py                        # everything (~15 min, 2 cores)
    python benchmarks/bench_likelihood.py --sizes 100x10000 --repeat 9 --float32
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import libpll_ctypes as pll  # noqa: E402
import simulate_data as sim  # noqa: E402

from phylojax.io import Alignment, parse_newick, read_alignment, read_tree  # noqa: E402
from phylojax.likelihood import log_likelihood, prepare  # noqa: E402
from phylojax.models import gtr, rate_model  # noqa: E402

OUT = HERE / "out"


def _ms(x):
    return f"{1e3 * x:.1f}"


def load(size: str):
    n, s = (int(x) for x in size.lower().split("x"))
    stem = OUT / f"sim_{n}x{s}"
    if not stem.with_suffix(".fa").exists():
        sim.write(n, s, 1)
    meta = json.loads(stem.with_suffix(".json").read_text())
    aln = read_alignment(stem.with_suffix(".fa"))
    tree = read_tree(str(stem.with_suffix(".nwk")))
    return stem, meta, prepare(aln, tree)


def make_fn(data, dtype=None):
    """lnL as a function of (branch lengths, exchangeabilities, frequencies, alpha).

    ``gtr``/``rate_model`` build float64 arrays (``dtype=float``) under x64, so for float32 the
    model pytrees are cast after construction.
    """

    def f(lengths, rates6, freqs, alpha):
        model, rates = gtr(rates6, freqs), rate_model(alpha, 4)
        if dtype is not None:
            model, rates = cast_data(model, dtype), cast_data(rates, dtype)
        return log_likelihood(data, lengths, model, rates)

    return f


def params(problem, meta, dtype=jnp.float64):
    return (
        jnp.asarray(problem.branch_lengths, dtype),
        jnp.asarray(meta["rates"], dtype),
        jnp.asarray(meta["freqs"], dtype),
        jnp.asarray(meta["alpha"], dtype),
    )


def cast_data(data, dtype):
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, data
    )


def timed(fn, *args):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0, out


def stats(times):
    return {"min": min(times), "median": statistics.median(times), "n": len(times)}


def bench_size(size, args, rows, notes):
    stem, meta, problem = load(size)
    n, patterns = problem.topology.leaf_count, problem.patterns.pattern_count
    print(f"\n== {size}: {n} taxa, {patterns} patterns ==", flush=True)
    cli = (f"phylojax loglik -s {stem.relative_to(HERE.parent)}.fa -t "
           f"{stem.relative_to(HERE.parent)}.nwk -m {shlex.quote(meta['model'])} --json "
           f"--repeat {args.repeat}")

    engines = {}
    # phylojax float64
    f = make_fn(problem.data)
    p64 = params(problem, meta)
    fwd = jax.jit(f)
    compile_s, lnl = timed(fwd, *p64)
    lnl_pj = float(lnl)
    engines["phylojax f64"] = (lambda: fwd(*p64).block_until_ready(), compile_s, cli)
    if args.float32 and n <= 200:  # float32 only where memory allows both
        f32 = make_fn(cast_data(problem.data, jnp.float32), jnp.float32)
        p32 = params(problem, meta, jnp.float32)
        fwd32 = jax.jit(f32)
        c32, lnl32 = timed(fwd32, *p32)
        notes.append(f"{size}: phylojax float32 lnL {float(lnl32):.4f} "
                     f"(float64 {lnl_pj:.4f}, diff {float(lnl32) - lnl_pj:+.3g})")
        engines["phylojax f32"] = (lambda: fwd32(*p32).block_until_ready(), c32, "(same, float32)")

    # libpll: same patterns, same rooted binary tree, its own Gamma rates (checked below).
    # Without tip-pattern, libpll allocates a CLV for every node (500x50000: ~6 GB each), so on
    # large data each libpll partition is created, timed interleaved with phylojax, and freed.
    times = {k: [] for k in engines}
    reps = args.repeat if n <= 200 else args.repeat_large
    sequential = n > 200
    ours = dict(engines)

    def rounds(active):
        for _ in range(reps):
            for k, (call, _, _) in active.items():
                t0 = time.perf_counter()
                call()
                times.setdefault(k, []).append(time.perf_counter() - t0)

    parts = {}
    for label, arch, pt in (("libpll AVX2", "avx2", False), ("libpll AVX2 tip-pattern", "avx2", True),
                            ("libpll plain C", "cpu", False)):
        if label not in args.libpll:
            continue
        t0 = time.perf_counter()
        part = pll.problem_to_partition(problem, meta["rates"], meta["freqs"], None,
                                        alpha=meta["alpha"], categories=4, arch=arch,
                                        pattern_tip=pt)
        setup = time.perf_counter() - t0
        value = part.loglik()
        diff = value - lnl_pj
        ok = abs(diff) <= 1e-6
        notes.append(f"{size}: {label} lnL {value:.10f} vs phylojax {lnl_pj:.10f}: "
                     f"diff {diff:+.2e} {'OK (<=1e-6)' if ok else 'FAIL (>1e-6)'}")
        print(notes[-1], flush=True)
        engines[label] = (part.loglik, setup, f"libpll_ctypes.LibpllPartition(arch={arch!r}, "
                          f"pattern_tip={pt}).loglik()")
        if sequential:
            rounds({**ours, label: engines[label]})
            part.close()
        else:
            parts[label] = part
    if not sequential:
        rounds(engines)
    ref = stats(times.get("libpll AVX2", times["phylojax f64"]))
    for k, (_, setup, cmd) in engines.items():
        s = stats(times[k])
        rows.append({
            "data": f"{n}×{patterns}p", "engine": k, "compile_s": setup,
            "median": s["median"], "min": s["min"], "n": s["n"],
            "ratio": s["min"] / ref["min"], "cmd": cmd,
        })
        print(f"{k:26s} compile/setup {setup:7.2f}s  median {_ms(s['median'])} ms  "
              f"min {_ms(s['min'])} ms  ×AVX2(min) {s['min'] / ref['min']:.2f}", flush=True)
    for part in parts.values():
        part.close()

    if size in args.grad_sizes:
        g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
        gc, (gv, grads) = timed(g, *p64)
        finite = all(bool(jnp.all(jnp.isfinite(x))) for x in grads)
        gt, ft = [], []
        for _ in range(reps):
            gt.append(timed(g, *p64)[0])
            ft.append(timed(fwd, *p64)[0])
        gs, fs = stats(gt), stats(ft)
        rows.append({
            "data": f"{n}×{patterns}p", "engine": "phylojax f64 value_and_grad",
            "compile_s": gc, "median": gs["median"], "min": gs["min"], "n": gs["n"],
            "ratio": gs["min"] / fs["min"],
            "cmd": "jax.jit(jax.value_and_grad(f, argnums=(0,1,2,3))) (all 2n-1 lengths, 6 rates, "
                   "4 freqs, alpha)",
            "ratio_label": "×own forward",
        })
        notes.append(f"{size}: gradient finite: {finite}; value {float(gv):.6f}; "
                     f"gradient/forward (min) {gs['min'] / fs['min']:.2f} (target <= 3)")
        print(f"{'phylojax value_and_grad':26s} compile {gc:7.2f}s  median {_ms(gs['median'])} ms  "
              f"min {_ms(gs['min'])} ms  ×forward {gs['min'] / fs['min']:.2f} (finite {finite})",
              flush=True)


def random_problem(n, sites, seed):
    rng = np.random.default_rng(seed)
    children, lengths = sim.random_tree(n, rng)
    names = [f"t{i}" for i in range(n)]
    tree = parse_newick(sim.newick(children, lengths, names, 2 * n - 2))
    seqs = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, (n, sites))]
    aln = Alignment(names=tuple(names), sequences=tuple(r.tobytes().decode() for r in seqs))
    return prepare(aln, tree)


def bench_compile(args, crows, notes):
    meta = json.loads((OUT / "sim_100x10000.json").read_text()) if (OUT / "sim_100x10000.json").exists() \
        else {"rates": sim.RATES, "freqs": sim.FREQS, "alpha": sim.ALPHA}
    print(f"\n== compile time vs taxa ({args.compile_sites} random sites) ==", flush=True)
    for n in args.compile_taxa:
        problem = random_problem(n, args.compile_sites, n)
        f = make_fn(problem.data)
        p = params(problem, meta)
        t0 = time.perf_counter()
        lowered = jax.jit(f).lower(*p)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        run = timed(compiled, *p)[0]
        gl = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3))).lower(*p)
        t3 = time.perf_counter()
        gl.compile()
        t4 = time.perf_counter()
        crows.append({"taxa": n, "patterns": problem.patterns.pattern_count, "trace_s": t1 - t0,
                      "compile_s": t2 - t1, "first_run_s": run, "grad_compile_s": t4 - t3})
        print(f"taxa {n:5d}  trace {t1 - t0:.2f}s  XLA compile {t2 - t1:.2f}s  grad compile "
              f"{t4 - t3:.2f}s  first run {run * 1e3:.0f} ms", flush=True)

    # a second tree of the same size must reuse the compiled function
    n = args.compile_taxa[0]
    a, b = random_problem(n, args.compile_sites, 1), random_problem(n, args.compile_sites, 2)
    # same pattern count is required; both are all-unique random columns
    fn = jax.jit(lambda data, lengths, r6, fr, al: make_fn(data)(lengths, r6, fr, al))
    t_first, _ = timed(fn, a.data, *params(a, meta))
    size1 = fn._cache_size()
    t_second, _ = timed(fn, b.data, *params(b, meta))
    size2 = fn._cache_size()
    same_ops = np.array_equal(a.topology.operations, b.topology.operations)
    notes.append(f"second {n}-taxon tree (different topology: {not same_ops}, same pattern count "
                 f"{a.patterns.pattern_count == b.patterns.pattern_count}): first call {t_first:.2f}s, "
                 f"second call {t_second * 1e3:.0f} ms, jit cache entries {size1} -> {size2} "
                 f"({'no recompilation' if size1 == size2 else 'RECOMPILED'})")
    print(notes[-1], flush=True)


def write_md(path, args, rows, crows, notes):
    cmd = "python " + " ".join(shlex.quote(x) for x in [sys.argv[0], *sys.argv[1:]])
    lines = [
        "## Likelihood engine: phylojax vs libpll (issue 2 benchmark)",
        "",
        f"Produced by `{cmd}` (data from `python benchmarks/simulate_data.py`, seed 1) on "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs (shared "
        f"machine: timings noisy, engines interleaved round-robin in one process), "
        f"jax {jax.__version__}, libpll 0.3.2 (Debian). Model "
        f"`{sim.model_string()}` on simulated GTR+G4 data; rooted binary trees, the same "
        "pattern-compressed data and postorder operations in both engines; one evaluation = all P "
        "matrices + all partials + root lnL, rescaling on in both.",
        "",
        "| data (taxa × patterns) | engine | compile / setup s | eval median ms | eval min ms | "
        "ratio (min) | command |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lab = r.get("ratio_label", "×libpll AVX2")
        lines.append(f"| {r['data']} | {r['engine']} | {r['compile_s']:.2f} | {_ms(r['median'])} | "
                     f"{_ms(r['min'])} | {r['ratio']:.2f} {lab} | `{r['cmd']}` |")
    if crows:
        lines += ["", "Compile time vs taxon count (fixed pattern count; `jax.jit(f).lower(...)` "
                  "then `.compile()`, and the same for `jax.grad`):", "",
                  "| taxa | patterns | trace s | XLA compile s | grad compile s | first run ms |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for c in crows:
            lines.append(f"| {c['taxa']} | {c['patterns']} | {c['trace_s']:.2f} | "
                         f"{c['compile_s']:.2f} | {c['grad_compile_s']:.2f} | "
                         f"{c['first_run_s'] * 1e3:.0f} |")
    lines += ["", "Checks:", ""] + [f"- {x}" for x in notes] + [""]
    path.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["100x10000", "500x50000"])
    ap.add_argument("--repeat", type=int, default=7, help="timed rounds (<=200 taxa)")
    ap.add_argument("--repeat-large", type=int, default=3, help="timed rounds (>200 taxa)")
    ap.add_argument("--float32", action="store_true")
    ap.add_argument("--grad-sizes", nargs="*", default=["100x10000"],
                    help="sizes on which to time the gradient (slow on 500x50000)")
    ap.add_argument("--libpll", nargs="*",
                    default=["libpll AVX2", "libpll AVX2 tip-pattern", "libpll plain C"])
    ap.add_argument("--compile-taxa", type=int, nargs="*", default=[50, 100, 200, 500])
    ap.add_argument("--compile-sites", type=int, default=2000)
    ap.add_argument("--md", type=pathlib.Path, default=HERE / "RESULTS_likelihood.md")
    args = ap.parse_args(argv)
    rows, crows, notes = [], [], []
    for size in args.sizes:
        bench_size(size, args, rows, notes)
    if args.compile_taxa:
        bench_compile(args, crows, notes)
    if args.md:
        write_md(args.md, args, rows, crows, notes)


if __name__ == "__main__":
    main()
