"""Profile the forward pruning kernel: timed variants on the same inputs, exactness-checked.

Every variant maps ``(tips[n, state, pattern], probs[node, cat, state, state], root_weights[cat,
state], operations[n-1, 3])`` to per-pattern log-likelihoods, compiles once per taxon count
(``operations`` is traced) except ``unrolled`` (Python loop, reference only), and must agree with
``phylojax.likelihood.pruning`` to 1e-8 in total lnL. Variants:

* ``baseline``      phylojax ``mixture_log_likelihoods`` (scan; einsum ``kxy,kyp->kxp``; where-select
                    between a tip and an inner buffer; max rescale).
* ``fused``         same scan, but ``P @ D`` written as a broadcast-multiply-sum so XLA fuses
                    fetch + select + both products + max + divide into loop fusions (no dot call).
* ``fused4``        as ``fused`` with the 4-term sum over ``y`` written out explicitly.
* ``fused_noscale`` ``fused4`` without rescaling (lower bound for the cost of scaling; not safe).
* ``fused_scale8``  ``fused4`` rescaling only every 8th operation (exact: the scaler is still
                    tracked; measures the cost of per-op scaling, not a safe scheme: an ancestor chain
                    can skip every 8th index).
* ``fused_pow2``    ``fused4`` with libpll's rule: multiply a site's CLV by 2^256 (exact) only when
                    its max drops below 2^-256; the scaler counts the factors (float64 only).
* ``fused_f32``     ``fused4`` in float32 (lnL differs; reported, not checked to 1e-8).
* ``sitemajor``     ``[pattern, cat, state]`` layout, same fused products.
* ``level``         scan over ``Topology.levels`` (padded width), vmapped fused kernel + scatter.
* ``unrolled``      per-node Python loop under jit (static tree; compile grows with n).

Then the gradient: time ``postorder``, ``preorder`` and ``jax.grad`` of the mixture w.r.t. the P
matrices at several taxon counts (fixed patterns) to see how each scales with n.

Usage::

    python benchmarks/profile_pruning.py                       # 100x10000 data set, 5 repeats
    python benchmarks/profile_pruning.py --variants baseline fused4 --repeat 9
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import simulate_data as sim  # noqa: E402

from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.likelihood import prepare  # noqa: E402
from phylojax.likelihood.api import _mixture_inputs  # noqa: E402
from phylojax.likelihood.pruning import mixture_log_likelihoods, postorder, preorder  # noqa: E402
from phylojax.models import gtr, rate_model  # noqa: E402


# ---------------------------------------------------------------------------------------------
# kernels
def prop_bcast(p, d):
    """``sum_y P[k, x, y] D[k, y, p]`` as broadcast-multiply-reduce (fusible, no dot)."""
    return (p[:, :, :, None] * d[:, None, :, :]).sum(2)


def prop4(p, d):
    """Same, 4 states written out: ``P[:, :, 0] D[:, 0] + ... + P[:, :, 3] D[:, 3]``."""
    out = p[:, :, 0, None] * d[:, None, 0, :]
    for y in range(1, p.shape[-1]):
        out = out + p[:, :, y, None] * d[:, None, y, :]
    return out


def make_scan(prop, scale_every=1, scale=True, pow2=False):
    def kernel(tips, probs, root_weights, ops):
        n, s, npat = tips.shape
        k = probs.shape[1]
        inner = jnp.zeros((n - 1, k, s, npat), tips.dtype)
        scalers = jnp.zeros((n - 1, npat), tips.dtype)

        def fetch(inner, scalers, node):
            is_tip = node < n
            tip = lax.dynamic_index_in_dim(tips, jnp.minimum(node, n - 1), keepdims=False)
            j = jnp.maximum(node - n, 0)
            inn = lax.dynamic_index_in_dim(inner, j, keepdims=False)
            sc = lax.dynamic_index_in_dim(scalers, j, keepdims=False)
            return jnp.where(is_tip, tip[None], inn), jnp.where(is_tip, 0.0, sc)

        def step(carry, op):
            inner, scalers = carry
            parent, a, b = op[0], op[1], op[2]
            da, sa = fetch(inner, scalers, a)
            db, sb = fetch(inner, scalers, b)
            clv = prop(probs[a], da) * prop(probs[b], db)
            i = parent - n
            s_new = sa + sb
            if pow2:
                # libpll-style: multiply by 2^256 (exact) only where the site's max < 2^-256.
                m = jnp.max(clv, axis=(0, 1))
                small = m < 2.0**-256
                clv = clv * jnp.where(small, 2.0**256, 1.0)
                s_new = s_new - jnp.where(small, 256 * np.log(2.0), 0.0)
            elif scale:
                m = jnp.max(clv, axis=(0, 1))
                if scale_every > 1:
                    m = jnp.where((i % scale_every == scale_every - 1) | (i == n - 2), m, 1.0)
                m = jnp.where(m > 0, m, 1.0)
                clv = clv / m
                s_new = s_new + jnp.log(m)
            inner = lax.dynamic_update_index_in_dim(inner, clv, i, 0)
            scalers = lax.dynamic_update_index_in_dim(scalers, s_new, i, 0)
            return (inner, scalers), None

        (inner, scalers), _ = lax.scan(step, (inner, scalers), ops)
        lik = jnp.einsum("kx,kxp->p", root_weights, inner[-1])
        return jnp.log(lik) + scalers[-1]

    return kernel


def sitemajor(tips, probs, root_weights, ops):
    """``[pattern, cat, state]`` layout (tips given ``[n, state, pattern]``; transposed once)."""
    n, s, npat = tips.shape
    k = probs.shape[1]
    tips_t = jnp.swapaxes(tips, 1, 2)  # n, p, s
    inner = jnp.zeros((n - 1, npat, k, s), tips.dtype)
    scalers = jnp.zeros((n - 1, npat), tips.dtype)

    def prop(p, d):  # p [k,x,y], d [p,k|1,y]
        return (p[None] * d[:, :, None, :]).sum(-1)

    def step(carry, op):
        inner, scalers = carry
        parent, a, b = op[0], op[1], op[2]

        def fetch(node):
            tip = lax.dynamic_index_in_dim(tips_t, jnp.minimum(node, n - 1), keepdims=False)
            j = jnp.maximum(node - n, 0)
            inn = lax.dynamic_index_in_dim(inner, j, keepdims=False)
            sc = lax.dynamic_index_in_dim(scalers, j, keepdims=False)
            return jnp.where(node < n, tip[:, None, :], inn), jnp.where(node < n, 0.0, sc)

        da, sa = fetch(a)
        db, sb = fetch(b)
        clv = prop(probs[a], da) * prop(probs[b], db)
        m = jnp.max(clv, axis=(1, 2))
        m = jnp.where(m > 0, m, 1.0)
        i = parent - n
        inner = lax.dynamic_update_index_in_dim(inner, clv / m[:, None, None], i, 0)
        scalers = lax.dynamic_update_index_in_dim(scalers, sa + sb + jnp.log(m), i, 0)
        return (inner, scalers), None

    (inner, scalers), _ = lax.scan(step, (inner, scalers), ops)
    return jnp.log(jnp.einsum("kx,pkx->p", root_weights, inner[-1])) + scalers[-1]


def make_level(levels):
    """Scan over levels ``[L, W]`` (padded with -1): gather W ops, vmapped kernel, scatter."""
    levels = jnp.asarray(levels)

    def kernel(tips, probs, root_weights, ops):
        n, s, npat = tips.shape
        k = probs.shape[1]
        # one spare row (index n-1) absorbs the padded slots' writes
        inner = jnp.zeros((n, k, s, npat), tips.dtype)
        scalers = jnp.zeros((n, npat), tips.dtype)

        def one(inner, scalers, op):
            parent, a, b = op[0], op[1], op[2]

            def fetch(node):
                tip = tips[jnp.minimum(node, n - 1)]
                j = jnp.maximum(node - n, 0)
                return jnp.where(node < n, tip[None], inner[j]), jnp.where(node < n, 0.0, scalers[j])

            da, sa = fetch(a)
            db, sb = fetch(b)
            clv = prop4(probs[a], da) * prop4(probs[b], db)
            m = jnp.max(clv, axis=(0, 1))
            m = jnp.where(m > 0, m, 1.0)
            return clv / m, sa + sb + jnp.log(m)

        def step(carry, level):
            inner, scalers = carry
            valid = level >= 0
            op = ops[jnp.maximum(level, 0)]
            clv, sc = jax.vmap(one, in_axes=(None, None, 0))(inner, scalers, op)
            rows = jnp.where(valid, op[:, 0] - n, n - 1)
            return (inner.at[rows].set(clv), scalers.at[rows].set(sc)), None

        (inner, scalers), _ = lax.scan(step, (inner, scalers), levels)
        lik = jnp.einsum("kx,kxp->p", root_weights, inner[n - 2])
        return jnp.log(lik) + scalers[n - 2]

    return kernel


def make_unrolled(ops_np):
    def kernel(tips, probs, root_weights, ops):
        n = tips.shape[0]
        parts, scal = {}, {}
        for parent, a, b in ops_np:
            da = tips[a][None] if a < n else parts[a]
            db = tips[b][None] if b < n else parts[b]
            clv = prop4(probs[a], da) * prop4(probs[b], db)
            m = jnp.max(clv, axis=(0, 1))
            m = jnp.where(m > 0, m, 1.0)
            parts[parent] = clv / m
            scal[parent] = scal.get(a, 0.0) + scal.get(b, 0.0) + jnp.log(m)
        root = int(ops_np[-1, 0])
        return jnp.log(jnp.einsum("kx,kxp->p", root_weights, parts[root])) + scal[root]

    return kernel


def preorder_trash(tips, transition_probs, root_weights, operations, inner, scalers, coef,
                   barrier=False, scatter=True):
    """phylojax ``preorder`` with one change: the outside buffer has a spare *trash* row that
    tips write to, so no step reads the buffer slot it is about to overwrite (no
    ``where(keep, old, new)``) and both children's writes are plain dynamic-update-slices;
    ``barrier``: the read ``A_v = outside[i]`` goes through ``lax.optimization_barrier`` so XLA
    materialises the slice instead of fusing the read into consumers scheduled after the
    in-place write (which forces a copy of the whole ``outside`` buffer every step: O(n^2)).
    Returns ``(outside[:-1], outside_scalers[:-1], d_transition_probs)`` (no edge lnLs)."""
    from phylojax.likelihood.pruning import _fetch, _propagate, _rescale, _root_log_likelihoods

    n = tips.shape[0]
    log_l = _root_log_likelihoods(inner, scalers, root_weights)
    op_count = inner.shape[0]
    outside = jnp.zeros((op_count + 1, *inner.shape[1:]), inner.dtype)
    outside = outside.at[op_count - 1].set(jnp.broadcast_to(root_weights[:, :, None], inner.shape[1:]))
    outside_scalers = jnp.zeros((op_count + 1, inner.shape[-1]), inner.dtype)
    grads = jnp.zeros_like(transition_probs)

    def step(carry, op):
        outside, outside_scalers, grads = carry
        parent, a, b = op[0], op[1], op[2]
        i = parent - n
        a_v = lax.dynamic_index_in_dim(outside, i, keepdims=False)
        s_v = lax.dynamic_index_in_dim(outside_scalers, i, keepdims=False)
        if barrier:
            a_v, s_v = lax.optimization_barrier((a_v, s_v))
        da, sa = _fetch(tips, inner, scalers, a, n)
        db, sb = _fetch(tips, inner, scalers, b, n)
        pa, pb = transition_probs[a], transition_probs[b]
        prop_a, prop_b = _propagate(pa, da), _propagate(pb, db)
        new = []
        for child, p_c, d_c, s_c, prop_sib, s_sib in ((a, pa, da, sa, prop_b, sb), (b, pb, db, sb, prop_a, sa)):
            bb = a_v * prop_sib
            s_b = s_v + s_sib
            weight = coef * jnp.exp(s_b + s_c - log_l)
            g = jnp.einsum("kxp,kyp->kxy", bb * weight, d_c)
            a_c, log_m = _rescale(jnp.einsum("kxy,kxp->kyp", p_c, bb))
            j = jnp.where(child < n, op_count, child - n)
            new.append((child, g, a_c, s_b + log_m, j))
        if scatter:  # one 2-row scatter per buffer instead of two dynamic-update-slices
            rows = jnp.stack([x[4] for x in new])
            grads = grads.at[jnp.stack([x[0] for x in new])].set(jnp.stack([x[1] for x in new]))
            outside = outside.at[rows].set(jnp.stack([x[2] for x in new]))
            outside_scalers = outside_scalers.at[rows].set(jnp.stack([x[3] for x in new]))
        else:
            for child, g, a_c, s_ac, j in new:
                grads = lax.dynamic_update_index_in_dim(grads, g, child, 0)
                outside = lax.dynamic_update_index_in_dim(outside, a_c, j, 0)
                outside_scalers = lax.dynamic_update_index_in_dim(outside_scalers, s_ac, j, 0)
        return (outside, outside_scalers, grads), None

    (outside, outside_scalers, grads), _ = lax.scan(
        step, (outside, outside_scalers, grads), operations, reverse=True
    )
    return outside[:-1], outside_scalers[:-1], grads


# ---------------------------------------------------------------------------------------------
def load_inputs(size="100x10000"):
    n, s = (int(x) for x in size.split("x"))
    stem = HERE / "out" / f"sim_{n}x{s}"
    if not stem.with_suffix(".fa").exists():
        sim.write(n, s, 1)
    problem = prepare(read_alignment(stem.with_suffix(".fa")), read_tree(str(stem.with_suffix(".nwk"))))
    model, rates = gtr(sim.RATES, sim.FREQS), rate_model(sim.ALPHA, 4)
    probs, rw = _mixture_inputs(problem.data, jnp.asarray(problem.branch_lengths), model, rates)
    return problem, problem.data.tip_partials, probs, rw, problem.data.operations


def timeit(fn, args, repeat):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t0)
    return out, compile_s, ts


def run_variants(args):
    problem, tips, probs, rw, ops = load_inputs(args.size)
    w = problem.data.pattern_weights
    levels = problem.topology.levels
    print(f"{args.size}: {tips.shape[0]} taxa, {tips.shape[2]} patterns, {probs.shape[1]} categories; "
          f"levels {levels.shape} (padded slots {levels.size} vs {ops.shape[0]} ops)", flush=True)
    variants = {
        "baseline": mixture_log_likelihoods,
        "fused": make_scan(prop_bcast),
        "fused4": make_scan(prop4),
        "fused_noscale": make_scan(prop4, scale=False),
        "fused_scale8": make_scan(prop4, scale_every=8),
        "fused_pow2": make_scan(prop4, pow2=True),
        "fused_f32": make_scan(prop4),
        "sitemajor": sitemajor,
        "level": make_level(levels),
        "unrolled": make_unrolled(np.asarray(ops)),
    }
    chosen = args.variants or list(variants)
    compiled, results = {}, {}
    for name in chosen:
        fn = jax.jit(variants[name])
        a = (tips, probs, rw, ops)
        if name.endswith("f32"):
            a = (tips.astype(jnp.float32), probs.astype(jnp.float32), rw.astype(jnp.float32), ops)
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*a))
        compiled[name] = (fn, a, time.perf_counter() - t0, float(w.astype(out.dtype) @ out))
        results[name] = []
    # interleaved rounds
    for _ in range(args.repeat):
        for name in chosen:
            fn, a, _, _ = compiled[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*a))
            results[name].append(time.perf_counter() - t0)
    ref_lnl = compiled[chosen[0]][3]
    base = min(results[chosen[0]])
    print(f"\n| variant | compile s | median ms | min ms | speed-up vs {chosen[0]} (min) | lnL - ref |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in chosen:
        _, _, c, lnl = compiled[name]
        ts = results[name]
        print(f"| {name} | {c:.2f} | {1e3 * statistics.median(ts):.1f} | {1e3 * min(ts):.1f} | "
              f"{base / min(ts):.2f}× | {lnl - ref_lnl:+.2e} |", flush=True)


def run_gradient(args):
    print("\nGradient breakdown (random data, fixed patterns): ms (min of repeats)")
    print("| taxa | patterns | postorder | preorder | preorder_trash | grad wrt P (custom VJP) | "
          "grad/postorder | preorder_trash/postorder | max abs dP diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    from bench_likelihood import random_problem  # noqa: PLC0415

    for n in args.grad_taxa:
        problem = random_problem(n, args.grad_sites, n)
        model, rates = gtr(sim.RATES, sim.FREQS), rate_model(sim.ALPHA, 4)
        probs, rw = _mixture_inputs(problem.data, jnp.asarray(problem.branch_lengths), model, rates)
        tips, ops, w = problem.data.tip_partials, problem.data.operations, problem.data.pattern_weights
        post = jax.jit(postorder)
        inner, scalers = post(tips, probs, ops)
        pre = jax.jit(preorder)
        grad = jax.jit(jax.grad(lambda p, r: w @ mixture_log_likelihoods(tips, p, r, ops), argnums=(0, 1)))
        _, _, t1 = timeit(post, (tips, probs, ops), args.repeat)
        _, _, t2 = timeit(pre, (tips, probs, rw, ops, inner, scalers, w), args.repeat)
        _, _, t3 = timeit(grad, (probs, rw), args.repeat)
        o2, _, t4 = timeit(jax.jit(preorder_trash), (tips, probs, rw, ops, inner, scalers, w), args.repeat)
        ref = pre(tips, probs, rw, ops, inner, scalers, w)[2]
        diff = float(jnp.max(jnp.abs(o2[2] - ref)))
        print(f"| {n} | {problem.patterns.pattern_count} | {1e3 * min(t1):.1f} | {1e3 * min(t2):.1f} | "
              f"{1e3 * min(t4):.1f} | {1e3 * min(t3):.1f} | {min(t3) / min(t1):.1f} | "
              f"{min(t4) / min(t1):.1f} | {diff:.1e} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="100x10000")
    ap.add_argument("--variants", nargs="*")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--grad-taxa", type=int, nargs="*", default=[50, 100, 200])
    ap.add_argument("--grad-sites", type=int, default=2000)
    args = ap.parse_args(argv)
    if args.variants != []:
        run_variants(args)
    if args.grad_taxa:
        run_gradient(args)


if __name__ == "__main__":
    main()
