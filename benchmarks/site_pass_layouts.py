"""FEL fast path: one shared-eigensystem pruning pass (``site_fits._batch_loglik``, three scales
per site, as in every Newton step of the grid) against alternative layouts, warm, one process.

    python benchmarks/site_pass_layouts.py [--set rbp3.nex] [--repeat 5]

Prints ms per pass for: the pass as shipped; the same with ``exp`` replaced by a linear term (the
share of ``exp``); a level-batched pass (every tree level's children in one matrix product,
unrolled in Python); a Taylor-mode pass giving exact first and second derivatives in ``log r``
from one pass (instead of central differences at ``u -/+ h``); states padded from 61 to 64 (exact:
zero rows and columns); and the bare matrix-product rate at the pass's shape. Each variant's
values are checked against the shipped pass.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from profile_fel import best_ms as best  # noqa: E402
from site_stage_variants import site_problem  # noqa: E402

import phylojax.selection.site_fits as S  # noqa: E402


def levels_of(operations):
    height = {}
    for p, a, b in operations:
        height[int(p)] = 1 + max(height.get(int(a), 0), height.get(int(b), 0))
    top = max(height.values())
    return [np.array([o for o in operations if height[int(o[0])] == h]) for h in range(1, top + 1)]


def level_loglik(u, tip_w, problem, eig, levels, root_node):
    """Shared-eigensystem pass, one product per level for all children (unrolled)."""
    to_state, to_eig, lam = eig
    times = jnp.asarray(problem.times)
    site_count, leaf_count, state_count = tip_w.shape
    m = u.shape[1]
    r = jnp.exp(u)
    part, scal = {}, {}

    def get(c):
        if c < leaf_count:
            return jnp.broadcast_to(tip_w[:, c, None, :], (site_count, m, state_count)), 0.0
        return part[c], scal[c]

    for level in levels:
        kids = level[:, 1:].reshape(-1)
        w = jnp.stack([get(int(c))[0] for c in kids])
        t = times[jnp.asarray(kids)]
        y = w * jnp.exp(lam * (r[None] * t[:, None, None])[..., None])
        y = (y @ to_state).reshape((len(level), 2) + y.shape[1:])
        x = y[:, 0] * y[:, 1]
        mx = jnp.max(x, axis=-1)
        safe = jnp.where(mx > 0, mx, 1.0)
        wz = (x / safe[..., None]) @ to_eig
        for j, (p, a, b) in enumerate(level):
            part[int(p)] = wz[j]
            scal[int(p)] = jnp.log(safe[j]) + get(int(a))[1] + get(int(b))[1]
    root = to_state @ jnp.asarray(problem.frequencies)
    lik = jnp.sum(part[root_node] * root, axis=-1)
    return jnp.log(jnp.maximum(lik, 1e-300)) + scal[root_node]


def taylor_loglik(u, tip_w, problem, eig):
    """Value, d/du and d2/du2 of every site's log-likelihood at ``u [site]`` from one pass:
    each partial carries its first two derivatives in ``u`` (product rule through the pruning)."""
    to_state, to_eig, lam = eig
    times = jnp.asarray(problem.times)
    operations = jnp.asarray(problem.operations)
    site_count, leaf_count, state_count = tip_w.shape
    r = jnp.exp(u)[:, None]

    def up(n, w):
        a = lam * (r * times[n])
        e0 = jnp.exp(a)
        e1 = e0 * a
        e2 = e1 * (a + 1.0)
        y = jnp.stack([w[0] * e0, w[1] * e0 + w[0] * e1, w[2] * e0 + 2 * w[1] * e1 + w[0] * e2])
        return y @ to_state

    def fetch(inner, scalers, n):
        is_tip = n < leaf_count
        tip = lax.dynamic_index_in_dim(tip_w, jnp.minimum(n, leaf_count - 1), 1, keepdims=False)
        k = jnp.maximum(n - leaf_count, 0)
        inn = lax.dynamic_index_in_dim(inner, k, 0, keepdims=False)
        sc = lax.dynamic_index_in_dim(scalers, k, 0, keepdims=False)
        tip3 = jnp.stack([tip, jnp.zeros_like(tip), jnp.zeros_like(tip)])
        return jnp.where(is_tip, tip3, inn), jnp.where(is_tip, 0.0, sc)

    def step(carry, op):
        inner, scalers = carry
        wa, sa = fetch(inner, scalers, op[1])
        wb, sb = fetch(inner, scalers, op[2])
        xa, xb = up(op[1], wa), up(op[2], wb)
        x = jnp.stack([xa[0] * xb[0], xa[1] * xb[0] + xa[0] * xb[1],
                       xa[2] * xb[0] + 2 * xa[1] * xb[1] + xa[0] * xb[2]])  # fmt: skip
        mx = jnp.max(x[0], axis=-1)
        safe = jnp.where(mx > 0, mx, 1.0)
        i = op[0] - leaf_count
        inner = lax.dynamic_update_index_in_dim(inner, (x / safe[:, None]) @ to_eig, i, 0)
        scalers = lax.dynamic_update_index_in_dim(scalers, sa + sb + jnp.log(safe), i, 0)
        return (inner, scalers), None

    op_count = operations.shape[0]
    inner = jnp.zeros((op_count, 3, site_count, state_count))
    scalers = jnp.zeros((op_count, site_count))
    (inner, scalers), _ = lax.scan(step, (inner, scalers), operations)
    lik = inner[-1] @ (to_state @ jnp.asarray(problem.frequencies))
    l0 = jnp.maximum(lik[0], 1e-300)
    g = lik[1] / l0
    return jnp.log(l0) + scalers[-1], g, lik[2] / l0 - g * g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="rbp3.nex")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    problem, tips = site_problem(args.set)
    n = S._bucket(tips.shape[0])
    tips = jnp.asarray(np.concatenate([tips, np.repeat(tips[:1], n - tips.shape[0], 0)]))
    ops = np.asarray(problem.operations)
    levels = levels_of(ops)
    u = jnp.asarray(np.random.default_rng(0).uniform(-3.0, 2.0, n))
    u3 = u[:, None] + jnp.array([-S._FD, 0.0, S._FD])
    rep = args.repeat
    print(f"{args.set}: {n} site rows (padded), {len(ops)} operations, {len(levels)} levels "
          f"(widths {[len(lv) for lv in levels]})")  # fmt: skip

    def shipped(u3, tips):
        eig = S._eig(problem, 0.8, 0.6)
        return S._batch_loglik(u3, S._tip_coordinates(tips, eig, True), problem, eig, True)

    ref = jax.jit(shipped)(u3, tips)
    print(
        f"shipped pass (3 scales per site): {best(jax.jit(shipped), u3, tips, repeat=rep):.2f} ms"
    )

    no_exp = jax.jit(lambda u3, tips: _without_exp(shipped, u3, tips))
    print(f"  with exp(x) replaced by 1 + x:  {best(no_exp, u3, tips, repeat=rep):.2f} ms")

    def level(u3, tips):
        eig = S._eig(problem, 0.8, 0.6)
        return level_loglik(u3, S._tip_coordinates(tips, eig, True), problem, eig, levels,
                            int(ops[-1, 0]))  # fmt: skip

    diff = float(jnp.max(jnp.abs(jax.jit(level)(u3, tips) - ref)))
    print(f"level-batched (unrolled):         {best(jax.jit(level), u3, tips, repeat=rep):.2f} ms"
          f"  (max |diff| {diff:.1e})")  # fmt: skip

    def taylor(u, tips):
        eig = S._eig(problem, 0.8, 0.6)
        return taylor_loglik(u, S._tip_coordinates(tips, eig, True), problem, eig)

    val, g, _ = jax.jit(taylor)(u, tips)
    g_fd = (ref[:, 2] - ref[:, 0]) / (2 * S._FD)
    print(f"Taylor mode (value, g, h exact):  {best(jax.jit(taylor), u, tips, repeat=rep):.2f} ms"
          f"  (max |value diff| {float(jnp.max(jnp.abs(val - ref[:, 1]))):.1e}, "
          f"max |g - central diff| {float(jnp.max(jnp.abs(g - g_fd))):.1e})")  # fmt: skip

    def padded(u3, tips):
        to_state, to_eig, lam = S._eig(problem, 0.8, 0.6)
        pad = 64 - to_state.shape[0]
        eig = (jnp.pad(to_state, ((0, pad), (0, pad))), jnp.pad(to_eig, ((0, pad), (0, pad))),
               jnp.pad(lam, (0, pad)))  # fmt: skip
        wide = jnp.pad(tips, ((0, 0), (0, 0), (0, pad)))
        prob = type(problem)(problem.syn, problem.nonsyn, jnp.pad(problem.frequencies, (0, pad)),
                             problem.times, problem.background, problem.operations)  # fmt: skip
        return S._batch_loglik(u3, S._tip_coordinates(wide, eig, True), prob, eig, True)

    diff = float(jnp.max(jnp.abs(jax.jit(padded)(u3, tips) - ref)))
    print(f"states padded 61 -> 64:           {best(jax.jit(padded), u3, tips, repeat=rep):.2f} ms"
          f"  (max |diff| {diff:.1e})")  # fmt: skip

    rows = 3 * n
    for size in (61, 64):
        x, mat = jnp.ones((rows, size)), jnp.ones((size, size))
        chain = jax.jit(lambda x, m: lax.fori_loop(0, 50, lambda i, x: (x @ m) * 1e-2, x))
        ms = best(chain, x, mat, repeat=rep) / 50
        print(f"bare product [{rows}, {size}] x [{size}, {size}]: {1e3 * ms:.0f} us, "
              f"{2 * rows * size * size / ms / 1e6:.1f} GFLOP/s; the pass does {3 * len(ops)} "
              f"of them")  # fmt: skip


def _without_exp(fn, *args):
    """``fn`` with ``jnp.exp`` inside ``site_fits`` replaced by ``1 + x`` while tracing."""
    real = S.jnp
    S.jnp = type("NoExp", (), {"__getattr__": lambda self, k: getattr(real, k),
                               "exp": staticmethod(lambda x: 1.0 + x)})()  # fmt: skip
    try:
        return fn(*args)
    finally:
        S.jnp = real


if __name__ == "__main__":
    main()
