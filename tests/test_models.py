"""Substitution models and the eigen cache against scipy.linalg.expm and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.test_util import check_grads
from scipy.special import gammainc as sp_gammainc
from scipy.stats import gamma as sp_gamma

from phylojax.models import (
    discrete_gamma_rates,
    eigensystem,
    gamma_quantile,
    gtr,
    hky85,
    jc69,
    k80,
    rate_model,
    transition_probs,
)

MODELS = {
    "jc69": jc69(),
    "k80": k80(3.0),
    "hky": hky85(2.5, [0.1, 0.2, 0.3, 0.4]),
    "gtr": gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25]),
    # two coinciding eigenvalues on an ordinary model (DESIGN.md section 2)
    "gtr_degenerate": gtr([1, 2, 1, 1, 2, 1], [0.3, 0.2, 0.2, 0.3]),
}


@pytest.mark.parametrize("name", MODELS)
def test_transition_probs_match_expm_and_invariants(name):
    model = MODELS[name]
    q = np.asarray(model.rate_matrix())
    pi = np.asarray(model.frequencies)
    np.testing.assert_allclose(q.sum(1), 0, atol=1e-14)
    np.testing.assert_allclose(-(pi * np.diag(q)).sum(), 1.0, rtol=1e-14)
    times = jnp.array([0.0, 1e-6, 0.05, 0.3, 2.0, 50.0])
    p = np.asarray(transition_probs(model.eigensystem(), times))
    for t, pt in zip(np.asarray(times), p):
        np.testing.assert_allclose(pt, scipy.linalg.expm(q * t), atol=1e-13)
    np.testing.assert_allclose(p[0], np.eye(4), atol=1e-14)  # P(0) = I
    np.testing.assert_allclose(p.sum(-1), 1, atol=1e-13)  # rows sum to one
    np.testing.assert_allclose(pi @ p[3], pi, atol=1e-13)  # pi P = pi
    ps, pt = transition_probs(model.eigensystem(), jnp.array([0.2, 0.3]))
    np.testing.assert_allclose(ps @ pt, transition_probs(model.eigensystem(), 0.5), atol=1e-13)


def test_jc69_closed_form():
    t = 0.37
    p = transition_probs(jc69().eigensystem(), t)
    same = 0.25 + 0.75 * np.exp(-4 * t / 3)
    np.testing.assert_allclose(np.diag(p), same, rtol=1e-13)
    np.testing.assert_allclose(p[0, 1], 0.25 - 0.25 * np.exp(-4 * t / 3), rtol=1e-12)


def _fd_grad(f, x, eps=1e-6):
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d.flat[i] = eps
        g.flat[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


def _loss(rates, freqs, t):
    p = transition_probs(gtr(rates, freqs).eigensystem(), t)
    weights = jnp.arange(16.0).reshape(4, 4) / 16
    return jnp.sum(jnp.log(p) * weights)


@pytest.mark.parametrize(
    "rates,freqs",
    [
        (np.ones(6), np.full(4, 0.25)),  # JC69: triple eigenvalue
        ([1.0, 3.0, 1.0, 1.0, 3.0, 1.0], np.full(4, 0.25)),  # K80 at equal frequencies
        ([1, 2, 1, 1, 2, 1.0], [0.3, 0.2, 0.2, 0.3]),
        ([1.5, 4.0, 0.8, 1.2, 5.0, 1.0], [0.3, 0.2, 0.25, 0.25]),
    ],
)
def test_gradients_finite_and_equal_finite_differences_at_degenerate_points(rates, freqs):
    rates = jnp.asarray(rates, float)
    freqs = jnp.asarray(freqs, float)
    t = jnp.array([0.1, 0.7])
    g_rates, g_freqs, g_t = jax.grad(_loss, argnums=(0, 1, 2))(rates, freqs, t)
    for g in (g_rates, g_freqs, g_t):
        assert np.all(np.isfinite(g))
    np.testing.assert_allclose(
        g_rates, _fd_grad(lambda r: float(_loss(jnp.asarray(r), freqs, t)), rates), atol=1e-6
    )
    np.testing.assert_allclose(
        g_freqs, _fd_grad(lambda f: float(_loss(rates, jnp.asarray(f), t)), freqs), atol=1e-6
    )
    np.testing.assert_allclose(
        g_t, _fd_grad(lambda tt: float(_loss(rates, freqs, jnp.asarray(tt))), t), atol=1e-6
    )


def _divided_difference_oracle(a: float, b: float, t: float) -> float:
    """``(e^{a t} - e^{b t}) / (a - b)`` entry by entry in Python floats, written without
    cancellation: ``t e^{lo t} expm1(x) / x`` with ``x = |a - b| t`` (``t e^{a t}`` at ties),
    in log space where ``e^{lo t}`` underflows (a different formula from the kernel's)."""
    import math

    lo, hi = min(a, b), max(a, b)
    x = (hi - lo) * t
    if x == 0:
        return t * math.exp(a * t)
    if x > 700:  # expm1(x) overflows: e^{hi t} / (hi - lo) dominates
        return (math.exp(hi * t) - math.exp(lo * t)) / (hi - lo)
    return t * math.exp(lo * t) * math.expm1(x) / x


def test_divided_differences_match_an_entrywise_oracle():
    """Both forms of the kernel (series below x = 1e-3, difference quotient above) against the
    entry-by-entry oracle, over eigenvalue gaps from 0 to 50 and times from 1e-9 to 1e4."""
    from phylojax.models.eigen import _divided_differences

    lam = np.array([0.0, -1e-12, -1e-7, -1e-4, -0.3, -0.30001, -2.0, -50.0])
    times = np.array([0.0, 1e-9, 1e-4, 0.05, 1.0, 30.0, 1e4])
    got = np.asarray(_divided_differences(jnp.asarray(lam), jnp.asarray(times)))
    for k, t in enumerate(times):
        for i, a in enumerate(lam):
            for j, b in enumerate(lam):
                want = _divided_difference_oracle(a, b, t)
                assert abs(got[k, i, j] - want) <= 1e-12 * abs(want) + 1e-300, (a, b, t)


def test_gradients_finite_on_long_branches():
    """A branch so long that ``|lam| t > 709`` (rates x time as the FEL bounds allow): the
    derivative of ``P(t)`` is finite (``e^{lo t} expm1(x)/x`` was ``0 * inf`` there) and is
    ``Q P(t)``, which is ``~0`` at stationarity."""
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    eig = model.eigensystem()

    def total(t, scale):
        return jnp.sum(transition_probs(eig, t * scale) * jnp.arange(16.0).reshape(4, 4))

    for t in (500.0, 1e4):
        g_t, g_s = jax.grad(total, argnums=(0, 1))(jnp.asarray(t), jnp.asarray(1.0))
        assert np.isfinite(g_t) and np.isfinite(g_s) and abs(g_t) < 1e-12
    grads = jax.grad(lambda r: jnp.sum(transition_probs(gtr(r, model.frequencies).eigensystem(),
                                                        jnp.array([1e4]))))(jnp.ones(6))  # fmt: skip
    assert np.all(np.isfinite(grads))


def test_check_grads_forward_and_reverse_at_jc69():
    # First order only: the custom JVP treats the eigenvectors as constants, so second
    # derivatives with respect to the rate matrix are not provided.
    freqs = jnp.full(4, 0.25)
    check_grads(lambda r: _loss(r, freqs, jnp.array([0.3])), (jnp.ones(6),), order=1,
                modes=["fwd", "rev"], eps=1e-4)


def test_eigensystem_has_no_inverse_and_reconstructs_q():
    model = MODELS["gtr"]
    eig = model.eigensystem()
    v, vinv = np.asarray(eig.eigenvectors), np.asarray(eig.inverse_eigenvectors)
    np.testing.assert_allclose(v @ vinv, np.eye(4), atol=1e-13)
    np.testing.assert_allclose(v @ np.diag(eig.eigenvalues) @ vinv, model.rate_matrix(), atol=1e-13)
    eig2 = eigensystem(model.rate_matrix(), model.frequencies)
    np.testing.assert_allclose(eig2.eigenvalues, eig.eigenvalues)


@pytest.mark.parametrize("a", [0.02, 0.3, 1.0, 4.0, 80.0])
def test_gamma_quantile_against_scipy(a):
    p = np.array([1e-4, 0.1, 0.25, 0.5, 0.75, 0.9, 0.9999])
    x = jax.vmap(lambda q: gamma_quantile(q, a))(jnp.asarray(p))
    np.testing.assert_allclose(x, sp_gamma.ppf(p, a), rtol=1e-10)


def _yang_mean_rates(alpha, k):
    cuts = sp_gamma.ppf(np.arange(1, k) / k, alpha, scale=1 / alpha)
    upper = np.r_[sp_gammainc(alpha + 1, cuts * alpha), 1.0]
    return k * np.diff(np.r_[0.0, upper])


@pytest.mark.parametrize("alpha", [0.05, 0.5, 0.7, 2.0, 30.0])
def test_discrete_gamma_mean_rates(alpha):
    r = discrete_gamma_rates(alpha, 4)
    np.testing.assert_allclose(r, _yang_mean_rates(alpha, 4), rtol=1e-10)
    np.testing.assert_allclose(np.mean(r), 1.0, rtol=1e-12)


def test_discrete_gamma_shape_gradient_is_exact():
    g = jax.jacfwd(lambda a: discrete_gamma_rates(a, 4))(0.7)
    eps = 1e-6
    fd = (_yang_mean_rates(0.7 + eps, 4) - _yang_mean_rates(0.7 - eps, 4)) / (2 * eps)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    g_rev = jax.grad(lambda a: discrete_gamma_rates(a, 4)[0])(0.7)
    np.testing.assert_allclose(g_rev, fd[0], rtol=1e-6)


def test_median_rates_and_invariant_scaling():
    r = discrete_gamma_rates(0.5, 4, median=True)
    med = sp_gamma.ppf((2 * np.arange(4) + 1) / 8, 0.5, scale=2.0)
    np.testing.assert_allclose(r, med * 4 / med.sum(), rtol=1e-10)
    rm = rate_model(0.5, 4, 0.2)
    np.testing.assert_allclose(rm.rates, discrete_gamma_rates(0.5, 4) / 0.8, rtol=1e-12)
