"""FEL per-site fits: alternative (alpha, beta free) and null (alpha = beta) for every site at once.

With the global MG94×REV fit fixed, site ``s`` has transition matrices
``P_b = exp(t_b (alpha Q_S + beta Q_N))`` (Kosakovsky Pond & Frost 2005; DESIGN.md §3 step 5).
``Q_S = R_S diag(pi)`` and ``Q_N = R_N diag(pi)`` are pi-reversible, so every site matrix has one
symmetric eigensystem. Two optimisers:

* **Fast path** (all branches tested, ``--srv Yes``): write ``(alpha, beta) = r (cos phi, sin phi)``.
  For fixed ``phi`` the eigensystem of ``cos phi R_S + sin phi R_N`` is shared by every branch and
  ``r`` only rescales time, so ``max_r`` is a cheap 1-D Newton in ``log r`` with exact derivatives
  and ``P v = V (e^{lam r t} * (V^-1 v))`` (no 61x61 matrix products per branch). The profile over
  ``phi`` in ``[0, pi/2]`` is maximised by a grid on which eigensystems are shared by *all* sites
  (so the per-site work is BLAS-3), then golden-section refinement with one ``eigh`` per site and
  step. Both boundaries (``beta = 0`` at ``phi = 0``, ``alpha = 0`` at ``phi = pi/2``) are ordinary
  points of the search, so nothing stalls there. The null is ``phi = pi/4``: one eigensystem for
  all sites.
* **General path** (nuisance ``beta`` on background branches, ``--srv No``): projected Newton in
  the raw bounded parameters with exact gradients through
  :func:`~phylojax.models.eigen.transition_probs` (Daleckii–Krein JVP, finite at the repeated
  eigenvalues that appear on the boundaries), a finite-difference Hessian of the exact gradient,
  and a multi-step line search; started from the best point of a small grid.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from ..models.eigen import eigensystem, transition_probs

UPPER = 10000.0  # HyPhy's bound on every rate parameter
_U_MIN, _U_MAX = math.log(1e-9), math.log(UPPER * math.sqrt(2.0))
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class SiteProblem(eqx.Module):
    """Everything fixed during the site fits (arrays, numpy or JAX).

    Attributes:
        syn, nonsyn: ``[state, state]`` symmetric exchangeabilities ``R_S``, ``R_N`` (global θ and
            CF3x4 rate frequencies folded in, unnormalised).
        frequencies: ``[state]`` codon frequencies pi.
        times: ``[node]`` branch parameter ``t_b`` of the binary tree (0 at the root and at
            zero-length resolution branches).
        background: ``bool[node]`` True on branches not tested (nuisance beta).
        operations: ``int32[op, 3]`` postorder ``[parent, child1, child2]``.
        has_background: static; True when some background branch has a positive length.
    """

    syn: Float[Array, "state state"]
    nonsyn: Float[Array, "state state"]
    frequencies: Float[Array, " state"]
    times: Float[Array, " node"]
    background: Array
    operations: Array
    has_background: bool = eqx.field(static=True, default=False)


# --------------------------------------------------------------------------- kernel
def site_log_likelihood(tips: Float[Array, "taxon state"], operations, top, frequencies) -> Array:
    """Log-likelihood of one site; ``top(node, v)`` gives ``P_node @ v`` (scaled pruning)."""
    leaf_count, state_count = tips.shape
    op_count = operations.shape[0]
    inner = jnp.zeros((op_count, state_count), tips.dtype)
    scalers = jnp.zeros(op_count, tips.dtype)

    def fetch(inner, scalers, n):
        k = jnp.maximum(n - leaf_count, 0)
        is_tip = n < leaf_count
        tip = tips[jnp.minimum(n, leaf_count - 1)]
        return jnp.where(is_tip, tip, inner[k]), jnp.where(is_tip, 0.0, scalers[k])

    def step(carry, op):
        inner, scalers = carry
        da, sa = fetch(inner, scalers, op[1])
        db, sb = fetch(inner, scalers, op[2])
        v = top(op[1], da) * top(op[2], db)
        m = jnp.max(v)
        safe = jnp.where(m > 0, m, 1.0)
        i = op[0] - leaf_count
        inner = inner.at[i].set(v / safe)
        scalers = scalers.at[i].set(sa + sb + jnp.log(safe))
        return (inner, scalers), None

    (inner, scalers), _ = lax.scan(step, (inner, scalers), operations)
    return jnp.log(jnp.maximum(frequencies @ inner[-1], 1e-300)) + scalers[-1]


def _eig(problem, a, b):
    """Eigensystem of ``(a R_S + b R_N) diag(pi)`` as ``(V, V^-1, lam)``."""
    pi = jnp.asarray(problem.frequencies)
    m = a * jnp.asarray(problem.syn) + b * jnp.asarray(problem.nonsyn)
    q = m * pi[None, :]
    q = q - jnp.diag(q.sum(1))
    e = eigensystem(q, pi)
    return e.eigenvectors, e.inverse_eigenvectors, e.eigenvalues


# --------------------------------------------------------------------------- fast path
def _scaled_loglik(u, tips, problem, eig):
    v, vinv, lam = eig
    s = jnp.exp(u) * jnp.asarray(problem.times)

    def top(n, x):
        return v @ (jnp.exp(lam * s[n]) * (vinv @ x))

    return site_log_likelihood(tips, jnp.asarray(problem.operations), top, jnp.asarray(problem.frequencies))


def _newton_log_scale(u, tips, problem, eig, steps: int):
    """Maximise over ``u = log r`` (safeguarded Newton); returns ``(u_best, f_best)``."""

    def f(x):
        return _scaled_loglik(x, tips, problem, eig)

    def derivs(x):
        def first(y):
            return jax.jvp(f, (y,), (jnp.ones_like(y),))

        (val, g), (_, h) = jax.jvp(first, (x,), (jnp.ones_like(x),))
        return val, g, h

    def body(_, state):
        x, best_x, best_f = state
        val, g, h = derivs(x)
        better = val >= best_f
        best_x = jnp.where(better, x, best_x)
        best_f = jnp.where(better, val, best_f)
        newton = jnp.where(h < 0, -g / jnp.where(h < 0, h, -1.0), jnp.sign(g) * 1.0)
        newton = jnp.clip(newton, -2.0, 2.0)
        x_new = jnp.where(better, x + newton, 0.5 * (x + best_x))
        return jnp.clip(x_new, _U_MIN, _U_MAX), best_x, best_f

    x, best_x, best_f = lax.fori_loop(0, steps, body, (u, u, -jnp.inf))
    val = f(x)
    better = val >= best_f
    return jnp.where(better, x, best_x), jnp.where(better, val, best_f)


def _profile_shared(phi, u0, tips, problem, steps):
    """Profile over ``r`` at one ``phi`` for every site; eigensystem shared by all sites."""
    eig = _eig(problem, jnp.cos(phi), jnp.sin(phi))
    fn = jax.vmap(lambda u, t: _newton_log_scale(u, t, problem, eig, steps))
    return fn(u0, tips)


def _profile_per_site(phi, u0, tips, problem, steps):
    """Profile over ``r`` with a different ``phi`` (and eigensystem) per site."""

    def one(p, u, t):
        eig = _eig(problem, jnp.cos(p), jnp.sin(p))
        return _newton_log_scale(u, t, problem, eig, steps)

    return jax.vmap(one)(phi, u0, tips)


@dataclasses.dataclass(frozen=True)
class SiteFits:
    """Per-site MLEs (numpy, one entry per site pattern fitted).

    ``alpha``, ``beta``: alternative MLE; ``beta_background`` nuisance (nan when absent);
    ``null_rate``: alpha = beta under the null (nuisance under the null in
    ``null_beta_background``); ``alt_loglik``, ``null_loglik`` per-site log-likelihoods.
    """

    alpha: np.ndarray
    beta: np.ndarray
    beta_background: np.ndarray
    null_rate: np.ndarray
    null_beta_background: np.ndarray
    alt_loglik: np.ndarray
    null_loglik: np.ndarray

    @property
    def lrt(self) -> np.ndarray:
        return np.maximum(2.0 * (self.alt_loglik - self.null_loglik), 0.0)


def fit_sites_fast(problem: SiteProblem, tips, *, grid_size: int = 13, golden_steps: int = 12):
    """Fast path (no nuisance, srv Yes). ``tips``: ``[site, taxon, state]``. Returns SiteFits."""
    tips = jnp.asarray(tips)
    site_count = tips.shape[0]
    zeros = jnp.zeros(site_count)
    shared, per_site = _SHARED, _PER_SITE
    quarter = jnp.asarray(math.pi / 4)
    # Null: phi = pi/4, alpha = beta = r / sqrt(2).
    u_null, f_null = shared(quarter, zeros, tips, problem, 20)
    # Grid over phi, warm-started from the null scale.
    phis = np.linspace(0.0, math.pi / 2, grid_size)
    grid_u, grid_f = [], []
    for phi in phis:
        u, f = shared(jnp.asarray(phi), u_null, tips, problem, 8)
        grid_u.append(u)
        grid_f.append(f)
    grid_u, grid_f = jnp.stack(grid_u, 1), jnp.stack(grid_f, 1)
    best = jnp.argmax(grid_f, axis=1)
    width = phis[1] - phis[0]
    phi_best = jnp.asarray(phis)[best]
    u_best = jnp.take_along_axis(grid_u, best[:, None], 1)[:, 0]
    f_best = jnp.take_along_axis(grid_f, best[:, None], 1)[:, 0]
    lo = jnp.clip(phi_best - width, 0.0, math.pi / 2)
    hi = jnp.clip(phi_best + width, 0.0, math.pi / 2)
    # Golden-section on the profile over phi inside [lo, hi].
    c = hi - _GOLDEN * (hi - lo)
    d = lo + _GOLDEN * (hi - lo)
    uc, fc = per_site(c, u_best, tips, problem, 4)
    ud, fd = per_site(d, u_best, tips, problem, 4)
    for _ in range(golden_steps):
        left = fc >= fd  # maximum in [lo, d]
        lo, hi = jnp.where(left, lo, c), jnp.where(left, d, hi)
        new_c = hi - _GOLDEN * (hi - lo)
        new_d = lo + _GOLDEN * (hi - lo)
        probe = jnp.where(left, new_c, new_d)
        u_start = jnp.where(left, uc, ud)
        up, fp = per_site(probe, u_start, tips, problem, 3)
        c, uc, fc, d, ud, fd = (
            jnp.where(left, probe, new_c), jnp.where(left, up, ud), jnp.where(left, fp, fd),
            jnp.where(left, c, probe), jnp.where(left, uc, up), jnp.where(left, fc, fp),
        )  # fmt: skip
    cand_phi = jnp.where(fc >= fd, c, d)
    cand_u = jnp.where(fc >= fd, uc, ud)
    cand_f = jnp.maximum(fc, fd)
    # Snap to a boundary (beta = 0 or alpha = 0) when the optimum is there.
    snap = jnp.where(cand_phi < 1e-3, 0.0, jnp.where(cand_phi > math.pi / 2 - 1e-3, math.pi / 2, cand_phi))
    us, fs = per_site(snap, cand_u, tips, problem, 6)
    take = fs >= cand_f
    cand_phi, cand_u, cand_f = (jnp.where(take, snap, cand_phi), jnp.where(take, us, cand_u),
                                jnp.maximum(fs, cand_f))  # fmt: skip
    take = f_best > cand_f
    phi = jnp.where(take, phi_best, cand_phi)
    u = jnp.where(take, u_best, cand_u)
    f_alt = jnp.maximum(f_best, cand_f)
    r = jnp.exp(u)
    alpha, beta = r * jnp.cos(phi), r * jnp.sin(phi)
    # alpha exactly 0 at phi = pi/2 (cos(pi/2) ~ 6e-17)
    alpha = jnp.where(phi >= math.pi / 2, 0.0, alpha)
    # The null is nested in the alternative.
    use_null = f_null > f_alt
    null_rate = jnp.exp(u_null) / math.sqrt(2.0)
    alpha = jnp.where(use_null, null_rate, alpha)
    beta = jnp.where(use_null, null_rate, beta)
    f_alt = jnp.maximum(f_alt, f_null)
    nan = np.full(site_count, np.nan)
    return SiteFits(
        alpha=np.asarray(alpha), beta=np.asarray(beta), beta_background=nan,
        null_rate=np.asarray(null_rate), null_beta_background=nan,
        alt_loglik=np.asarray(f_alt), null_loglik=np.asarray(f_null),
    )  # fmt: skip


_SHARED = jax.jit(_profile_shared, static_argnums=(4,))
_PER_SITE = jax.jit(_profile_per_site, static_argnums=(4,))


def profile_dnds(problem: SiteProblem, tips, phi, u0, steps: int = 6):
    """Profile log-likelihood ``max_r`` at per-site angles ``phi`` (dN/dS = tan phi)."""
    return _PER_SITE(
        jnp.asarray(phi), jnp.asarray(u0), jnp.asarray(tips), problem, steps
    )


# --------------------------------------------------------------------------- general path
def _rates(x, kind: str):
    """Map free parameters to ``(alpha, beta_test, beta_background)``."""
    one = jnp.ones((), x.dtype)
    return {
        "alt": lambda: (x[0], x[1], x[2] if x.shape[0] > 2 else x[1]),
        "null": lambda: (x[0], x[0], x[1] if x.shape[0] > 1 else x[0]),
        "alt_fixed_alpha": lambda: (one, x[0], x[1] if x.shape[0] > 1 else x[0]),
        "null_fixed_alpha": lambda: (one, one, x[0] if x.shape[0] > 0 else one),
    }[kind]()


def _general_loglik(x, tips, problem, kind):
    alpha, beta, beta_bg = _rates(x, kind)
    times = jnp.asarray(problem.times)
    pi = jnp.asarray(problem.frequencies)

    def probs(a, b):
        m = a * jnp.asarray(problem.syn) + b * jnp.asarray(problem.nonsyn)
        q = m * pi[None, :]
        q = q - jnp.diag(q.sum(1))
        return transition_probs(eigensystem(q, pi), times)

    p = probs(alpha, beta)
    if problem.has_background:
        p = jnp.where(jnp.asarray(problem.background)[:, None, None], probs(alpha, beta_bg), p)

    def top(n, v):
        return p[n] @ v

    return site_log_likelihood(tips, jnp.asarray(problem.operations), top, pi)


def _projected_newton(x0, tips, problem, kind, iterations: int):
    dim = x0.shape[0]

    def f(x):
        return _general_loglik(x, tips, problem, kind)

    grad = jax.jacfwd(f)
    eye = jnp.eye(dim)
    steps = jnp.array([1.0, 0.5, 0.2, 0.05, 0.01])

    def body(_, state):
        x, fx = state
        g = grad(x)
        h_step = 1e-5 * jnp.maximum(x, 1e-2)
        cols = []
        for i in range(dim):
            e = eye[i] * h_step[i]
            up = jnp.minimum(x + e, UPPER)
            cols.append((grad(up) - g) / (up[i] - x[i]))
        hess = jnp.stack(cols, 1)
        hess = 0.5 * (hess + hess.T)
        active = ((x <= 0) & (g < 0)) | ((x >= UPPER) & (g > 0))
        free = ~active
        neg = jnp.where(free[:, None] & free[None, :], -hess, eye)
        w, vecs = jnp.linalg.eigh(neg)
        w = jnp.maximum(w, 1e-8 * jnp.maximum(jnp.max(jnp.abs(w)), 1.0))
        direction = vecs @ ((vecs.T @ jnp.where(free, g, 0.0)) / w)
        direction = jnp.where(free, direction, 0.0)
        cand = jnp.clip(x[None, :] + steps[:, None] * direction[None, :], 0.0, UPPER)
        # also try the plain projected gradient step (helps far from the optimum)
        vals = jax.vmap(f)(cand)
        k = jnp.argmax(vals)
        better = vals[k] > fx
        return jnp.where(better, cand[k], x), jnp.where(better, vals[k], fx)

    return lax.fori_loop(0, iterations, body, (x0, f(x0)))


def _general_fit(tips, starts, problem, kind, iterations):
    def one(t):
        vals = jax.vmap(lambda s: _general_loglik(s, t, problem, kind))(starts)
        x0 = starts[jnp.argmax(vals)]
        return _projected_newton(x0, t, problem, kind, iterations)

    return jax.vmap(one)(tips)


def _grid(dim, kind):
    base = np.array([0.0, 0.2, 0.6, 1.2, 2.5, 6.0])
    if dim == 0:
        return np.zeros((1, 0))
    mesh = np.stack(np.meshgrid(*([base] * dim), indexing="ij"), -1).reshape(-1, dim)
    if kind in ("alt", "null"):
        mesh = mesh[mesh[:, 0] > 0] if dim == 1 else mesh
    return mesh


def fit_sites_general(problem: SiteProblem, tips, *, srv: bool = True, iterations: int = 25,
                      chunk: int = 64) -> SiteFits:  # fmt: skip
    """General path (nuisance beta on background branches and/or ``srv`` off)."""
    tips = jnp.asarray(tips)
    site_count = tips.shape[0]
    nuis = problem.has_background
    alt_kind, null_kind = ("alt", "null") if srv else ("alt_fixed_alpha", "null_fixed_alpha")
    alt_dim = (2 if srv else 1) + int(nuis)
    null_dim = (1 if srv else 0) + int(nuis)
    fit = _GENERAL
    results = {}
    for kind, dim in ((null_kind, null_dim), (alt_kind, alt_dim)):
        starts = jnp.asarray(_grid(dim, kind))
        xs, fs = [], []
        for lo in range(0, site_count, chunk):
            part = tips[lo : lo + chunk]
            pad = chunk - part.shape[0]
            if pad:
                part = jnp.concatenate([part, jnp.repeat(part[:1], pad, 0)])
            x, fv = fit(part, starts, problem, kind, iterations if dim else 0)
            xs.append(np.asarray(x)[: chunk - pad])
            fs.append(np.asarray(fv)[: chunk - pad])
        results[kind] = (np.concatenate(xs), np.concatenate(fs))
    xa, fa = results[alt_kind]
    x0, f0 = results[null_kind]
    null_as_alt = {
        "alt": lambda: np.column_stack([x0[:, 0], x0[:, 0]] + ([x0[:, 1]] if nuis else [])),
        "alt_fixed_alpha": lambda: np.column_stack([np.ones(site_count)] + ([x0[:, 0]] if nuis else [])),
    }[alt_kind]()  # fmt: skip
    use_null = f0 > fa
    xa = np.where(use_null[:, None], null_as_alt, xa)
    fa = np.maximum(fa, f0)
    if srv:
        alpha, beta = xa[:, 0], xa[:, 1]
        beta_bg = xa[:, 2] if nuis else np.full(site_count, np.nan)
        null_rate = x0[:, 0]
        null_bg = x0[:, 1] if nuis else np.full(site_count, np.nan)
    else:
        alpha, beta = np.ones(site_count), xa[:, 0]
        beta_bg = xa[:, 1] if nuis else np.full(site_count, np.nan)
        null_rate = np.ones(site_count)
        null_bg = x0[:, 0] if nuis else np.full(site_count, np.nan)
    return SiteFits(alpha, beta, beta_bg, null_rate, null_bg, fa, f0)


_GENERAL = jax.jit(_general_fit, static_argnums=(3, 4))
