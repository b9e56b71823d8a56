"""Among-site rate heterogeneity: discrete Gamma (Yang 1994) and invariant sites.

JAX has the regularised incomplete gamma function but not its inverse. :func:`gamma_quantile`
solves ``P(a, x) = p`` by Newton's method and gets its derivative from the implicit function
theorem, ``dx/da = -(dP/da) / (dP/dx)``, so the Gamma shape is differentiable exactly (no finite
differences).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammainc, gammaln
from jaxtyping import Array, Float


@jax.custom_jvp
def gamma_quantile(p: Array, a: Array) -> Array:
    """Quantile of Gamma(shape ``a``, scale 1): ``x`` with ``gammainc(a, x) = p``."""
    p = jnp.asarray(p, dtype=jnp.result_type(a, float))
    a = jnp.asarray(a, dtype=p.dtype)
    # Wilson-Hilferty start, then safeguarded Newton in log x (x stays positive).
    z = jnp.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * p - 1.0)
    c = 1.0 / (9.0 * a)
    wh = a * jnp.power(jnp.maximum(1.0 - c + z * jnp.sqrt(c), 1e-3), 3)
    small = jnp.exp((jnp.log(p) + gammaln(a + 1.0)) / a)  # P(a,x) ~ x^a / Gamma(a+1) near 0
    x0 = jnp.where((a < 1.0) | (wh <= 1e-3 * a), jnp.minimum(small, jnp.maximum(wh, small)), wh)
    log_x = jnp.log(jnp.maximum(x0, 1e-300))

    def body(_, log_x):
        x = jnp.exp(log_x)
        f = gammainc(a, x) - p
        log_pdf = (a - 1.0) * log_x - x - gammaln(a)
        step = f / jnp.exp(log_pdf + log_x)  # d P / d log x = pdf * x
        return log_x - jnp.clip(step, -2.0, 2.0)

    log_x = jax.lax.fori_loop(0, 60, body, log_x)
    return jnp.exp(log_x)


@gamma_quantile.defjvp
def _gamma_quantile_jvp(primals, tangents):
    p, a = primals
    dp, da = tangents
    x = gamma_quantile(p, a)
    pdf = jnp.exp((a - 1.0) * jnp.log(x) - x - gammaln(a))
    dP_da = jax.grad(lambda aa: gammainc(aa, x))(a) if jnp.ndim(a) == 0 else jax.vmap(
        jax.grad(lambda aa, xx: gammainc(aa, xx)), (0, 0)
    )(jnp.broadcast_to(a, x.shape), x)
    return x, (dp - dP_da * da) / pdf


def discrete_gamma_rates(alpha: Array, category_count: int, *, median: bool = False) -> Array:
    """Rates of ``category_count`` equiprobable categories of Gamma(alpha, mean 1).

    Mean rates (Yang 1994, eq. 10; the IQ-TREE/PAML/PhyML default): with cut points ``b_i`` the
    ``i/K`` quantiles of Gamma(alpha, rate alpha), ``r_i = K [P(alpha+1, b_i alpha) - P(alpha+1,
    b_{i-1} alpha)]``. Median rates: the ``(2i-1)/2K`` quantiles, renormalised to mean 1.
    """
    alpha = jnp.asarray(alpha, dtype=float)
    k = category_count
    if k == 1:
        return jnp.ones(1, dtype=alpha.dtype)
    if median:
        probs = (2.0 * jnp.arange(k) + 1.0) / (2.0 * k)
        r = jax.vmap(lambda q: gamma_quantile(q, alpha))(probs) / alpha
        return r * k / r.sum()
    cuts = jax.vmap(lambda q: gamma_quantile(q, alpha))(jnp.arange(1, k) / k)  # in units of 1/alpha
    upper = jnp.concatenate([gammainc(alpha + 1.0, cuts), jnp.ones(1, alpha.dtype)])
    lower = jnp.concatenate([jnp.zeros(1, alpha.dtype), upper[:-1]])
    return k * (upper - lower)


class RateModel(eqx.Module):
    """Rate categories with weights, plus a proportion of invariable sites.

    Category rates are already divided by ``1 - pinv`` (IQ-TREE's convention: the mean rate over
    all sites is 1).
    """

    rates: Float[Array, " category"]
    weights: Float[Array, " category"]
    pinv: Float[Array, ""]

    @property
    def category_count(self) -> int:
        return self.rates.shape[-1]


def rate_model(
    alpha: Array | None = None,
    category_count: int = 1,
    pinv: Array | float = 0.0,
    *,
    median: bool = False,
) -> RateModel:
    """``+G<category_count>{alpha}`` and ``+I{pinv}``; without alpha, a single rate."""
    pinv = jnp.asarray(pinv, dtype=float)
    if alpha is None or category_count <= 1:
        rates = jnp.ones(1)
    else:
        rates = discrete_gamma_rates(alpha, category_count, median=median)
    k = rates.shape[0]
    return RateModel(rates / (1.0 - pinv), jnp.full(k, 1.0 / k), pinv)
