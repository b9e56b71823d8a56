"""FEL per-site fits with a nuisance ``beta`` on background branches and/or ``--srv No``, every
site at once (the batched general path).

Two branch classes, *test* (rates ``alpha, beta``) and *background* (``alpha, beta_bg``; without
a nuisance the background class is the test class). As on the fast path (:mod:`.site_fits`) a
class's matrix ``a R_S + b R_N`` is a multiple of ``cos phi R_S + sin phi R_N``, so its
eigensystem depends on one angle only, and the common scale is a time multiplier:

* ``alpha > 0``: ``phi = atan(beta / alpha)``, ``psi = atan(beta_bg / alpha)``; test branches run
  at ``alpha / cos phi`` times the eigensystem of ``phi``, background branches at
  ``alpha / cos psi`` times that of ``psi``. With ``--srv Yes`` the scale ``u = log alpha`` is
  profiled by safeguarded Newton (central differences, one batched pass for three values); with
  ``--srv No`` ``alpha = 1``.
* ``alpha = 0`` (``--srv Yes`` with a nuisance only): both classes use the eigensystem of ``R_N``
  with ``(beta, beta_bg) = r (cos chi, sin chi)``; ``u = log r`` is profiled the same way.

**Grid.** Every grid combination of angles has its eigensystems shared by all sites (one
matrix-matrix product per branch for all sites); ``u`` is continued along the ``phi`` axis.
**Refinement.** From each site's best grid point, rounds of coordinate-wise parabolic steps in
``log tan phi`` and ``log tan psi`` (``log tan chi`` on the ``alpha = 0`` face), each probe one
per-site ``eigh`` of the coordinate's class (none on the ``alpha = 0`` face, whose eigensystem is
shared) and a Newton profile in ``u``. The best *evaluated* point is reported, so the boundaries
``beta = 0``, ``beta_bg = 0`` and ``alpha = 0`` are ordinary candidates, and the null (nested in
the alternative) is a candidate of the alternative: ``l_alt >= l_null``.

The whole fit is one jitted function per configuration and problem shape, without data-dependent
loops (the sequential optax path in :mod:`.site_general` remains the reference in the tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..host import to_device
from ..xla_flags import site_compiler_options
from .site_fits import (
    _FD,
    _U_GRID,
    _U_MAX,
    _U_MIN,
    UPPER,
    SiteFits,
    SiteProblem,
    _central_newton,
    _eig,
    _eigen_pruning,
    _fast_layout,
    _product,
)  # fmt: skip

# finer site buckets than the fast path's: each child (:mod:`.isolated`) compiles its own programs
# anyway, and half of CD2's 174 sites pad to 96 rather than 128
_CLASS_STEP = 32
_TEST_OMEGA = np.exp(np.linspace(math.log(1e-4), math.log(1e4), 23))  # beta / alpha on the grid
_BG_OMEGA = np.exp(np.linspace(math.log(1e-2), math.log(1e2), 8))  # beta_bg / alpha
_CHI_RATIO = np.exp(np.linspace(math.log(1e-3), math.log(1e3), 11))  # beta_bg / beta at alpha = 0


def _angles(omegas) -> np.ndarray:
    """Grid angles ``[0, atan(omega)...]`` (``0`` is the rate-zero boundary)."""
    return np.concatenate([[0.0], np.arctan(omegas)])


# --------------------------------------------------------------------------- kernel
def _class_loglik(u, tip_w, problem: SiteProblem, eig, mult, shared: bool):
    """Site log-likelihoods at scales ``exp(u)``, ``u [site, m]``; returns ``[site, m]``.

    ``eig = (to_state, to_eig, lam)`` stacked over the two classes (test, background): leading
    ``[2]`` when shared by all sites, ``[site, 2]`` otherwise (layout of :func:`.site_fits._eig`).
    ``mult [site, 2]``: each class's time multiplier. ``tip_w [site, taxon, state]``: tips in the
    eigen coordinates of their own branch's class (:func:`_tips`). Scaled pruning in eigen
    coordinates, as :func:`.site_fits._batch_loglik`.
    """
    to_state, to_eig, lam = eig
    times = jnp.asarray(problem.times)
    operations = jnp.asarray(problem.operations)
    cls = jnp.asarray(problem.background).astype(jnp.int32)
    r = jnp.exp(u)
    axis = 0 if shared else 1

    def pick(a, k):
        return lax.dynamic_index_in_dim(a, k, axis, keepdims=False)

    def up(n, w):
        k = cls[n]
        lam_k = pick(lam, k)
        c = lax.dynamic_index_in_dim(mult, k, 1, keepdims=False)  # [site]
        rt = (r * (times[n] * c)[:, None])[..., None]
        lb = lam_k if shared else lam_k[:, None, :]
        return _product(pick(to_state, k), w * jnp.exp(lb * rt), shared)

    inner, scalers = _eigen_pruning(
        tip_w, operations, u.shape[1], up,
        lambda parent, x: _product(pick(to_eig, cls[parent]), x, shared))
    top = pick(to_state, cls[operations[-1, 0]])
    pi = jnp.asarray(problem.frequencies)
    root = top @ pi if shared else jnp.einsum("sji,i->sj", top, pi)
    lik = jnp.sum(inner * (root if shared else root[:, None, :]), axis=-1)
    return jnp.log(jnp.maximum(lik, 1e-300)) + scalers


def _tips(tips, problem, eig, shared: bool):
    """Tips in the eigen coordinates of their own branch's class."""
    to_eig = eig[1]
    cls = jnp.asarray(problem.background)[: tips.shape[1]]
    axis = 0 if shared else 1
    w = [_product(jnp.take(to_eig, k, axis=axis), tips, shared) for k in (0, 1)]
    return jnp.where(cls[None, :, None], w[1], w[0])


def _stack(e_test, e_bg, shared: bool):
    axis = 0 if shared else 1
    return tuple(jnp.stack([a, b], axis) for a, b in zip(e_test, e_bg))


def _shared_eig(problem, phi):
    return _eig(problem, jnp.cos(phi), jnp.sin(phi))


def _site_eig(problem, phi):
    return jax.vmap(lambda p: _eig(problem, jnp.cos(p), jnp.sin(p)))(phi)


def _u_bound(*tangents):
    """Largest ``u = log alpha`` with ``alpha`` and every ``alpha tan(angle)`` within UPPER."""
    big = jnp.maximum(1.0, tangents[0])
    for t in tangents[1:]:
        big = jnp.maximum(big, t)
    return math.log(UPPER) - jnp.log(big)


def _profile(f, u, free_scale: bool, steps: int, scan_grid: bool = False, u_max=_U_MAX):
    """Maximise ``f(u [site, m]) -> [site, m]`` over ``u`` per site (``free_scale``) by
    safeguarded Newton on central differences; else evaluate at ``u`` (``alpha = 1``: ``u = 0``).
    Returns ``(u_best, f_best)``. ``scan_grid``: first take the better of ``u`` and the best of
    the r-grid ``_U_GRID`` (one pass). ``u`` stays within ``[_U_MIN, u_max]`` (scalar or
    ``[site]``, :func:`_u_bound`: every rate within HyPhy's ``[0, 10000]``)."""
    if not free_scale:
        return u, f(u[:, None])[:, 0]
    if scan_grid:
        grid = jnp.concatenate(
            [u[:, None], jnp.broadcast_to(jnp.asarray(_U_GRID), (u.shape[0], len(_U_GRID)))], 1
        )
        grid = jnp.minimum(grid, jnp.reshape(u_max, (-1, 1)))
        u = jnp.take_along_axis(grid, jnp.argmax(f(grid), axis=1)[:, None], 1)[:, 0]
    u = jnp.clip(u, _U_MIN, u_max)
    offsets = jnp.array([-_FD, 0.0, _FD])

    def body(_, state):
        x, best_x, best_f = state
        out = f(x[:, None] + offsets)
        val = out[:, 1]
        _, _, d = _central_newton(out)
        better = val >= best_f
        best_x = jnp.where(better, x, best_x)
        best_f = jnp.where(better, val, best_f)
        x_new = jnp.where(better, x + d, 0.5 * (x + best_x))
        return jnp.clip(x_new, _U_MIN, u_max), best_x, best_f

    _, best_x, best_f = lax.fori_loop(0, steps, body, (u, u, jnp.full_like(u, -jnp.inf)))
    return best_x, best_f


# --------------------------------------------------------------------------- alpha > 0
def _multipliers(phi, psi):
    """Time multipliers ``1 / cos`` of the two classes (``alpha`` is the scale)."""
    return jnp.stack([1.0 / jnp.cos(phi), 1.0 / jnp.cos(psi)], -1)


def _grid_face(tips, problem, phis, psis, free_scale, steps, u0):
    """Every ``(phi_i, psi_j)`` (``psis=None``: ``psi = phi``) with eigensystems shared by all
    sites; ``u`` continued along ``phi``. Returns ``(f, u)`` as ``[site, I, J]``."""
    site_count = tips.shape[0]
    e_phi = jax.vmap(lambda p: _shared_eig(problem, p))(phis)
    tied = psis is None
    e_psi = e_phi if tied else jax.vmap(lambda p: _shared_eig(problem, p))(psis)

    i_count = phis.shape[0]
    j_count = 1 if tied else psis.shape[0]

    # one flat scan over the combinations (psi outer, phi inner): a scan nested in lax.map here
    # deadlocked XLA:CPU (jaxlib 0.10.2) at run time, like the old general path's vmapped loops
    def step(u, ij):
        j, i = ij // i_count, ij % i_count
        u = jnp.where(i == 0, u0, u)  # each psi column starts from the null's scale
        ep = jax.tree.map(lambda a: a[i], e_phi)
        eq = jax.tree.map(lambda a: a[i if tied else j], e_psi)
        eig = _stack(ep, eq, True)
        tip_w = _tips(tips, problem, eig, True)
        psi = phis[i] if tied else psis[j]
        mult = jnp.broadcast_to(_multipliers(phis[i], psi), (site_count, 2))
        u_best, f_best = _profile(lambda v: _class_loglik(v, tip_w, problem, eig, mult, True),
                                  u, free_scale, steps, scan_grid=False,
                                  u_max=_u_bound(jnp.tan(phis[i]), jnp.tan(psi)))  # fmt: skip
        return u_best, (f_best, u_best)

    f, u = lax.scan(step, u0, jnp.arange(i_count * j_count))[1]  # [J * I, site]
    shape = (j_count, i_count, site_count)
    return (jnp.moveaxis(f.reshape(shape), 2, 0).swapaxes(1, 2),
            jnp.moveaxis(u.reshape(shape), 2, 0).swapaxes(1, 2))  # fmt: skip


def _evaluate(tips, problem, phi, psi, e_test, e_bg, u, free_scale, steps):
    """Profile at per-site angles with per-site eigensystems ``e_test``, ``e_bg``."""
    eig = _stack(e_test, e_bg, False)
    tip_w = _tips(tips, problem, eig, False)
    mult = _multipliers(phi, psi)
    return _profile(lambda v: _class_loglik(v, tip_w, problem, eig, mult, False), u, free_scale,
                    steps, u_max=_u_bound(jnp.tan(phi), jnp.tan(psi)))  # fmt: skip


def _parabola_step(s, f0, fm, fp, delta):
    """Vertex of the parabola through ``(s - delta, fm), (s, f0), (s + delta, fp)``, clipped to
    ``2 delta``; the better side when not concave."""
    curv = fm + fp - 2.0 * f0
    concave = curv < 0
    vertex = s + 0.5 * delta * (fm - fp) / jnp.where(concave, curv, -1.0)
    side = jnp.where(fp > fm, s + 2 * delta, s - 2 * delta)
    return jnp.clip(jnp.where(concave, vertex, side), s - 2 * delta, s + 2 * delta)


def _refine_face(tips, problem, phi, psi, u, f, free_scale, tied, free_phi, rounds, steps,
                 d_phi, d_psi):  # fmt: skip
    """Coordinate-wise parabolic refinement in ``log tan`` of the free angles (``free_phi``:
    the test angle; the background angle when not ``tied``), per-site eigensystems. Angles at
    exactly 0 (a rate on its zero boundary) stay there.

    One ``fori_loop`` over a fixed schedule of probes, one probe (one per-site ``eigh`` and a
    Newton profile in ``u``) per iteration: for every round and coordinate, ``s - delta``,
    ``s + delta`` and the vertex of the parabola through them and ``s``. (Written as separate
    loops and branches, the probes deadlocked XLA:CPU's executor in jaxlib 0.10.2 at run time:
    no CPU use, threads waiting on a futex.)
    """
    coords = ([0] if free_phi else []) + ([] if tied else [1])
    deltas = {0: 0.5 * d_phi, 1: 0.5 * d_psi}
    schedule = [(c, kind, deltas[c] * 0.35**k) for k in range(rounds) for c in coords
                for kind in range(3)]  # fmt: skip
    if not schedule:
        return phi, psi, u, f
    which = jnp.asarray([c for c, _, _ in schedule])
    kinds = jnp.asarray([kd for _, kd, _ in schedule])
    steps_ = jnp.asarray([d for _, _, d in schedule])
    e_phi = _site_eig(problem, phi)
    e_psi = e_phi if tied else _site_eig(problem, psi)

    def body(n, state):
        phi, psi, e_phi, e_psi, u, f, centre, f0, fm, fp = state
        c, kind, delta = which[n], kinds[n], steps_[n]
        ang = jnp.where(c == 0, phi, psi)
        active = ang > 0
        s = jnp.log(jnp.tan(jnp.where(active, ang, 1.0)))
        # a new triple starts at the current best point
        centre = jnp.where(kind == 0, s, centre)
        f0 = jnp.where(kind == 0, f, f0)
        s_new = jnp.where(kind == 0, centre - delta, jnp.where(
            kind == 1, centre + delta, _parabola_step(centre, f0, fm, fp, delta)))  # fmt: skip
        a = jnp.where(active, jnp.arctan(jnp.exp(s_new)), ang)
        e_a = _site_eig(problem, a)
        on_phi = (c == 0) | tied

        def pick(x, y):
            return jax.tree.map(lambda p, q: jnp.where(on_phi, p, q), x, y)

        p_phi, e_pphi = pick((a, e_a), (phi, e_phi))
        p_psi, e_ppsi = (p_phi, e_pphi) if tied else jax.tree.map(
            lambda p, q: jnp.where(c == 1, p, q), (a, e_a), (psi, e_psi))  # fmt: skip
        uu, ff = _evaluate(tips, problem, p_phi, p_psi, e_pphi, e_ppsi, u, free_scale, steps)
        ff = jnp.where(active, ff, -jnp.inf)
        fm = jnp.where(kind == 0, ff, fm)
        fp = jnp.where(kind == 1, ff, fp)
        take = ff > f

        def sel(new, old):
            return jnp.where(take.reshape(take.shape + (1,) * (new.ndim - 1)), new, old)

        phi, psi = sel(p_phi, phi), sel(p_psi, psi)
        e_phi = jax.tree.map(sel, e_pphi, e_phi)
        e_psi = jax.tree.map(sel, e_ppsi, e_psi)
        return phi, psi, e_phi, e_psi, sel(uu, u), jnp.maximum(ff, f), centre, f0, fm, fp

    init = (phi, psi, e_phi, e_psi, u, f, f, f, f, f)
    phi, psi, _, _, u, f, *_ = lax.fori_loop(0, len(schedule), body, init)
    return phi, psi, u, f


def _best_of_grid(f, u, phis, psis):
    """Per-site best grid combination: ``(phi, psi, u, f)``."""
    site_count, i_count, j_count = f.shape
    flat = jnp.argmax(f.reshape(site_count, -1), axis=1)
    i, j = flat // j_count, flat % j_count
    rows = jnp.arange(site_count)
    return phis[i], (phis[i] if psis is None else psis[j]), u[rows, i, j], f[rows, i, j]


# --------------------------------------------------------------------------- alpha = 0 face
def _zero_alpha(tips, problem, chis, steps, rounds, u0):
    """``alpha = 0``: ``(beta, beta_bg) = exp(u) (cos chi, sin chi)``, the ``R_N`` eigensystem
    shared by both classes and all sites. Grid over ``chis``, then parabolic steps in
    ``log tan chi`` (no ``eigh``). Returns ``(chi, u, f)``."""
    e = _eig(problem, jnp.zeros(()), jnp.ones(()))
    eig = _stack(e, e, True)
    tip_w = _tips(tips, problem, eig, True)
    site_count = tips.shape[0]

    def at(chi, u, scan_grid=False):
        mult = jnp.stack([jnp.cos(chi), jnp.sin(chi)], -1) * jnp.ones((site_count, 1))
        u_max = math.log(UPPER) - jnp.log(jnp.maximum(jnp.cos(chi), jnp.sin(chi)))
        return _profile(lambda v: _class_loglik(v, tip_w, problem, eig, mult, True), u, True,
                        steps, scan_grid, u_max)  # fmt: skip

    def step(u, chi):
        ub, fb = at(chi, u, scan_grid=True)
        return ub, (fb, ub)

    f, u = lax.scan(step, u0, chis)[1]  # [K, site]
    k = jnp.argmax(f, axis=0)
    rows = jnp.arange(site_count)
    chi, u, f = chis[k], u[k, rows], f[k, rows]
    interior = (chi > 0) & (chi < math.pi / 2)
    s = jnp.log(jnp.tan(jnp.where(interior, chi, 1.0)))
    delta = 0.5 * math.log(_CHI_RATIO[1] / _CHI_RATIO[0])
    for _ in range(rounds):
        sides = jnp.stack([s - delta, s + delta])  # one after another (see _refine_face)
        _, (us, fs) = lax.scan(lambda c, x, u=u: (c, at(jnp.arctan(jnp.exp(x)), u)), None, sides)
        tried = [(sides[k], us[k], fs[k]) for k in (0, 1)]
        v = _parabola_step(s, f, tried[0][2], tried[1][2], delta)
        tried.append((v, *at(jnp.arctan(jnp.exp(v)), u)))
        for s_new, uu, ff in tried:
            take = interior & (ff > f)
            s, u, f = jnp.where(take, s_new, s), jnp.where(take, uu, u), jnp.where(take, ff, f)
        delta = 0.35 * delta
    return jnp.where(interior, jnp.arctan(jnp.exp(s)), chi), u, f


# --------------------------------------------------------------------------- driver
def _driver(tips, problem, free_scale: bool, nuisance: bool, steps: int, rounds: int):
    """Null and alternative for every site; see the module docstring. Returns
    ``(alpha, beta, beta_bg, null_rate, null_bg, f_alt, f_null)``."""
    site_count = tips.shape[0]
    quarter = jnp.full((1,), math.pi / 4)
    phis = jnp.asarray(_angles(_TEST_OMEGA))
    psis = jnp.asarray(_angles(_BG_OMEGA)) if nuisance else None
    d_phi = math.log(_TEST_OMEGA[1] / _TEST_OMEGA[0])
    d_psi = math.log(_BG_OMEGA[1] / _BG_OMEGA[0])
    zeros = jnp.zeros(site_count)
    # r-grid start at the null angle (the profile in r can have a local maximum)
    if free_scale:
        e = _shared_eig(problem, quarter[0])
        eig = _stack(e, e, True)
        tip_w = _tips(tips, problem, eig, True)
        mult = jnp.full((site_count, 2), math.sqrt(2.0))
        u0, _ = _profile(lambda v: _class_loglik(v, tip_w, problem, eig, mult, True), zeros,
                         True, steps, scan_grid=True, u_max=math.log(UPPER))  # fmt: skip
    else:
        u0 = zeros
    # ---- null: phi = pi/4 (alpha = beta), psi free with a nuisance
    if nuisance:
        f, u = _grid_face(tips, problem, quarter, psis, free_scale, steps, u0)
        phi_n, psi_n, u_n, f_n = _best_of_grid(f, u, quarter, psis)
        phi_n, psi_n, u_n, f_n = _refine_face(tips, problem, phi_n, psi_n, u_n, f_n, free_scale,
                                              False, False, rounds, steps, d_phi, d_psi)  # fmt: skip
    else:
        f, u = _grid_face(tips, problem, quarter, None, free_scale, steps, u0)
        phi_n, psi_n, u_n, f_n = _best_of_grid(f, u, quarter, None)
    a_n = jnp.where(free_scale, jnp.exp(u_n), 1.0)
    null_rate, null_bg = a_n, a_n * jnp.tan(psi_n)
    if free_scale and nuisance:  # alpha = beta = 0 on test branches, beta_bg free
        _, u_z, f_z = _zero_alpha(tips, problem, jnp.full((1,), math.pi / 2), steps, 0,
                                  jnp.log(jnp.maximum(null_bg, 1e-9)))  # fmt: skip
        z = f_z > f_n
        null_rate = jnp.where(z, 0.0, null_rate)
        null_bg = jnp.where(z, jnp.exp(u_z), null_bg)
        f_n = jnp.maximum(f_n, f_z)
    # ---- alternative, alpha > 0. Every stage starts from the previous one's result, so the
    # stages also run one after another: independent loops running concurrently deadlocked
    # XLA:CPU's executor (jaxlib 0.10.2; no CPU use, threads waiting on a futex)
    u1 = jnp.where(f_n > -jnp.inf, jnp.log(jnp.maximum(null_rate, 1e-9)), u0) if free_scale else u0
    f, u = _grid_face(tips, problem, phis, psis, free_scale, steps, u1)
    phi, psi, u, f_a = _best_of_grid(f, u, phis, psis)
    phi, psi, u, f_a = _refine_face(tips, problem, phi, psi, u, f_a, free_scale, not nuisance,
                                    True, rounds, steps, d_phi, d_psi)  # fmt: skip
    alpha = jnp.exp(u) if free_scale else jnp.ones(site_count)
    beta = alpha * jnp.tan(phi)
    beta_bg = alpha * jnp.tan(psi) if nuisance else beta
    # ---- alternative, alpha = 0 (its own face)
    if free_scale and nuisance:
        chis = jnp.asarray(np.concatenate([[0.0], np.arctan(_CHI_RATIO), [math.pi / 2]]))
        chi, u_z, f_z = _zero_alpha(tips, problem, chis, steps, rounds,
                                    jnp.log(jnp.maximum(beta, 1e-9)))  # fmt: skip
        z = f_z > f_a
        r = jnp.exp(u_z)
        alpha = jnp.where(z, 0.0, alpha)
        beta = jnp.where(z, r * jnp.where(chi >= math.pi / 2, 0.0, jnp.cos(chi)), beta)
        beta_bg = jnp.where(z, r * jnp.sin(chi), beta_bg)
        f_a = jnp.maximum(f_a, f_z)
    # ---- the null is nested in the alternative
    use_null = f_n > f_a
    alpha = jnp.where(use_null, null_rate, alpha)
    beta = jnp.where(use_null, null_rate, beta)
    beta_bg = jnp.where(use_null, null_bg, beta_bg)
    return alpha, beta, beta_bg, null_rate, null_bg, jnp.maximum(f_a, f_n), f_n


_OPTIONS = site_compiler_options()  # LLVM level 1 on the CPU (phylojax/xla_flags.py)
_DRIVER = jax.jit(_driver, static_argnums=(2, 3, 4, 5), compiler_options=_OPTIONS)
_CHUNKED = jax.jit(lambda tips, problem, *static: lax.map(lambda t: _driver(t, problem, *static),
                                                         tips), static_argnums=(2, 3, 4, 5),
                   compiler_options=_OPTIONS)  # fmt: skip


def _polish(problem, tips, x0, config, iterations):
    """optax L-BFGS refinement (:func:`.site_general._refine`) of every site from ``x0``, sites
    one after another (``lax.map``)."""
    from .site_general import _refine

    return lax.map(lambda a: _refine(a[0], a[1], problem, config, iterations), (x0, tips))


_POLISH = jax.jit(_polish, static_argnums=(3, 4), compiler_options=_OPTIONS)


def fit_sites_classes(problem: SiteProblem, tips, *, srv: bool = True, steps: int = 3,
                      rounds: int = 3, polish: int = 4) -> SiteFits:  # fmt: skip
    """Null and alternative fits for every site (``tips [site, taxon, state]``), batched.

    For the configurations the fast path does not cover: a nuisance ``beta`` on background
    branches (``problem.has_background``) and/or ``srv=False`` (``alpha = 1``). The alternative
    is then polished by ``polish`` iterations of optax L-BFGS (:mod:`.site_general`) from the
    batched optimum, and the better point kept. On CD2 ``--branches Internal`` with HyPhy's
    global fit the coordinate-wise refinement alone ends 0.043 LRT units below HyPhy at codon
    126 and changes its class, also with 10 rounds or 2 polish iterations; 4 give HyPhy's
    classification everywhere (min ΔLRT −0.023; ``benchmarks/site_classes_variants.py``).

    Run it in a one-CPU process (:mod:`.isolated`): with two XLA threads it deadlocks XLA:CPU
    (jaxlib 0.10.2) at random.
    """
    tips = np.asarray(tips)
    site_count, _, state_count = tips.shape
    nuisance = bool(problem.has_background)
    chunk, padded = _fast_layout(np.shape(problem.operations)[0], site_count, state_count,
                                 _CLASS_STEP)  # fmt: skip
    if padded > site_count:
        tips = np.concatenate([tips, np.repeat(tips[:1], padded - site_count, 0)])
    static = (bool(srv), nuisance, steps, rounds)
    if padded == chunk:
        out = _DRIVER(to_device(tips), problem, *static)
    else:
        out = _CHUNKED(to_device(tips.reshape((-1, chunk) + tips.shape[1:])), problem, *static)
        out = [o.reshape(-1) for o in out]
    alpha, beta, beta_bg, null_rate, null_bg, f_alt, f_null = (np.asarray(o)[:site_count] for o in out)
    if polish:
        cols = ([alpha] if srv else []) + [beta] + ([beta_bg] if nuisance else [])
        x, f = _POLISH(problem, jnp.asarray(tips[:site_count]), jnp.asarray(np.column_stack(cols)),
                       (bool(srv), nuisance, False), polish)  # fmt: skip
        x, f = np.asarray(x), np.asarray(f)
        better = f > f_alt
        k = 0
        if srv:
            alpha = np.where(better, x[:, 0], alpha)
            k = 1
        beta = np.where(better, x[:, k], beta)
        if nuisance:
            beta_bg = np.where(better, x[:, k + 1], beta_bg)
        f_alt = np.maximum(f_alt, f)
    nan = np.full(site_count, np.nan)
    if not nuisance:
        beta_bg, null_bg = nan, nan
    if not srv:
        null_rate = np.ones(site_count)
    return SiteFits(alpha, beta, beta_bg, null_rate, null_bg, f_alt, f_null)


# --------------------------------------------------------------------------- profile (--ci)
# background-angle starts of the profile over the nuisance: psi = 0 and beta_bg / alpha of 1e-2..1e2
_CI_BG = _angles(np.array([1e-2, 1e-1, 1.0, 1e1, 1e2]))
_RECOUPLE = 1  # alternations of (psi re-coupled to beta_bg, Newton in u) per start


def _ci_profile(tips, problem, phi, starts, free_scale: bool, steps: int, rounds: int):
    """Profile log-likelihood at per-site test angles ``phi`` (``beta = alpha tan phi``): the
    maximum over the nuisance (``psi``, and ``u = log alpha`` with ``free_scale``) of every site.

    ``starts [site, k, 2]``: per-site ``(psi, u)`` starts (the alternative's and the null's MLEs,
    the optimum at a neighbouring angle); the shared background angles ``_CI_BG`` are starts too.
    From each start ``u`` takes the best of the r-grid, then Newton. At a fixed ``beta / alpha``
    the best ``alpha`` moves with the ratio, and at a fixed ``psi`` moving ``alpha`` drags
    ``beta_bg = alpha tan psi`` along, so every per-site start is also tried *re-coupled*: ``psi``
    reset to keep the start's ``beta_bg`` at the new ``alpha``, then Newton again. The best start
    is refined coordinate-wise in ``psi`` (:func:`_refine_face`). With ``free_scale`` the
    ``alpha = beta = 0`` point (``beta_bg`` free), which lies on every profile line, is a
    candidate too. Returns ``(f, psi, u)``, each ``[site]`` (``psi, u`` of the best interior point).
    """
    site_count = tips.shape[0]
    e_phi = _site_eig(problem, phi)

    def at(psi, e_bg, u, scan_grid):
        eig = _stack(e_phi, e_bg, False)
        tip_w = _tips(tips, problem, eig, False)
        mult = _multipliers(phi, psi)
        return _profile(lambda v: _class_loglik(v, tip_w, problem, eig, mult, False), u,
                        free_scale, steps, scan_grid and free_scale,
                        _u_bound(jnp.tan(phi), jnp.tan(psi)))  # fmt: skip

    e_grid = jax.vmap(lambda p: _shared_eig(problem, p))(jnp.asarray(_CI_BG))
    u_mid = jnp.mean(starts[:, :, 1], axis=1)
    k_site, k_grid = starts.shape[1], len(_CI_BG)

    # one start after another (a scan; independent loops side by side deadlocked XLA:CPU, see
    # _refine_face): the per-site starts with their own eigensystems, then the shared angles
    def start(carry, k):
        psi_b, u_b, f_b = carry
        own = k < k_site
        j = jnp.minimum(k, k_site - 1)
        g = jnp.clip(k - k_site, 0, k_grid - 1)
        psi = jnp.where(own, starts[:, j, 0], jnp.asarray(_CI_BG)[g])
        u_s = jnp.where(own, starts[:, j, 1], u_mid)
        e_bg = lax.cond(own, lambda: _site_eig(problem, psi), lambda: jax.tree.map(
            lambda a: jnp.broadcast_to(a[g], (site_count,) + a.shape[1:]), e_grid))  # fmt: skip
        uu, ff = at(psi, e_bg, u_s, True)

        def recoupled():  # _RECOUPLE alternations
            def once(_, c):
                p1, u1, f1, u_ref = c
                # beta_bg = alpha tan psi kept at the start's value, within [0, UPPER]
                t = jnp.minimum(jnp.tan(p1) * jnp.exp(jnp.clip(u_ref - u1, -60.0, 60.0)),
                                UPPER * jnp.exp(-u1))  # fmt: skip
                p2 = jnp.where(p1 > 0, jnp.arctan(t), 0.0)
                u2, f2 = at(p2, _site_eig(problem, p2), u1, False)
                better = f2 > f1
                return (jnp.where(better, p2, p1), jnp.where(better, u2, u1),
                        jnp.maximum(f2, f1), jnp.where(better, u1, u_ref))  # fmt: skip

            return lax.fori_loop(0, _RECOUPLE, once, (psi, uu, ff, u_s))[:3]

        psi, uu, ff = lax.cond(own & free_scale, recoupled, lambda: (psi, uu, ff))
        take = ff > f_b
        return (jnp.where(take, psi, psi_b), jnp.where(take, uu, u_b), jnp.maximum(ff, f_b)), None

    init = (starts[:, 0, 0], starts[:, 0, 1], jnp.full(site_count, -jnp.inf))
    (psi, u, f), _ = lax.scan(start, init, jnp.arange(k_site + k_grid))
    d_psi = math.log(_BG_OMEGA[1] / _BG_OMEGA[0])
    _, psi, u, f = _refine_face(tips, problem, phi, psi, u, f, free_scale, False, False, rounds,
                                steps, 0.0, d_psi)  # fmt: skip
    if free_scale:
        _, _, f_z = _zero_alpha(tips, problem, jnp.full((1,), math.pi / 2), steps, 0, u)
        f = jnp.maximum(f, f_z)
    return f, psi, u


_CI_PROFILE = jax.jit(_ci_profile, static_argnums=(4, 5, 6), compiler_options=_OPTIONS)
_CI_CHUNKED = jax.jit(
    lambda tips, problem, phi, starts, *static: lax.map(
        lambda a: _ci_profile(a[0], problem, a[1], a[2], *static), (tips, phi, starts)),
    static_argnums=(4, 5, 6), compiler_options=_OPTIONS)  # fmt: skip


def profile_classes(problem: SiteProblem, tips, phi, starts, *, srv: bool = True,
                    steps: int = 3, rounds: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Profile log-likelihood at test angles ``phi [site]`` with the nuisance (background angle
    ``psi``, and ``u = log alpha`` under ``srv``) re-optimised from the ``starts [site, k, (psi,
    u)]`` (:func:`_ci_profile`); returns ``(f, psi, u)`` as numpy ``[site]``. Sites are padded
    and chunked as in :func:`fit_sites_classes`, so repeated calls (a root search) reuse one
    compiled program. Run it where
    :func:`fit_sites_classes` runs (a one-CPU process)."""
    tips = np.asarray(tips)
    site_count, _, state_count = tips.shape
    chunk, padded = _fast_layout(np.shape(problem.operations)[0], site_count, state_count,
                                 _CLASS_STEP)  # fmt: skip

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.repeat(a[:1], padded - site_count, 0)]) if padded > site_count else a

    args = [pad(a) for a in (tips, phi, starts)]
    static = (bool(srv), int(steps), int(rounds))
    if padded == chunk:
        out = _CI_PROFILE(jnp.asarray(args[0]), problem, *(jnp.asarray(a) for a in args[1:]), *static)
    else:
        shaped = [jnp.asarray(a.reshape((-1, chunk) + a.shape[1:])) for a in args]
        out = _CI_CHUNKED(shaped[0], problem, *shaped[1:], *static)
    return tuple(np.asarray(o).reshape(-1)[:site_count] for o in out)
