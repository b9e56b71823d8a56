"""FEL per-site fits under ``--srv No`` with every branch tested: a one-dimensional profile in beta.

Without synonymous rate variation alpha is fixed at 1 (the global synonymous rate), so a site's
alternative has one parameter, ``beta``, and the null (alpha = beta = 1, nested) none
(DESIGN.md §3). Site matrices are ``P_b = exp(t_b (R_S + beta R_N) diag(pi))``.

* **Grid.** ``beta`` on a grid log-spaced over ``[1e-6, 10000]`` plus ``beta = 0``; every grid
  value's eigensystem is shared by *all* sites, so the grid costs one ``eigh`` per value and one
  matrix-matrix product per branch for all sites together (the fast path's eigen-coordinate
  pass of :mod:`.site_fits`, at one scale).
* **Refinement.** Successive parabolic interpolation in ``log beta`` inside the bracket of the
  best grid value's neighbours, one per-site ``eigh`` per round.
* **Result.** The best *evaluated* point of grid and refinement (``beta = 0`` and the null
  ``beta = 1`` are candidates), so nothing stalls on a boundary and ``l_alt >= l_null``.

One compiled function per problem shape; sites padded to the fast path's buckets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..host import to_device
from ..xla_flags import site_compiler_options
from .site_fits import (
    UPPER,
    SiteFits,
    SiteProblem,
    _batch_loglik,
    _bucket,
    _eig,
    _parabolic_probe,
    _tip_coordinates,
)


def _at_beta(beta, tips, problem, shared: bool):
    """Site log-likelihoods at alpha = 1 and ``beta`` (scalar shared by all sites, or per site)."""
    if shared:
        eig = _eig(problem, 1.0, beta)
    else:
        eig = jax.vmap(lambda b: _eig(problem, 1.0, b))(beta)
    zero = jnp.zeros((tips.shape[0], 1), tips.dtype)  # u = log r = 0: the matrix as it is
    return _batch_loglik(zero, _tip_coordinates(tips, eig, shared), problem, eig, shared)[:, 0]


def _driver(tips, problem, grid, refine_rounds: int):
    """``grid [K]``: ``0`` then increasing positive values. Returns
    ``(beta, alt_loglik, null_loglik)`` per site."""
    site_count = tips.shape[0]
    k_count = grid.shape[0]
    f_null = _at_beta(jnp.asarray(1.0, tips.dtype), tips, problem, True)
    grid_f = lax.map(lambda b: _at_beta(b, tips, problem, True), grid).T  # [site, K]
    # refinement coordinate s = log beta; beta = 0 gets a nominal s one step below the smallest
    # positive value and takes part only as a candidate, never as a bracket end
    s_pos = jnp.log(grid[1:])
    s_grid = jnp.concatenate([s_pos[:1] - (s_pos[1] - s_pos[0]), s_pos])
    k = jnp.argmax(grid_f, axis=1)
    lo = s_grid[jnp.clip(k - 1, 1, k_count - 1)]
    hi = s_grid[jnp.clip(k + 1, 1, k_count - 1)]
    centre = jnp.clip(k, 2, k_count - 2)
    idx = jnp.stack([centre - 1, centre, centre + 1], 1)
    xs, fs = s_grid[idx], jnp.take_along_axis(grid_f, idx, 1)

    def round_(_, state):
        xs, fs, best_s, best_f = state
        xb = jnp.take_along_axis(xs, jnp.argmax(fs, axis=1)[:, None], 1)[:, 0]
        cand = _parabolic_probe(xs, fs, xb, lo, hi, 1e-9)
        fc = _at_beta(jnp.exp(cand), tips, problem, False)
        replace = jax.nn.one_hot(jnp.argmin(fs, axis=1), 3, dtype=bool) & (
            fc > jnp.min(fs, axis=1))[:, None]  # fmt: skip
        gain = fc > best_f
        return (jnp.where(replace, cand[:, None], xs), jnp.where(replace, fc[:, None], fs),
                jnp.where(gain, cand, best_s), jnp.maximum(fc, best_f))  # fmt: skip

    init = (xs, fs, jnp.zeros(site_count, tips.dtype), jnp.full(site_count, -jnp.inf, tips.dtype))
    _, _, s_ref, f_ref = lax.fori_loop(0, refine_rounds, round_, init)
    g_best = jnp.max(grid_f, axis=1)
    from_grid = g_best >= f_ref
    beta = jnp.where(from_grid, grid[jnp.argmax(grid_f, axis=1)], jnp.exp(s_ref))
    f_alt = jnp.maximum(g_best, f_ref)
    use_null = f_null > f_alt  # the null (beta = 1) is nested in the alternative
    return jnp.where(use_null, 1.0, beta), jnp.maximum(f_alt, f_null), f_null


_OPTIONS = site_compiler_options()  # LLVM level 1 on the CPU (phylojax/xla_flags.py)
_DRIVER = jax.jit(_driver, static_argnums=(3,), compiler_options=_OPTIONS)
_PER_SITE = jax.jit(lambda beta, tips, problem: _at_beta(beta, tips, problem, False),
                    compiler_options=_OPTIONS)


def profile_beta(problem: SiteProblem, tips, beta) -> np.ndarray:
    """Site log-likelihoods at alpha = 1 and per-site ``beta`` (the ``--srv No`` profile has no
    nuisance parameter: it is the likelihood itself)."""
    return np.asarray(_PER_SITE(to_device(beta), to_device(tips), problem))


def compile_srv_no_later(problem: SiteProblem, site_count: int, taxon_count: int,
                         state_count: int, dtype=np.float64, grid_size: int = 40,
                         refine_rounds: int = 7, step: int = 64):  # fmt: skip
    """Start compiling :func:`fit_sites_srv_no`'s program in the background (:mod:`phylojax.aot`)."""
    from .. import aot

    tips = jax.ShapeDtypeStruct((_bucket(site_count, step), taxon_count, state_count), dtype)
    grid = jax.ShapeDtypeStruct((grid_size,), dtype)
    return aot.compile_later(_DRIVER, tips, problem, grid, refine_rounds)


def beta_grid(size: int = 40, smallest: float = 1e-6) -> np.ndarray:
    """``[0, smallest, ..., UPPER]``, log-spaced (``size`` values in all)."""
    return np.concatenate([[0.0], np.geomspace(smallest, UPPER, size - 1)])


def fit_sites_srv_no(problem: SiteProblem, tips, *, grid_size: int = 40,
                     refine_rounds: int = 7, step: int = 64) -> SiteFits:  # fmt: skip
    """``--srv No`` site fits without background branches; ``tips [site, taxon, state]``.

    Defaults measured against ``grid_size=120, refine_rounds=20``: every site's alternative lnL
    within 3e-13 on CD2 (174 variable patterns) and 3e-10 on HepatitisD (161)
    (``python benchmarks/site_stage_variants.py --set CD2.nex --srv-no``). ``step``: the site
    padding's granularity above 64 sites (:func:`.site_fits._bucket`)."""
    if problem.has_background:
        raise ValueError("fit_sites_srv_no: background branches need the general path")
    tips = np.asarray(tips)
    site_count = tips.shape[0]
    padded = _bucket(site_count, step)
    if padded > site_count:
        tips = np.concatenate([tips, np.repeat(tips[:1], padded - site_count, 0)])
    grid = to_device(beta_grid(grid_size), tips.dtype)
    beta, f_alt, f_null = (np.asarray(o)[:site_count] for o in
                           _DRIVER(to_device(tips), problem, grid, refine_rounds))  # fmt: skip
    ones, nan = np.ones(site_count), np.full(site_count, np.nan)
    return SiteFits(alpha=ones, beta=beta, beta_background=nan, null_rate=ones,
                    null_beta_background=nan, alt_loglik=f_alt, null_loglik=f_null)  # fmt: skip

