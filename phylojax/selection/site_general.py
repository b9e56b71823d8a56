"""FEL per-site fits, general path: nuisance ``beta`` on background branches and/or ``--srv No``.

Every site is fitted at once (``vmap``) by optax's L-BFGS on the logarithms of its rates, started
from the best point of a grid:

* **Grid start.** Every grid point ``(alpha, beta_test, beta_background)`` has its two
  eigensystems shared by *all* sites, so the grid costs two ``eigh`` per point and one
  matrix-matrix product per branch for all sites together (DESIGN.md §3). Exact zeros
  (the ``alpha = 0`` / ``beta = 0`` boundaries) are grid values.
* **Refinement.** ``optax.lbfgs`` (zoom line search) per site, with one ``eigh`` per matrix and
  evaluation. Gradients never form a transition matrix: the site matrix is
  ``S = S0 + U E U^T`` with ``E = 0`` in value, and ``U exp((Lambda + E) t) U^T v`` has the
  Daleckii-Krein JVP ``U (F(t) o dE) U^T v`` (``F`` the divided differences of ``e^{lambda t}``,
  finite at repeated eigenvalues), so a derivative costs O(state^2) per branch, like the value.
* **Boundaries.** Rates below ``1e-4`` after refinement are also tried at exactly zero, and the
  null's MLE is a start of the alternative, so ``l_alt >= l_null`` and nothing stalls on
  ``beta = 0`` / ``alpha = 0``.

Parameter layout ``x`` (raw rates, each in ``[0, 10000]``), by ``(srv, nuisance, null)``:
alternative ``(alpha, beta[, beta_bg])`` / ``(beta[, beta_bg])`` with alpha = 1 under ``srv No``;
null ``(rate[, beta_bg])`` / ``([beta_bg])`` (the ``srv No`` null is ``alpha = beta = 1``, nested).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..host import to_device
from ..models.eigen import _divided_differences
from .site_fits import UPPER, SiteFits, SiteProblem, site_log_likelihood

_X_MIN, _X_MAX = math.log(1e-10), math.log(UPPER)
_SNAP = 1e-4  # rates below this are also tried at exactly 0


# --------------------------------------------------------------------------- kernel
@jax.custom_jvp
def _apply(e, lam, u, t, v):
    """``U exp((Lambda + E) t) U^T v`` at ``E = 0`` (the value ignores ``E``)."""
    return u @ (jnp.exp(lam * t) * (u.T @ v))


@_apply.defjvp
def _apply_jvp(primals, tangents):
    e, lam, u, t, v = primals
    de, _, _, _, dv = tangents  # lam, u are stop_gradient'ed and t is data: zero tangents
    w = u.T @ v
    ex = jnp.exp(lam * t)
    out = u @ (ex * w)
    d_out = u @ ((_divided_differences(lam, t) * de) @ w + ex * (u.T @ dv))
    return out, d_out


def _symmetric(problem: SiteProblem, a, b):
    """``S = Pi^1/2 Q Pi^-1/2`` for ``Q = (a R_S + b R_N) diag(pi)`` with zero row sums
    (``R_S``, ``R_N`` have zero diagonals)."""
    pi = jnp.asarray(problem.frequencies)
    m = a * jnp.asarray(problem.syn) + b * jnp.asarray(problem.nonsyn)
    sq = jnp.sqrt(pi)
    return m * (sq[:, None] * sq[None, :]) - jnp.diag(m @ pi)


def _eigen(problem, a, b):
    """``(lam, U, E)``: ``eigh`` of ``stop_gradient(S)`` and the perturbation ``U^T (S - S0) U``
    (zero in value; carries the derivative)."""
    s = _symmetric(problem, a, b)
    s0 = lax.stop_gradient(s)
    lam, u = jnp.linalg.eigh(s0)
    return lam, u, u.T @ (s - s0) @ u


def _site_loglik(tip, eigs, problem: SiteProblem):
    """Log-likelihood of one site; ``eigs`` = ``(lam, U, E)`` stacked ``[2, ...]`` for
    (test, background) branches. Scaled pruning (:func:`.site_fits.site_log_likelihood`) with
    ``P_n x = Pi^-1/2 U e^{lam t} U^T Pi^1/2 x``."""
    lam, u, e = eigs
    pi = jnp.asarray(problem.frequencies)
    sq = jnp.sqrt(pi)
    times = jnp.asarray(problem.times)
    which = jnp.asarray(problem.background).astype(jnp.int32)

    def top(n, x):
        k = which[n]
        return _apply(e[k], lam[k], u[k], times[n], sq * x) / sq

    return site_log_likelihood(tip, jnp.asarray(problem.operations), top, pi)


def _rates(x, srv: bool, nuisance: bool, null: bool):
    """Raw parameter vector -> ``(alpha, beta_test, beta_background)``."""
    one = jnp.ones((), x.dtype)
    if srv:
        a = x[0]
        b = a if null else x[1]
        k = 1 if null else 2
    else:
        a = one
        b = one if null else x[0]
        k = 0 if null else 1
    return a, b, (x[k] if nuisance else b)


def _eigs_for(problem, rates):
    a, b, c = rates
    return jax.tree.map(lambda p, q: jnp.stack([p, q]), _eigen(problem, a, b), _eigen(problem, a, c))


def _loglik_raw(x, tip, problem, config):
    return _site_loglik(tip, _eigs_for(problem, _rates(x, *config)), problem)


# --------------------------------------------------------------------------- driver
def _grid_values(points, tips, problem, config):
    """``[site, point]`` log-likelihoods; each point's eigensystems shared by all sites."""

    def one(x):
        eigs = _eigs_for(problem, _rates(x, *config))
        return jax.vmap(lambda t: _site_loglik(t, eigs, problem))(tips)

    return lax.map(one, points).T


def _forward_mode(f):
    """``f`` with its reverse-mode derivative computed by forward mode (``jacfwd``): with at most
    three parameters per site that is cheaper than a reverse pass through the pruning scan."""

    @jax.custom_vjp
    def g(y):
        return f(y)

    def fwd(y):
        jac, value = jax.jacfwd(lambda z: (f(z), f(z)), has_aux=True)(y)
        return value, jac

    g.defvjp(fwd, lambda jac, ct: (ct * jac,))
    return g


_STEPS = np.array([1.0, 0.4, 0.1, 0.02])


def _refine(x0, tip, problem, config, iterations):
    """Quasi-Newton refinement of one site on ``y = log x``; returns ``(x_raw, loglik)``.

    optax's L-BFGS transformation (:func:`optax.scale_by_lbfgs`) gives the search direction;
    the step is the best of a fixed set of step lengths (plus short gradient steps), all
    evaluated at once, so the loop has no data-dependent trip count (vmapped line searches with
    a batched ``while`` predicate deadlocked XLA:CPU in jaxlib 0.10). Steps are taken only when
    they improve, so the result is never worse than the start.
    """

    def f(y):
        return -_loglik_raw(jnp.exp(jnp.clip(y, _X_MIN, _X_MAX)), tip, problem, config)

    value_and_grad = jax.value_and_grad(f)

    import optax  # here, not at the top: importing optax is ~70 ms of every `phylojax fel` start,
    # and only the background-branch and general paths use it

    tx = optax.scale_by_lbfgs(memory_size=6)
    steps = jnp.asarray(_STEPS)
    y0 = jnp.log(jnp.clip(x0, math.exp(_X_MIN), UPPER))
    f0, g0 = value_and_grad(y0)

    def body(_, carry):
        y, fy, g, state = carry
        direction, new_state = tx.update(g, state, y)
        direction = jnp.where(jnp.all(jnp.isfinite(direction)), direction, g)
        gnorm = jnp.maximum(jnp.linalg.norm(g), 1e-12)
        cands = jnp.concatenate([y[None] - steps[:, None] * direction[None],
                                 y[None] - (steps[:2, None] / gnorm) * g[None]])  # fmt: skip
        # and the smallest rate pushed onto its zero boundary (log space approaches it slowly)
        low = y.at[jnp.argmin(y)].set(_X_MIN)
        cands = jnp.clip(jnp.concatenate([cands, low[None]]), _X_MIN - 1.0, _X_MAX + 1.0)
        vals = jax.vmap(f)(cands)
        vals = jnp.where(jnp.isfinite(vals), vals, jnp.inf)
        k = jnp.argmin(vals)
        ok = vals[k] < fy
        y_new = jnp.where(ok, cands[k], y)
        f_new, g_new = value_and_grad(y_new)
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_state, state)
        return y_new, jnp.where(ok, f_new, fy), jnp.where(ok, g_new, g), state

    y, fy, _, _ = lax.fori_loop(0, iterations, body, (y0, f0, g0, tx.init(y0)))
    x = jnp.exp(jnp.clip(y, _X_MIN, _X_MAX))
    fx = -fy
    # boundary snap: rates that went to (almost) zero are tried at exactly zero
    snapped = jnp.where(x < _SNAP, 0.0, x)
    fs = _loglik_raw(snapped, tip, problem, config)
    take = fs >= fx
    return jnp.where(take, snapped, x), jnp.where(take, fs, fx)


def _fit(tips, points, extra_start, problem, config, iterations):
    """Refine from the best grid point and, when given, from the per-site start
    ``extra_start [site, dim]`` too (the null's MLE for the alternative); the best result."""
    grid = _grid_values(points, tips, problem, config)
    x0 = points[jnp.argmax(grid, axis=1)]
    f0 = jnp.max(grid, axis=1)
    # sites one after another (lax.map): vmapped, the refinement loop deadlocked XLA:CPU
    # (jaxlib 0.10) at run time on CD2 -- threads waiting on a futex, no CPU use
    def refine(x, t):
        return lax.map(lambda a: _refine(a[0], a[1], problem, config, iterations), (x, t))
    x, f = refine(x0, tips)
    if extra_start is not None:
        xe, fe = refine(extra_start, tips)
        x, f = jnp.where((fe > f)[:, None], xe, x), jnp.maximum(fe, f)
    better = f >= f0
    return jnp.where(better[:, None], x, x0), jnp.maximum(f, f0)


# The problem's arrays are closed over (compile-time constants), one compiled function per
# problem and configuration: with them as traced arguments, XLA:CPU (jaxlib 0.10) deadlocks at run
# time in the vmapped L-BFGS line search (reproduced on CD2; no CPU use, waiting on a futex).
_CACHE: dict = {}


def _compiled(kind: str, problem: SiteProblem, config, iterations: int = 0):
    key = (kind, id(problem), config, iterations)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is problem:
        return hit[1]
    if kind == "grid":
        fn = jax.jit(lambda points, tips: _grid_values(points, tips, problem, config))
    else:
        fn = jax.jit(lambda tips, points, extra: _fit(tips, points, extra, problem, config, iterations))
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[key] = (problem, fn)
    return fn


def _grid(dim: int, srv: bool, nuisance: bool, null: bool) -> np.ndarray:
    """Start grid in raw rates (exact zeros included)."""
    if dim == 0:
        return np.zeros((1, 0))
    values = np.array([0.0, 0.1, 0.35, 1.0, 2.5, 7.0])
    if dim == 3:  # alpha, beta, beta_bg: coarser in the nuisance
        axes = [values, values, np.array([0.0, 0.3, 1.0, 3.0])]
    else:
        axes = [values] * dim
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim)
    if srv and null:  # the common rate must be positive for a variable site
        mesh = mesh[mesh[:, 0] > 0]
    return mesh


def fit_sites_general(problem: SiteProblem, tips, *, srv: bool = True, iterations: int = 20,
                      chunk: int = 8) -> SiteFits:  # fmt: skip
    """Null and alternative fits for every site (``tips [site, taxon, state]``)."""
    tips = np.asarray(tips)
    site_count = tips.shape[0]
    nuis = bool(problem.has_background)
    null_cfg, alt_cfg = (srv, nuis, True), (srv, nuis, False)
    null_dim = int(srv) + int(nuis)
    alt_dim = (2 if srv else 1) + int(nuis)

    def chunks(run):
        outs = []
        for lo in range(0, site_count, chunk):
            part = tips[lo : lo + chunk]
            pad = (-part.shape[0]) % 8  # bucket the site axis a little (fewer compilations)
            if pad:
                part = np.concatenate([part, np.repeat(part[:1], pad, 0)])
            x, f = run(to_device(part), lo, part.shape[0] - pad)
            outs.append((np.asarray(x)[: part.shape[0] - pad], np.asarray(f)[: part.shape[0] - pad]))
        return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])

    # null
    if null_dim == 0:  # srv No without nuisance: alpha = beta = 1, nothing to fit
        x0 = np.zeros((site_count, 0))
        grid = _compiled("grid", problem, null_cfg)
        f0 = chunks(lambda t, lo, n: (jnp.zeros((t.shape[0], 0)), grid(jnp.zeros((1, 0)), t)[:, 0]))[1]
    else:
        pts = to_device(_grid(null_dim, *null_cfg))
        fit = _compiled("fit", problem, null_cfg, iterations)
        x0, f0 = chunks(lambda t, lo, n: fit(t, pts, None))
    # the null's MLE as a start of the alternative (nested: l_alt >= l_null)
    if srv:
        as_alt = np.column_stack([x0[:, 0], x0[:, 0]] + ([x0[:, 1]] if nuis else []))
    else:
        as_alt = np.column_stack([np.ones(site_count)] + ([x0[:, 0]] if nuis else []))
    pts = to_device(_grid(alt_dim, *alt_cfg))
    fit = _compiled("fit", problem, alt_cfg, iterations)

    def run_alt(t, lo, n):
        extra = as_alt[lo : lo + n]
        extra = np.concatenate([extra, np.repeat(extra[:1], t.shape[0] - n, 0)])
        return fit(t, pts, to_device(extra))

    xa, fa = chunks(run_alt)
    use_null = f0 > fa
    xa = np.where(use_null[:, None], as_alt, xa)
    fa = np.maximum(fa, f0)
    nan = np.full(site_count, np.nan)
    if srv:
        alpha, beta = xa[:, 0], xa[:, 1]
        beta_bg = xa[:, 2] if nuis else nan
        null_rate, null_bg = x0[:, 0], (x0[:, 1] if nuis else nan)
    else:
        alpha, beta = np.ones(site_count), xa[:, 0]
        beta_bg = xa[:, 1] if nuis else nan
        null_rate, null_bg = np.ones(site_count), (x0[:, 0] if nuis else nan)
    return SiteFits(alpha, beta, beta_bg, null_rate, null_bg, fa, f0)
