"""FEL per-site fits: alternative (alpha, beta free) and null (alpha = beta) for every site at once.

With the global MG94×REV fit fixed, site ``s`` has transition matrices
``P_b = exp(t_b (alpha Q_S + beta Q_N))`` (Kosakovsky Pond & Frost 2005; DESIGN.md §3 step 5).
``Q_S = R_S diag(pi)`` and ``Q_N = R_N diag(pi)`` are pi-reversible, so every site matrix has one
symmetric eigensystem. Two optimisers:

* **Fast path** (all branches tested, ``--srv Yes``): write ``(alpha, beta) = r (cos phi, sin phi)``.
  For fixed ``phi`` the eigensystem of ``cos phi R_S + sin phi R_N`` is shared by every branch and
  ``r`` only rescales time, so ``max_r`` is a cheap 1-D Newton in ``log r`` (central differences
  from one batched pruning pass) with ``P v = V (e^{lam r t} * (V^-1 v))``. The profile over
  ``phi = atan(beta/alpha)`` is scanned on a grid log-spaced in ``beta/alpha`` (plus both
  boundaries ``beta = 0`` and ``alpha = 0``) whose eigensystems are shared by *all* sites (one
  matrix-matrix product per branch for all sites), ``r`` continued along the grid and grid
  points ranked by the Newton model's maximum; then a few rounds of successive parabolic
  interpolation in ``log(beta/alpha)`` with one ``eigh`` per site and round. Partials are kept
  in eigen coordinates (3 matrix products per pruning operation instead of 4; tips transformed
  once per eigensystem). The best evaluated point is reported, so boundaries are ordinary
  candidates and nothing stalls there. The null is ``phi = pi/4``: one eigensystem for all sites. The whole path
  is one jitted function (compiled once per problem shape).
* **General path** (nuisance ``beta`` on background branches, ``--srv No``): see
  :mod:`.site_general` (grid start on shared eigensystems, then optax L-BFGS per site).
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

from ..models.eigen import eigensystem

UPPER = 10000.0  # HyPhy's bound on every rate parameter
_U_MIN, _U_MAX = math.log(1e-9), math.log(UPPER * math.sqrt(2.0))


def _u_max(phi):
    """Largest ``u = log r`` with ``alpha = r cos phi`` and ``beta = r sin phi`` both within
    ``UPPER`` (``_U_MAX`` at ``phi = pi/4``, ``log UPPER`` on the boundaries)."""
    return math.log(UPPER) - jnp.log(jnp.maximum(jnp.cos(phi), jnp.sin(phi)))


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
    """Eigensystem of ``(a R_S + b R_N) diag(pi)`` as ``(to_state, to_eig, lam)``.

    ``to_eig[i, j] = (V^-1)[j, i]`` and ``to_state[j, i] = V[i, j]``, so a row vector ``x`` of a
    partial goes to eigen coordinates as ``x @ to_eig`` and back as ``w @ to_state``; with a
    leading site axis the same layout makes the batched products contract the matrices' first
    axis (3x faster on XLA:CPU than contracting their last axis, measured for 161 x 61 x 61).
    """
    pi = jnp.asarray(problem.frequencies)
    m = a * jnp.asarray(problem.syn) + b * jnp.asarray(problem.nonsyn)
    q = m * pi[None, :]
    q = q - jnp.diag(q.sum(1))
    e = eigensystem(q, pi)
    return e.eigenvectors.T, e.inverse_eigenvectors.T, e.eigenvalues


def _product(mat, x, shared: bool):
    """``x [site, m, i] @ mat [i, j]`` (shared) or ``@ mat[site]`` (per site)."""
    if shared:
        return x @ mat
    return jnp.einsum("sij,smi->smj", mat, x)


def _tip_coordinates(tips, eig, shared: bool):
    """``V^-1 x`` of every tip, ``[site, taxon, state]``: computed once per eigensystem and reused
    for every scale and Newton step (tips do not depend on ``r``)."""
    return _product(eig[1], tips, shared)


# --------------------------------------------------------------------------- fast path
def _eigen_pruning(tip_w, operations, m: int, up, into_eig):
    """Scaled pruning with partials in eigen coordinates, ``m`` scales per site; returns the
    root's ``(partial [site, m, state], log scaler [site, m])``.

    ``up(n, w)``: eigen coordinates ``w`` at the bottom of branch ``n`` -> partial (state
    coordinates) at its top; ``into_eig(parent, x)``: a parent's partial -> its eigen coordinates.
    Tips ``tip_w [site, taxon, state]`` are already in eigen coordinates. The per-partial maximum
    is divided out and its log accumulated.
    """
    site_count, leaf_count, state_count = tip_w.shape
    op_count = operations.shape[0]

    def fetch(inner, scalers, n):
        is_tip = n < leaf_count
        tip = lax.dynamic_index_in_dim(tip_w, jnp.minimum(n, leaf_count - 1), 1, keepdims=False)
        k = jnp.maximum(n - leaf_count, 0)
        inn = lax.dynamic_index_in_dim(inner, k, 0, keepdims=False)
        sc = lax.dynamic_index_in_dim(scalers, k, 0, keepdims=False)
        return (jnp.where(is_tip, jnp.broadcast_to(tip[:, None, :], inn.shape), inn),
                jnp.where(is_tip, 0.0, sc))  # fmt: skip

    def step(carry, op):
        inner, scalers = carry
        wa, sa = fetch(inner, scalers, op[1])
        wb, sb = fetch(inner, scalers, op[2])
        x = up(op[1], wa) * up(op[2], wb)
        mx = jnp.max(x, axis=-1)
        safe = jnp.where(mx > 0, mx, 1.0)
        i = op[0] - leaf_count
        w = into_eig(op[0], x / safe[..., None])
        inner = lax.dynamic_update_index_in_dim(inner, w, i, 0)
        scalers = lax.dynamic_update_index_in_dim(scalers, sa + sb + jnp.log(safe), i, 0)
        return (inner, scalers), None

    inner = jnp.zeros((op_count, site_count, m, state_count), tip_w.dtype)
    scalers = jnp.zeros((op_count, site_count, m), tip_w.dtype)
    (inner, scalers), _ = lax.scan(step, (inner, scalers), operations)
    return inner[-1], scalers[-1]


def _batch_loglik(u, tip_w, problem, eig, shared: bool):
    """Site log-likelihoods at scales ``r = exp(u)``: ``u [site, m]``, ``tip_w [site, taxon,
    state]`` tips in eigen coordinates (:func:`_tip_coordinates`).

    ``eig = (to_state, to_eig, lam)`` of ``(cos phi R_S + sin phi R_N) diag(pi)``, one for all
    sites (``shared``) or one per site (leading site axis). ``P_b x = V (e^{lam r t_b} * (V^-1 x))``;
    partials are stored in eigen coordinates, so every branch costs one product back to states
    (per child) and every internal node one product into eigen coordinates: 3 matrix products per
    operation instead of 4, and none for tips. With a shared eigensystem each product is one
    matrix-matrix product over all sites and scales. Scaled pruning (per-partial maximum divided
    out, its log accumulated). Returns ``[site, m]``.
    """
    to_state, to_eig, lam = eig
    times = jnp.asarray(problem.times)
    operations = jnp.asarray(problem.operations)
    m = u.shape[1]
    r = jnp.exp(u)
    lam_b = lam if shared else lam[:, None, :]

    def up(n, w):  # eigen coordinates at the bottom of branch n -> partial at its top
        rt = (r * times[n])[..., None]
        return _product(to_state, w * jnp.exp(lam_b * rt), shared)

    inner, scalers = _eigen_pruning(tip_w, operations, m, up,
                                    lambda parent, x: _product(to_eig, x, shared))  # fmt: skip
    # pi . x_root = pi . (V w_root) = w_root . (V^T pi)
    root = to_state @ jnp.asarray(problem.frequencies)
    lik = jnp.sum(inner * (root if shared else root[:, None, :]), axis=-1)
    return jnp.log(jnp.maximum(lik, 1e-300)) + scalers


_FD = 1e-3  # central-difference step in u = log r


def _central_newton(out):
    """``(g, h, step)`` from values ``out [site, 3]`` at ``u - h, u, u + h`` (``h = _FD``): central
    differences and the Newton step clipped to 2 log units (``sign(g)`` where not concave)."""
    lo, val, hi = out[:, 0], out[:, 1], out[:, 2]
    g = (hi - lo) / (2 * _FD)
    h = (hi - 2 * val + lo) / _FD**2
    concave = h < 0
    d = jnp.clip(jnp.where(concave, -g / jnp.where(concave, h, -1.0), jnp.sign(g)), -2.0, 2.0)
    return g, h, d


def _newton_in_log_scale(u, tip_w, problem, eig, shared: bool, u_max=_U_MAX):
    """Log-likelihood at ``u`` and a safeguarded Newton step in ``u = log r`` for every site.

    Derivatives are central differences at ``u - h, u, u + h`` (``h = 1e-3``; the gradient error
    is O(h^2) ~ 1e-7 and moves the maximiser negligibly): the three evaluations are one batched
    pruning pass (:func:`_batch_loglik`). Returns ``(value, step, predicted)`` with the step
    clipped to 2 log units (``sign(g)`` where the profile is not concave) and to
    ``[_U_MIN, u_max]``, and ``predicted`` the quadratic model's value after that step (``value``
    where not concave): at a bound the model predicts no gain beyond it.
    """
    out = _batch_loglik(u[:, None] + jnp.array([-_FD, 0.0, _FD]), tip_w, problem, eig, shared)
    val = out[:, 1]
    g, h, d = _central_newton(out)
    concave = h < 0
    d = jnp.clip(u + d, _U_MIN, u_max) - u
    predicted = val + jnp.where(concave, g * d + 0.5 * h * d * d, 0.0)
    return val, d, jnp.maximum(predicted, val)


def _newton_log_scale(u, tip_w, problem, eig, steps: int, shared: bool, u_max=_U_MAX):
    """Maximise every site over ``u = log r`` (safeguarded Newton) within ``[_U_MIN, u_max]``
    (``u_max`` scalar or ``[site]``); ``u [site]``; returns ``(u_best, f_best)``.

    Steps from :func:`_newton_in_log_scale`; a step that did not improve is halved back
    towards the best point.
    """
    u = jnp.clip(u, _U_MIN, u_max)

    def body(_, state):
        x, best_x, best_f = state
        val, newton, _ = _newton_in_log_scale(x, tip_w, problem, eig, shared, u_max)
        better = val >= best_f
        best_x = jnp.where(better, x, best_x)
        best_f = jnp.where(better, val, best_f)
        x_new = jnp.where(better, x + newton, 0.5 * (x + best_x))
        return jnp.clip(x_new, _U_MIN, u_max), best_x, best_f

    # ``steps`` evaluations; the best evaluated point is returned (the last update is dropped)
    _, best_x, best_f = lax.fori_loop(0, steps, body, (u, u, jnp.full_like(u, -jnp.inf)))
    return best_x, best_f


# r-grid for starts without a warm start (the null and the two boundaries): one batched pass
_U_GRID = np.arange(-8.0, 8.5, 2.0)


def _profile_shared(phi, u0, tips, problem, steps, scan_grid: bool = False):
    """Profile over ``r`` at one ``phi`` for every site; eigensystem shared by all sites.

    ``scan_grid``: first evaluate every ``u`` of ``_U_GRID`` (one pass) and start Newton from
    the better of ``u0`` and the grid's best (the profile in ``r`` can have a local maximum).
    """
    eig = _eig(problem, jnp.cos(phi), jnp.sin(phi))
    tip_w = _tip_coordinates(tips, eig, True)
    if scan_grid:
        grid = jnp.concatenate(
            [u0[:, None], jnp.broadcast_to(jnp.asarray(_U_GRID), (u0.shape[0], len(_U_GRID)))], 1
        )
        f = _batch_loglik(grid, tip_w, problem, eig, True)
        u0 = jnp.take_along_axis(grid, jnp.argmax(f, axis=1)[:, None], 1)[:, 0]
    return _newton_log_scale(u0, tip_w, problem, eig, steps, True, _u_max(phi))


def _profile_per_site(phi, u0, tips, problem, steps):
    """Profile over ``r`` with a different ``phi`` (and eigensystem, one batched eigh) per site."""
    eig = jax.vmap(lambda p: _eig(problem, jnp.cos(p), jnp.sin(p)))(phi)
    tip_w = _tip_coordinates(tips, eig, False)
    return _newton_log_scale(u0, tip_w, problem, eig, steps, False, _u_max(phi))


@dataclasses.dataclass(frozen=True)
class SiteFits:
    """Per-site MLEs (numpy, one entry per site pattern fitted).

    ``alpha``, ``beta``: alternative MLE; ``beta_background`` nuisance (nan when absent);
    ``null_rate``: alpha = beta under the null (nuisance under the null in
    ``null_beta_background``); ``alt_loglik``, ``null_loglik`` per-site log-likelihoods;
    ``dnds_ci``: ``[site, (LB, MLE, UB)]`` profile intervals of dN/dS when the fitting process
    computed them (background branches with ``--ci``), else ``None``.
    """

    alpha: np.ndarray
    beta: np.ndarray
    beta_background: np.ndarray
    null_rate: np.ndarray
    null_beta_background: np.ndarray
    alt_loglik: np.ndarray
    null_loglik: np.ndarray
    dnds_ci: np.ndarray | None = None

    @property
    def lrt(self) -> np.ndarray:
        return np.maximum(2.0 * (self.alt_loglik - self.null_loglik), 0.0)


def _parabola_vertex(x, f):
    """Vertex of the parabola through three points ``x[..., 3]``, ``f[..., 3]`` and whether it is
    a maximum (concave)."""
    x1, x2, x3 = x[..., 0], x[..., 1], x[..., 2]
    f1, f2, f3 = f[..., 0], f[..., 1], f[..., 2]
    d21, d31 = x2 - x1, x3 - x1
    num = d21**2 * (f2 - f3) - (x2 - x3) ** 2 * (f2 - f1)
    den = d21 * (f2 - f3) - (x2 - x3) * (f2 - f1)
    safe = jnp.where(jnp.abs(den) > 1e-300, den, 1.0)
    vertex = x2 - 0.5 * num / safe
    # leading coefficient of the interpolating parabola: a < 0 is concave
    a = ((f3 - f1) / jnp.where(d31 != 0, d31, 1.0) - (f2 - f1) / jnp.where(d21 != 0, d21, 1.0)) / jnp.where(
        x3 - x2 != 0, x3 - x2, 1.0)  # fmt: skip
    return vertex, (a < 0) & (jnp.abs(den) > 1e-300)


def _parabolic_probe(xs, fs, xb, lo, hi, gap: float):
    """Next point of successive parabolic interpolation for every site: the vertex of the
    parabola through ``xs, fs [site, 3]`` when it is a maximum inside ``(lo, hi)``, else the
    midpoint of the larger side of the bracket around the best point ``xb``; moved off points
    already evaluated (relative distance ``gap``)."""
    vertex, concave = _parabola_vertex(xs, fs)
    left, right = xb - lo, hi - xb
    fallback = jnp.where(left > right, xb - 0.5 * left, xb + 0.5 * right)
    cand = jnp.where(concave & (vertex > lo) & (vertex < hi), vertex, fallback)
    gap = gap * (1.0 + jnp.abs(cand))
    too_close = jnp.min(jnp.abs(xs - cand[:, None]), axis=1) < gap
    return jnp.where(too_close, jnp.clip(cand + 10 * gap, lo, hi), cand)


def _grid_point(phi, u, tips, problem):
    """One Newton step in ``u`` at a grid angle (eigensystem shared by all sites).

    Returns ``(u_next, value, predicted)``: the log-likelihood *evaluated* at ``u``, the Newton
    update, and the quadratic model's maximum, used only to rank grid points (the reported
    optimum is always an evaluated point).
    """
    eig = _eig(problem, jnp.cos(phi), jnp.sin(phi))
    tip_w = _tip_coordinates(tips, eig, True)
    u_max = _u_max(phi)  # the caller keeps u within it
    val, d, predicted = _newton_in_log_scale(u, tip_w, problem, eig, True, u_max)
    return jnp.clip(u + d, _U_MIN, u_max), val, predicted


def _fast_driver(
    tips, problem, grid, null_steps, grid_steps, boundary_steps, refine_rounds, refine_steps
):
    """The whole fast path in one compiled function (see :func:`fit_sites_fast`)."""
    site_count = tips.shape[0]
    half_pi = math.pi / 2
    # Null: phi = pi/4 (alpha = beta = r / sqrt 2), one eigensystem for all sites. The profile
    # in r can have a local maximum (e.g. synonymous-only variation needing two changes), so
    # Newton starts from the best of a whole r-grid evaluated in one pass.
    u_null, f_null = _profile_shared(jnp.asarray(math.pi / 4), jnp.zeros(site_count), tips,
                                     problem, null_steps, scan_grid=True)  # fmt: skip
    # Profile on a grid of angles phi = atan(omega), omega = beta / alpha log-spaced (grid[0] = 0
    # and grid[-1] = pi/2 are the beta = 0 and alpha = 0 boundaries; the middle point is the null);
    # each grid point's eigensystem is shared by all sites, and r is continued from the
    # neighbouring grid point (scans outward from the null) with ``grid_steps`` Newton steps.
    k_count = grid.shape[0]
    mid = k_count // 2

    # One scan over both directions (up from the null, then down from it again): one copy of
    # the pass in the compiled program instead of two (the first run's compile time).
    n_up = k_count - mid - 1
    points = jnp.concatenate([grid[mid + 1 :], grid[:mid][::-1]])

    def step(u, ip):
        i, p = ip
        u = jnp.where(i == n_up, u_null, u)  # the down direction restarts at the null
        u = jnp.minimum(u, _u_max(p))  # continued from an angle with another bound

        def newton(_, c):
            u, best_u, best_f, _ = c
            u_next, val, pred = _grid_point(p, u, tips, problem)
            better = val >= best_f
            return (u_next, jnp.where(better, u, best_u), jnp.maximum(val, best_f), pred)

        init = (u, u, jnp.full_like(u, -jnp.inf), jnp.zeros_like(u))
        u_next, best_u, best_f, pred = lax.fori_loop(0, grid_steps, newton, init)
        # rank by the model's maximum from the last step; continue from the Newton update
        return u_next, (best_u, best_f, jnp.maximum(pred, best_f), u_next)

    scanned = lax.scan(step, u_null, (jnp.arange(points.shape[0]), points))[1]
    up_u, up_f, up_p, up_n = (a[:n_up] for a in scanned)
    down_u, down_f, down_p, down_n = (a[n_up:] for a in scanned)
    # the two boundary points (beta = 0, alpha = 0) are candidates in their own right: converge
    # r (one lax.map over the two, again one copy of the pass)
    (u_lo, u_hi), (f_lo, f_hi) = lax.map(
        lambda a: _profile_shared(a[0], a[1], tips, problem, boundary_steps, True),
        (jnp.stack([grid[0], grid[-1]]), jnp.stack([down_n[-1], up_n[-1]])),
    )

    def along(lo_, down, centre, up, hi_):
        return jnp.concatenate([lo_[None], down[:-1][::-1], centre[None], up[:-1], hi_[None]]).T

    grid_u = along(u_lo, down_u, u_null, up_u, u_hi)  # evaluated points
    grid_f = along(f_lo, down_f, f_null, up_f, f_hi)
    grid_p = along(f_lo, down_p, f_null, up_p, f_hi)  # ranking values (model maxima)
    grid_n = along(u_lo, down_n, u_null, up_n, u_hi)  # Newton-updated scales (refinement starts)
    # refinement coordinate: s = log omega on the interior points; the two boundary points are
    # given s one grid step beyond the extremes (they take part only as bracket ends)
    s_grid = jnp.log(jnp.tan(grid[1:-1]))
    ds = s_grid[1] - s_grid[0]
    s_grid = jnp.concatenate([s_grid[:1] - ds, s_grid, s_grid[-1:] + ds])
    k = jnp.argmax(grid_p, axis=1)
    # bracket in s, kept off the boundary points (whose s is only nominal)
    lo = s_grid[jnp.clip(k - 1, 1, k_count - 2)]
    hi = s_grid[jnp.clip(k + 1, 1, k_count - 2)]
    centre = jnp.clip(k, 2, k_count - 3)
    idx = jnp.stack([centre - 1, centre, centre + 1], 1)
    xs = s_grid[idx]
    fs = jnp.take_along_axis(grid_p, idx, 1)
    us = jnp.take_along_axis(grid_n, idx, 1)

    # Successive parabolic interpolation on the profile, inside the grid bracket [lo, hi]; one
    # per-site eigensystem per round. The three points carry profile estimates (model maxima
    # on the grid, evaluated values after refinement); the best *evaluated* point is tracked
    # separately and is what is reported.
    def round_(_, state):
        xs, fs, us, best_s, best_u, best_f = state
        best = jnp.argmax(fs, axis=1)
        xb = jnp.take_along_axis(xs, best[:, None], 1)[:, 0]
        ub = jnp.take_along_axis(us, best[:, None], 1)[:, 0]
        cand = _parabolic_probe(xs, fs, xb, lo, hi, 1e-7)
        uc, fc = _profile_per_site(jnp.arctan(jnp.exp(cand)), ub, tips, problem, refine_steps)
        worst = jnp.argmin(fs, axis=1)
        replace = jax.nn.one_hot(worst, 3, dtype=bool) & (fc > jnp.min(fs, axis=1))[:, None]
        gain = fc > best_f
        return (jnp.where(replace, cand[:, None], xs), jnp.where(replace, fc[:, None], fs),
                jnp.where(replace, uc[:, None], us), jnp.where(gain, cand, best_s),
                jnp.where(gain, uc, best_u), jnp.maximum(fc, best_f))  # fmt: skip

    minus_inf = jnp.full(site_count, -jnp.inf)
    state = (xs, fs, us, jnp.zeros(site_count), jnp.zeros(site_count), minus_inf)
    _, _, _, s_ref, u_ref, f_ref = lax.fori_loop(0, refine_rounds, round_, state)
    # the best evaluated point of grid (boundaries included) and refinement
    kg = jnp.argmax(grid_f, axis=1)
    g_best = jnp.max(grid_f, axis=1)
    from_grid = g_best >= f_ref
    phi = jnp.where(from_grid, grid[kg], jnp.arctan(jnp.exp(s_ref)))
    u = jnp.where(from_grid, jnp.take_along_axis(grid_u, kg[:, None], 1)[:, 0], u_ref)
    f_alt = jnp.maximum(f_ref, g_best)
    r = jnp.exp(u)
    alpha = jnp.where(phi >= half_pi, 0.0, r * jnp.cos(phi))  # cos(pi/2) ~ 6e-17
    beta = r * jnp.sin(phi)
    # The null is nested in the alternative.
    use_null = f_null > f_alt
    null_rate = jnp.exp(u_null) / math.sqrt(2.0)
    alpha = jnp.where(use_null, null_rate, alpha)
    beta = jnp.where(use_null, null_rate, beta)
    return alpha, beta, null_rate, jnp.maximum(f_alt, f_null), f_null


_FAST = jax.jit(_fast_driver, static_argnums=(3, 4, 5, 6, 7))


def _chunked_driver(tips, problem, grid, *static):
    """:func:`_fast_driver` over ``tips [chunk, site, taxon, state]``, one chunk after another
    (sites are independent; the grid's eigensystems are recomputed per chunk, 25 ``eigh`` of
    61x61)."""
    return lax.map(lambda t: _fast_driver(t, problem, grid, *static), tips)


_FAST_CHUNKED = jax.jit(_chunked_driver, static_argnums=(3, 4, 5, 6, 7))
# bytes allowed for one ``[operation, site, r-grid, state]`` partial buffer of the fast path; XLA
# keeps a few such buffers live, so this bounds the site stage's memory on large trees
SITE_BUFFER_BYTES = 2**28


def _fast_layout(op_count: int, site_count: int, state_count: int, step: int = 64) -> tuple[int, int]:
    """``(chunk, padded)`` site rows of the fast path: the site axis is padded to a bucket size
    so that partitions / data sets of similar size share one compiled driver (padding rows repeat
    site 0 and are dropped); on large trees, sites go through in chunks whose partial buffers fit
    SITE_BUFFER_BYTES. ``step``: the bucket's granularity above 64 sites (:func:`_bucket`)."""
    per_site = 8 * op_count * (len(_U_GRID) + 1) * state_count
    chunk = _bucket(site_count, step)
    while chunk > 8 and chunk * per_site > SITE_BUFFER_BYTES:
        chunk = _bucket(chunk // 2, step) if chunk > 64 else chunk // 2
    return chunk, -(-site_count // chunk) * chunk


def _fast_grid(grid_size: int, omega_range: float):
    half = grid_size // 2
    omegas = np.exp(np.linspace(-math.log(omega_range), math.log(omega_range), 2 * half - 1))
    return jnp.asarray(np.concatenate([[0.0], np.arctan(omegas), [math.pi / 2]]))


def _fast_program(problem, site_count, taxon_count, state_count, grid_size=25,
                  omega_range=1e4, refine_rounds=3, null_steps=5, grid_steps=3,
                  boundary_steps=3, refine_steps=3, step=64):  # fmt: skip
    """``(program, tips shape, chunk, padded, grid, static)`` of one fast-path call (``step``:
    the site padding's granularity above 64 sites, :func:`_bucket`)."""
    op_count = np.shape(problem.operations)[0]
    chunk, padded = _fast_layout(op_count, site_count, state_count, step)
    grid = _fast_grid(grid_size, omega_range)
    static = (null_steps, grid_steps, boundary_steps, refine_rounds, refine_steps)
    if padded == chunk:
        return _FAST, (padded, taxon_count, state_count), chunk, padded, grid, static
    shape = (padded // chunk, chunk, taxon_count, state_count)
    return _FAST_CHUNKED, shape, chunk, padded, grid, static


def compile_fast_later(problem: SiteProblem, site_count: int, taxon_count: int, state_count: int,
                       dtype=np.float64, **settings):  # fmt: skip
    """Start compiling the fast path for ``site_count`` sites in the background (see
    :mod:`phylojax.aot`); ``problem``'s arrays may be ``jax.ShapeDtypeStruct``. Returns the
    job for ``aot.wait``."""
    from .. import aot

    program, shape, _, _, grid, static = _fast_program(problem, site_count, taxon_count,
                                                       state_count, **settings)  # fmt: skip
    return aot.compile_later(program, jax.ShapeDtypeStruct(shape, dtype), problem, grid, *static)


def fit_sites_fast(problem: SiteProblem, tips, **settings) -> SiteFits:
    """Fast path (no nuisance, srv Yes). ``tips``: ``[site, taxon, state]``. Returns SiteFits.

    One compiled function: the null at ``phi = pi/4`` (one eigensystem), a grid of
    ``grid_size`` (25) angles over ``[0, pi/2]`` (one batched ``eigh``, shared by all sites), then
    ``refine_rounds`` (3) rounds of successive parabolic interpolation of the profile
    ``max_r l(r cos phi, r sin phi)`` inside the grid bracket (one ``eigh`` per site and round) and
    a boundary snap + polish in ``r``. Compiled once per (sites, taxa, states) shape. Settings
    (keyword): ``grid_size``, ``omega_range`` (1e4), ``refine_rounds``, ``null_steps`` (5),
    ``grid_steps`` (3), ``boundary_steps`` (3), ``refine_steps`` (3), and ``step`` (64), the
    site padding's granularity (:func:`_bucket`). The defaults were chosen against a
    high-effort fit in ``benchmarks/site_stage_variants.py`` (RESULTS_fel.md).
    """
    tips = np.asarray(tips)
    site_count, taxon_count, state_count = tips.shape
    program, shape, chunk, padded, grid, static = _fast_program(
        problem, site_count, taxon_count, state_count, **settings)
    if padded > site_count:
        tips = np.concatenate([tips, np.repeat(tips[:1], padded - site_count, 0)])
    out = program(jnp.asarray(tips.reshape(shape)), problem, grid, *static)
    alpha, beta, null_rate, f_alt, f_null = [np.asarray(o).reshape(-1) for o in out]
    nan = np.full(site_count, np.nan)
    n = site_count
    return SiteFits(
        alpha=alpha[:n], beta=beta[:n], beta_background=nan, null_rate=null_rate[:n],
        null_beta_background=nan, alt_loglik=f_alt[:n], null_loglik=f_null[:n],
    )  # fmt: skip


def _bucket(n: int, step: int = 64) -> int:
    """Padded site count: powers of two up to 64, then multiples of ``step``."""
    if n <= 64:
        return max(8, 1 << max(n - 1, 0).bit_length())
    return -(-n // step) * step


_SHARED = jax.jit(_profile_shared, static_argnums=(4,))
_PER_SITE = jax.jit(_profile_per_site, static_argnums=(4,))


def profile_dnds(problem: SiteProblem, tips, phi, u0, steps: int = 6):
    """Profile log-likelihood ``max_r`` at per-site angles ``phi`` (dN/dS = tan phi)."""
    return _PER_SITE(jnp.asarray(phi), jnp.asarray(u0), jnp.asarray(tips), problem, steps)
