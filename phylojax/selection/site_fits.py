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
  matrix-matrix product per branch for all sites); at each angle one pruning pass evaluates five
  values of ``log r`` around the one continued from the previous angle, and the parabola through
  the best of them ranks the angle and continues ``r``. These passes can run in float32
  (``grid_dtype``; off by default, see :data:`GRID_DTYPE`), guarded against rounding noise; the
  values reported are always float64. The best angle is then converged in ``r``
  (Newton, per-site eigensystems), followed by a few rounds of successive parabolic
  interpolation in ``log(beta/alpha)`` with one ``eigh`` per site and round. Partials are kept
  in eigen coordinates (3 matrix products per pruning operation instead of 4; tips transformed
  once per eigensystem). The best evaluated point is reported, so boundaries are ordinary
  candidates and nothing stalls there. The null is ``phi = pi/4``: one eigensystem for all sites. The whole path
  is one jitted function (compiled once per problem shape).
* **General path** (nuisance ``beta`` on background branches, ``--srv No``): see
  :mod:`.site_general` (grid start on shared eigensystems, then optax L-BFGS per site).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..host import to_device
from ..xla_flags import site_compiler_options
from .site_kernels import (  # noqa: F401  (re-exported: the other site fitters import them here)
    _FD,
    _U_GRID,
    _U_MAX,
    _U_MIN,
    UPPER,
    SiteFits,
    SiteProblem,
    _batch_loglik,
    _bucket,
    _central_newton,
    _eig,
    _eigen_pruning,
    _in_dtype,
    _newton_in_log_scale,
    _newton_log_scale,
    _product,
    _profile_per_site,
    _profile_shared,
    _tip_coordinates,
    _u_max,
    site_log_likelihood,
)


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


def _parabola_peak(x, f):
    """``(vertex, value, ok)`` of the parabola through ``x, f [..., 3]`` (``x`` increasing):
    ``ok`` where it is concave with its vertex inside ``[x[0], x[2]]``."""
    vertex, concave = _parabola_vertex(x, f)
    ok = concave & (vertex >= x[..., 0]) & (vertex <= x[..., 2])
    v = jnp.where(ok, vertex, x[..., 1])
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    f0, f1, f2 = f[..., 0], f[..., 1], f[..., 2]

    def safe(d):
        return jnp.where(d != 0, d, 1.0)

    value = (f0 * (v - x1) * (v - x2) / safe((x0 - x1) * (x0 - x2))
             + f1 * (v - x0) * (v - x2) / safe((x1 - x0) * (x1 - x2))
             + f2 * (v - x0) * (v - x1) / safe((x2 - x0) * (x2 - x1)))  # fmt: skip
    return v, value, ok


def _stencil_point(phi, u, tips, problem, offsets, dtype=None):
    """The profile over ``u = log r`` at one grid angle from one pruning pass at ``u + offsets``
    (clipped to the bounds; eigensystem shared by all sites), in ``dtype`` when given (the
    eigensystem is computed in the problem's precision and then rounded).

    Returns ``(u_next, predicted, u_best, f_best)``: the vertex of the parabola through the best
    evaluated offset and its neighbours (the best offset where that is not a concave peak
    between them) and the parabola's value there, used to rank the angle and to continue ``u``
    to the next one; and the best evaluated point, in the pass's precision (a candidate for the
    reported optimum only in the problem's own). In lower precision, values whose partials are
    rounding noise are ``-inf`` (:func:`.site_kernels._eigen_pruning`).
    """
    lower = dtype is not None and jnp.finfo(dtype).bits < jnp.finfo(u.dtype).bits
    eig = _eig(problem, jnp.cos(phi), jnp.sin(phi))
    eig, tips, problem = _in_dtype(dtype, eig, tips, problem)
    tip_w = _tip_coordinates(tips, eig, True)
    uu = jnp.clip(u[:, None] + jnp.asarray(offsets), _U_MIN, _u_max(phi))
    f = _batch_loglik(uu.astype(tip_w.dtype), tip_w, problem, eig, True,
                      NOISE_TOL if lower else None).astype(u.dtype)  # fmt: skip
    best = jnp.argmax(f, axis=1)
    mid = jnp.clip(best, 1, len(offsets) - 2)
    idx = jnp.stack([mid - 1, mid, mid + 1], 1)
    vertex, value, ok = _parabola_peak(jnp.take_along_axis(uu, idx, 1), jnp.take_along_axis(f, idx, 1))
    f_best = jnp.max(f, axis=1)
    u_best = jnp.take_along_axis(uu, best[:, None], 1)[:, 0]
    u_next = jnp.where(ok, vertex, u_best)
    if lower:  # noise at every offset: the angle ranks last and u is carried on unchanged
        u_next = jnp.where(ok | (f_best > -jnp.inf), u_next, u)
    return u_next, jnp.where(ok, jnp.maximum(value, f_best), f_best), u_best, f_best


def _fast_driver(
    tips, problem, grid, null_steps, grid_steps, boundary_steps, refine_rounds, refine_steps,
    stencil=(), grid_dtype=None,
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
    # neighbouring grid point (scans outward from the null): one pass at the ``stencil`` offsets
    # of u per angle, or ``grid_steps`` Newton steps when ``stencil`` is empty.
    k_count = grid.shape[0]
    mid = k_count // 2

    # One scan over both directions (up from the null, then down from it again): one copy of
    # the pass in the compiled program instead of two (the first run's compile time).
    n_up = k_count - mid - 1

    points = jnp.concatenate([grid[mid + 1 :], grid[:mid][::-1]])
    lower = bool(stencil) and grid_dtype is not None and (
        jnp.finfo(grid_dtype).bits < jnp.finfo(tips.dtype).bits)  # fmt: skip

    def stencil_step(u, ip):
        i, p = ip
        u = jnp.where(i == n_up, u_null, u)  # the down direction restarts at the null
        u_next, pred, u_best, f_best = _stencil_point(p, u, tips, problem, stencil, grid_dtype)
        return u_next, (u_best, f_best, pred, u_next)

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

    scanned = lax.scan(stencil_step if stencil else step, u_null,
                       (jnp.arange(points.shape[0]), points))[1]  # fmt: skip
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
    # Values of a lower-precision scan rank angles and are not reported; the start round of the
    # refinement (below) confirms them.
    check = np.ones(k_count, bool)
    check[[0, mid, k_count - 1]] = False  # the null and the boundaries: the problem's precision
    check = jnp.asarray(check & lower)
    grid_low, grid_f = grid_f, jnp.where(check, -jnp.inf, grid_f)
    # refinement coordinate: s = log omega on the interior points; the two boundary points are
    # given s one grid step beyond the extremes (they take part only as bracket ends)
    s_grid = jnp.log(jnp.tan(grid[1:-1]))
    ds = s_grid[1] - s_grid[0]
    s_grid = jnp.concatenate([s_grid[:1] - ds, s_grid, s_grid[-1:] + ds])

    def bracket(grid_p):
        """``(lo, hi, idx)``: the bracket in s around each site's best-ranked angle, kept off the
        boundary points (whose s is only nominal), and three grid points in it."""
        k = jnp.argmax(grid_p, axis=1)
        centre = jnp.clip(k, 2, k_count - 3)
        return (s_grid[jnp.clip(k - 1, 1, k_count - 2)], s_grid[jnp.clip(k + 1, 1, k_count - 2)],
                jnp.stack([centre - 1, centre, centre + 1], 1))  # fmt: skip

    def triple(idx, grid_p):
        return (s_grid[idx], jnp.take_along_axis(grid_p, idx, 1),
                jnp.take_along_axis(grid_n, idx, 1))  # fmt: skip

    # Successive parabolic interpolation on the profile, inside the grid bracket [lo, hi]; one
    # per-site eigensystem per round. The three points carry profile estimates (model maxima
    # on the grid, evaluated values after refinement); the best *evaluated* point is tracked
    # separately and is what is reported.
    # With the stencil, the grid values are not converged in r: a start round evaluates the best
    # grid angle itself (converging r there) and lets that value stand in for the model's; the
    # later rounds probe. One loop for both keeps one copy of the per-site profile in the
    # compiled program (it was two: the first call on one core, compilation included, 3.19 ->
    # 2.61 s on HepatitisD's worker share, outputs bit-identical; docs/fel.md "Site optimiser").
    # After a lower-precision scan the start round also confirms the ranking: where the angle's
    # value in the problem's precision is lower than the scan's value there by more than
    # CONFIRM_TOL, that was rounding noise the sign test missed; the angle is ranked by the
    # evaluated value and the site starts again from the next best (at most CONFIRM_ROUNDS
    # times). The loop runs on only while some site restarts or has probes left.
    first_round = 1 if stencil else 0
    site = jnp.arange(site_count)

    def round_(state):
        i, xs, fs, us, lo, hi, idx, grid_p, start, left, best_s, best_u, best_f = state
        best = jnp.argmax(fs, axis=1)
        xb = jnp.take_along_axis(xs, best[:, None], 1)[:, 0]
        ub = jnp.take_along_axis(us, best[:, None], 1)[:, 0]
        cand = jnp.where(start, xb, _parabolic_probe(xs, fs, xb, lo, hi, 1e-7))
        uc, fc = _profile_per_site(jnp.arctan(jnp.exp(cand)), ub, tips, problem, refine_steps)
        active = start | (left > 0)
        worst = jnp.argmin(fs, axis=1)
        replace = active[:, None] & jnp.where(
            start[:, None], jax.nn.one_hot(best, 3, dtype=bool),
            jax.nn.one_hot(worst, 3, dtype=bool) & (fc > jnp.min(fs, axis=1))[:, None])  # fmt: skip
        gain = active & ((fc > best_f) | (start & (best_f == -jnp.inf)))
        new = (jnp.where(replace, cand[:, None], xs), jnp.where(replace, fc[:, None], fs),
               jnp.where(replace, uc[:, None], us), lo, hi, idx)  # fmt: skip
        noise = jnp.zeros_like(start)
        if lower:  # confirm the start round's angle; restart the sites where it was noise
            at = jnp.take_along_axis(idx, best[:, None], 1)[:, 0]
            noise = (start & check[at] & (fc < grid_low[site, at] - CONFIRM_TOL)
                     & (i < CONFIRM_ROUNDS))  # fmt: skip
            grid_p = jnp.where(noise[:, None] & jax.nn.one_hot(at, k_count, dtype=bool),
                               fc[:, None], grid_p)  # fmt: skip
            lo2, hi2, idx2 = bracket(grid_p)
            again = (*triple(idx2, grid_p), lo2, hi2, idx2)
            new = tuple(jnp.where(noise.reshape(noise.shape + (1,) * (a.ndim - 1)), a, o)
                        for a, o in zip(again, new))  # fmt: skip
        return (i + 1, *new, grid_p, noise, jnp.where(start | ~active, left, left - 1),
                jnp.where(gain, cand, best_s), jnp.where(gain, uc, best_u),
                jnp.where(gain, fc, best_f))  # fmt: skip

    lo, hi, idx = bracket(grid_p)
    xs, fs, us = triple(idx, grid_p)
    zeros, minus_inf = jnp.zeros(site_count), jnp.full(site_count, -jnp.inf)
    state = (0, xs, fs, us, lo, hi, idx, grid_p, jnp.full(site_count, bool(first_round)),
             jnp.full(site_count, refine_rounds), zeros, zeros, minus_inf)  # fmt: skip
    rounds = refine_rounds + first_round + (CONFIRM_ROUNDS if lower else 0)
    state = lax.while_loop(lambda c: (c[0] < rounds) & jnp.any(c[8] | (c[9] > 0)), round_, state)
    s_ref, u_ref, f_ref = state[-3:]
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


_OPTIONS = site_compiler_options()  # LLVM level 1 on the CPU (phylojax/xla_flags.py)
_FAST = jax.jit(_fast_driver, static_argnums=(3, 4, 5, 6, 7, 8, 9), compiler_options=_OPTIONS)


def _chunked_driver(tips, problem, grid, *static):
    """:func:`_fast_driver` over ``tips [chunk, site, taxon, state]``, one chunk after another
    (sites are independent; the grid's eigensystems are recomputed per chunk, 25 ``eigh`` of
    61x61)."""
    return lax.map(lambda t: _fast_driver(t, problem, grid, *static), tips)


_FAST_CHUNKED = jax.jit(_chunked_driver, static_argnums=(3, 4, 5, 6, 7, 8, 9),
                        compiler_options=_OPTIONS)
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


# Offsets in u = log r evaluated at every grid angle in one pruning pass (the default grid scan);
# ``stencil=()`` scans with ``grid_steps`` central-difference Newton steps per angle instead (the
# high-effort reference of benchmarks/site_stage_variants.py).
STENCIL = (-1.0, -0.3, 0.0, 0.3, 1.0)
# Precision of the grid scan's pruning passes (the stencil at every angle). Their values only
# rank angles and continue r; every reported value comes from a pass in the problem's own
# precision (the null, the boundaries and the refinement, whose start round confirms a
# lower-precision ranking). ``None`` (the default): the problem's own precision. "float32" is
# 20-30 % faster on the CPU (a worker's share: HepatitisD 0.81 -> 0.64-0.68 s, HIV_RT 23.1 ->
# 16.0 s) but NOT the default: P v = V (e^{lam r t} w) loses the small off-diagonal terms of short
# effective branches in float32 (HepatitisD site 130 at r = e^-2.1: lnL -41.0 against -22.9 in
# float64, no sign-test flag), which can drop the best angle from the ranking and leave the
# refinement's bracket off the optimum (that site ended 0.09 lnL low in one run). The expm1 form
# P v = v + V (expm1(lam r t) w) fixed that but failed on HIV_RT (three sites at the null) and was
# not kept (docs/fel.md "Site optimiser").
GRID_DTYPE = None
NOISE_TOL = 1e-3  # lower-precision partials with an entry below -NOISE_TOL x their maximum: noise
CONFIRM_TOL = 0.5  # a lower-precision value above the problem's precision's by more: noise
CONFIRM_ROUNDS = 3  # most angles confirmed per site


def _fast_grid(grid_size: int, omega_range: float):
    half = grid_size // 2
    omegas = np.exp(np.linspace(-math.log(omega_range), math.log(omega_range), 2 * half - 1))
    return to_device(np.concatenate([[0.0], np.arctan(omegas), [math.pi / 2]]))


def _fast_program(problem, site_count, taxon_count, state_count, grid_size=25,
                  omega_range=1e4, refine_rounds=3, null_steps=5, grid_steps=3,
                  boundary_steps=3, refine_steps=3, step=64, stencil=STENCIL,
                  grid_dtype=GRID_DTYPE):  # fmt: skip
    """``(program, tips shape, chunk, padded, grid, static)`` of one fast-path call (``step``:
    the site padding's granularity above 64 sites, :func:`_bucket`)."""
    op_count = np.shape(problem.operations)[0]
    chunk, padded = _fast_layout(op_count, site_count, state_count, step)
    grid = _fast_grid(grid_size, omega_range)
    static = (null_steps, grid_steps, boundary_steps, refine_rounds, refine_steps,
              tuple(float(o) for o in stencil), grid_dtype)  # fmt: skip
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
    ``grid_size`` (25) angles over ``[0, pi/2]`` (one batched ``eigh``, shared by all sites; at
    each angle one pruning pass at the ``stencil`` offsets of ``log r`` around the value continued
    from the previous angle), then the best grid angle converged in ``r`` and ``refine_rounds``
    (3) rounds of successive parabolic interpolation of the profile
    ``max_r l(r cos phi, r sin phi)`` inside the grid bracket (one ``eigh`` per site and round) and
    a boundary snap + polish in ``r``. Compiled once per (sites, taxa, states) shape. Settings
    (keyword): ``grid_size``, ``omega_range`` (1e4), ``refine_rounds``, ``null_steps`` (5),
    ``stencil`` (:data:`STENCIL`; ``()`` for ``grid_steps`` (3) Newton steps per angle instead),
    ``boundary_steps`` (3), ``refine_steps`` (3), ``grid_dtype`` (:data:`GRID_DTYPE`, the grid
    scan's precision) and ``step`` (64), the site padding's granularity (:func:`_bucket`). The defaults were chosen against a
    high-effort fit in ``benchmarks/site_stage_variants.py`` (RESULTS_fel.md).
    """
    tips = np.asarray(tips)
    site_count, taxon_count, state_count = tips.shape
    program, shape, chunk, padded, grid, static = _fast_program(
        problem, site_count, taxon_count, state_count, **settings)
    if padded > site_count:
        tips = np.concatenate([tips, np.repeat(tips[:1], padded - site_count, 0)])
    out = program(to_device(tips.reshape(shape)), problem, grid, *static)
    alpha, beta, null_rate, f_alt, f_null = [np.asarray(o).reshape(-1) for o in out]
    nan = np.full(site_count, np.nan)
    n = site_count
    return SiteFits(
        alpha=alpha[:n], beta=beta[:n], beta_background=nan, null_rate=null_rate[:n],
        null_beta_background=nan, alt_loglik=f_alt[:n], null_loglik=f_null[:n],
    )  # fmt: skip


_SHARED = jax.jit(_profile_shared, static_argnums=(4,), compiler_options=_OPTIONS)
_PER_SITE = jax.jit(_profile_per_site, static_argnums=(4,), compiler_options=_OPTIONS)


def profile_dnds(problem: SiteProblem, tips, phi, u0, steps: int = 6):
    """Profile log-likelihood ``max_r`` at per-site angles ``phi`` (dN/dS = tan phi)."""
    return _PER_SITE(to_device(phi), to_device(u0), to_device(tips), problem, steps)
