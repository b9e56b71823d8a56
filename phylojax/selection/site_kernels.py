"""Kernels of the FEL fast path (:mod:`.site_fits`) shared by the other site fitters: the
site problem, eigensystems of ``a R_S + b R_N``, the eigen-coordinate pruning pass over many
sites and scales, and safeguarded Newton in ``u = log r`` (central differences).
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
def _eigen_pruning(tip_w, operations, m: int, up, into_eig, noise_tol=None):
    """Scaled pruning with partials in eigen coordinates, ``m`` scales per site; returns the
    root's ``(partial [site, m, state], log scaler [site, m])``.

    ``up(n, w)``: eigen coordinates ``w`` at the bottom of branch ``n`` -> partial (state
    coordinates) at its top; ``into_eig(parent, x)``: a parent's partial -> its eigen coordinates.
    Tips ``tip_w [site, taxon, state]`` are already in eigen coordinates. The per-partial maximum
    is divided out and its log accumulated.

    ``noise_tol``: mark a likelihood as not computed (log scaler ``-inf``) where a partial has no
    positive entry or its most negative entry is below ``-noise_tol`` times its maximum. A
    partial is a sum of positive terms, but ``V (e^{lam r t} w)`` sums terms of both signs: where
    the data need an event that the rates make nearly impossible, the true entries are far below
    the rounding error of that sum (~1e-7 of the terms in float32) and what is left is noise of
    either sign. Unmarked, that noise ranked an impossible angle first for a HepatitisD site
    (dN/dS = 1e-4 ranked at lnL -24.2 in float32; -40.8 in float64) and its fit ended at the null. The
    test is a cheap detector, not a bound: noise that stays positive passes it, which is why the
    fast path also confirms every site's best float32 angle in float64 (:mod:`.site_fits`).
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
        log_scale = jnp.log(safe)
        if noise_tol is not None:
            noise = (mx <= 0) | (jnp.min(x, axis=-1) < -noise_tol * mx)
            log_scale = jnp.where(noise, -jnp.inf, log_scale)
        scalers = lax.dynamic_update_index_in_dim(scalers, sa + sb + log_scale, i, 0)
        return (inner, scalers), None

    inner = jnp.zeros((op_count, site_count, m, state_count), tip_w.dtype)
    scalers = jnp.zeros((op_count, site_count, m), tip_w.dtype)
    (inner, scalers), _ = lax.scan(step, (inner, scalers), operations)
    return inner[-1], scalers[-1]


def _batch_loglik(u, tip_w, problem, eig, shared: bool, noise_tol=None):
    """Site log-likelihoods at scales ``r = exp(u)``: ``u [site, m]``, ``tip_w [site, taxon,
    state]`` tips in eigen coordinates (:func:`_tip_coordinates`).

    ``eig = (to_state, to_eig, lam)`` of ``(cos phi R_S + sin phi R_N) diag(pi)``, one for all
    sites (``shared``) or one per site (leading site axis). ``P_b x = V (e^{lam r t_b} * (V^-1 x))``;
    partials are stored in eigen coordinates, so every branch costs one product back to states
    (per child) and every internal node one product into eigen coordinates: 3 matrix products per
    operation instead of 4, and none for tips. With a shared eigensystem each product is one
    matrix-matrix product over all sites and scales. Scaled pruning (per-partial maximum divided
    out, its log accumulated). ``noise_tol``: ``-inf`` where rounding noise dominates a partial
    (:func:`_eigen_pruning`). Returns ``[site, m]``.
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
                                    lambda parent, x: _product(to_eig, x, shared),
                                    noise_tol)  # fmt: skip
    # pi . x_root = pi . (V w_root) = w_root . (V^T pi)
    root = to_state @ jnp.asarray(problem.frequencies)
    lik = jnp.sum(inner * (root if shared else root[:, None, :]), axis=-1)
    return jnp.log(jnp.maximum(lik, _floor(lik.dtype))) + scalers


def _floor(dtype) -> float:
    """Smallest site likelihood taken for a positive one: 1e-300 in double precision, the
    smallest normal number in lower precisions (1e-300 rounds to 0 in float32)."""
    return 1e-300 if jnp.finfo(dtype).bits >= 64 else float(jnp.finfo(dtype).tiny)


def _in_dtype(dtype, eig, tips, problem):
    """``(eig, tips, problem)`` with every float the pruning pass reads in ``dtype`` (the
    eigensystem itself is computed in the problem's precision first). ``dtype=None``: as they are.
    Used for the passes whose values only rank candidates (grid scans), never for a value that is
    reported or differentiated numerically."""
    if dtype is None:
        return eig, tips, problem
    cast = SiteProblem(problem.syn, problem.nonsyn, jnp.asarray(problem.frequencies, dtype),
                       jnp.asarray(problem.times, dtype), problem.background, problem.operations,
                       problem.has_background)  # fmt: skip
    return tuple(jnp.asarray(e, dtype) for e in eig), jnp.asarray(tips, dtype), cast


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


# Sites per block of the per-site profile. Each site's two 61 x 61 eigenvector matrices are
# read again at every pruning operation, and for all sites at once they do not stay in cache:
# blocks of 4 sites (a lax.map over them) made a refinement round 2.6x faster on rbp3 (1190 ->
# 465 ms, 448 sites) and 1.5x on HepatitisD (RESULTS_fel.md). 0: one block.
PER_SITE_CHUNK = 4


def _profile_per_site_block(phi, u0, tips, problem, steps):
    eig = jax.vmap(lambda p: _eig(problem, jnp.cos(p), jnp.sin(p)))(phi)
    tip_w = _tip_coordinates(tips, eig, False)
    return _newton_log_scale(u0, tip_w, problem, eig, steps, False, _u_max(phi))


def _profile_per_site(phi, u0, tips, problem, steps):
    """Profile over ``r`` with a different ``phi`` (and eigensystem, one batched eigh) per site,
    in blocks of :data:`PER_SITE_CHUNK` sites (one block when the site count is not a multiple)."""
    n, c = phi.shape[0], PER_SITE_CHUNK
    if not c or n % c or n == c:
        return _profile_per_site_block(phi, u0, tips, problem, steps)

    def blocks(a):
        return a.reshape((n // c, c) + a.shape[1:])

    out = lax.map(lambda a: _profile_per_site_block(*a, problem, steps),
                  (blocks(phi), blocks(u0), blocks(tips)))  # fmt: skip
    return tuple(o.reshape(n) for o in out)


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


def _bucket(n: int, step: int = 64) -> int:
    """Padded site count: powers of two up to 64, then multiples of ``step``."""
    if n <= 64:
        return max(8, 1 << max(n - 1, 0).bit_length())
    return -(-n // step) * step
