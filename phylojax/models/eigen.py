"""Eigen-cached matrix exponentials of reversible rate matrices.

A reversible ``Q = R diag(pi)`` is similar to the symmetric ``S = Pi^{1/2} Q Pi^{-1/2}``, so one
``eigh(S) = U diag(lam) U^T`` per parameter value gives every ``P(t) = exp(Q t)`` as
``Pi^{-1/2} U diag(exp(lam t)) U^T Pi^{1/2}`` -- no matrix inverse, and the decomposition is reused
for every branch and rate category.

Gradients: JAX's ``eigh`` derivative divides by ``lam_i - lam_j`` and is inf/NaN wherever eigenvalues
repeat (JC69, K80, F81, GTR at equal frequencies). We never differentiate ``eigh``: the
decomposition is computed on ``stop_gradient(S)`` and ``exp(S t)`` gets a custom JVP from the
Daleckii-Krein formula, ``d exp(S t) = U (F o (U^T dS U)) U^T`` with the divided differences
``F_ij = (e^{lam_i t} - e^{lam_j t}) / (lam_i - lam_j)``, which tend to ``t e^{lam_i t}`` as
``lam_j -> lam_i`` (evaluated with ``expm1`` for accuracy). This is smooth at degenerate points.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class Eigensystem(eqx.Module):
    """Eigendecomposition of a reversible rate matrix, cached for many branch lengths.

    ``eigenvectors`` V and ``inverse_eigenvectors`` V^-1 satisfy ``Q = V diag(eigenvalues) V^-1``.
    ``symmetric`` is S (carrying gradients); ``orthogonal``/``eigenvalues`` come from
    ``eigh(stop_gradient(S))`` and are used only through :func:`transition_probs`' custom JVP.
    """

    symmetric: Float[Array, "state state"]
    eigenvalues: Float[Array, " state"]
    orthogonal: Float[Array, "state state"]
    sqrt_frequencies: Float[Array, " state"]

    @property
    def eigenvectors(self) -> Float[Array, "state state"]:
        return self.orthogonal / self.sqrt_frequencies[:, None]

    @property
    def inverse_eigenvectors(self) -> Float[Array, "state state"]:
        return self.orthogonal.T * self.sqrt_frequencies[None, :]

    @property
    def state_count(self) -> int:
        return self.eigenvalues.shape[-1]


def eigensystem(
    rate_matrix: Float[Array, "state state"], frequencies: Float[Array, " state"]
) -> Eigensystem:
    """Decompose a reversible ``rate_matrix`` with stationary ``frequencies`` (one ``eigh``)."""
    sqrt_pi = jnp.sqrt(frequencies)
    sym = sqrt_pi[:, None] * rate_matrix / sqrt_pi[None, :]
    sym = 0.5 * (sym + sym.T)  # exact symmetry for eigh; Q is reversible so this changes nothing
    lam, u = jnp.linalg.eigh(jax.lax.stop_gradient(sym))
    return Eigensystem(sym, lam, u, sqrt_pi)


def _divided_differences(lam: Array, t: Array) -> Array:
    """``F[..., i, j] = (e^{lam_i t} - e^{lam_j t}) / (lam_i - lam_j)``, ``t e^{lam_i t}`` at ties.

    Two forms, chosen per entry by ``x = |lam_i - lam_j| t``: for ``x >= 1e-3`` the difference
    quotient itself (its cancellation costs at most ~1e-13 relative there); below, ``t e^{min t}
    expm1(x)/x`` with the series ``1 + x/2 + x^2/6 + x^3/24`` (the next term is < 1e-14). Only
    the ``e^{lam t}`` vector is exponentiated (``e^{min(lam_i, lam_j) t}`` is the smaller of two
    of its entries, ``t >= 0``), not every entry (1.38 -> 0.19 ms for 64 codon branches); and the
    quotient stays finite for long branches, where ``e^{lo t} expm1(x)/x`` was ``0 * inf``
    (``x > 709``). No NaN leaks into gradients (safe denominators under ``where``).
    """
    t = jnp.asarray(t)
    t2 = t[..., None, None]
    e = jnp.exp(lam * t[..., None])
    d = lam[:, None] - lam[None, :]
    x = jnp.abs(d) * t2
    quotient = (e[..., :, None] - e[..., None, :]) / jnp.where(d == 0, 1.0, d)
    lo = jnp.minimum(e[..., :, None], e[..., None, :])
    series = t2 * lo * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x / 24.0)))
    return jnp.where(x < 1e-3, series, quotient)


@jax.custom_jvp
def _sym_expm(sym: Array, lam: Array, u: Array, t: Array) -> Array:
    """``exp(sym * t)`` for every ``t`` (any shape), given ``sym = u diag(lam) u^T``.

    Written as ``I + u diag(expm1(lam t)) u^T`` (``u`` is orthogonal): the off-diagonal entries of
    P for very short branches keep full relative precision, which float32 needs (with ``exp``
    they round to zero at t ~ 1e-8 and conflicting sister tips give lnL = -inf).
    """
    return _expm_from_eigen(lam, u, t)


def _expm_from_eigen(lam, u, t):
    eye = jnp.eye(lam.shape[-1], dtype=lam.dtype)
    return eye + jnp.einsum("ik,...k,jk->...ij", u, jnp.expm1(lam * t[..., None]), u)


@_sym_expm.defjvp
def _sym_expm_jvp(primals, tangents):
    sym, lam, u, t = primals
    dsym, _, _, dt = tangents  # lam and u are stop_gradient'ed: their tangents are zero
    out = _expm_from_eigen(lam, u, t)
    # Daleckii-Krein for the matrix argument, F o (U^T dS U), and d/dt exp(S t) = U diag(lam
    # e^{lam t}) U^T on its diagonal: one eigen-basis matrix per time, taken back by U once. In
    # reverse mode that is U^T G U per time (2 products of ``state^3``) and dt from its diagonal,
    # where two separate terms cost a third product per time (HIV_RT's MG94 value-and-gradient,
    # 949 branches: 412-419 -> 390-391 ms; benchmarks/RESULTS_fel.md).
    inner = _divided_differences(lam, t) * (u.T @ dsym @ u)
    diag = jnp.arange(lam.shape[-1])
    inner = inner.at[..., diag, diag].add(lam * jnp.exp(lam * t[..., None]) * dt[..., None])
    return out, jnp.einsum("ik,...kl,jl->...ij", u, inner, u)


def transition_probs(
    eig: Eigensystem, times: Float[Array, "*batch"]
) -> Float[Array, "*batch state state"]:
    """``P(t) = exp(Q t)`` for every entry of ``times`` (e.g. ``branch x category``).

    Rows are "from" states: ``P[..., i, j] = Pr(j at the end | i at the start)``.
    """
    times = jnp.asarray(times, dtype=eig.eigenvalues.dtype)
    p_sym = _sym_expm(eig.symmetric, eig.eigenvalues, eig.orthogonal, times)
    p = p_sym * (eig.sqrt_frequencies[None, :] / eig.sqrt_frequencies[:, None])
    # Clip tiny negative round-off (|.| ~ 1e-17) so that log(P v) is always defined, without
    # touching the derivative: at t = 0 the off-diagonal entries are exactly 0 and a plain
    # maximum would halve their (positive) derivative.
    return p + jax.lax.stop_gradient(jnp.maximum(p, 0.0) - p)


def transition_times_vector(eig: Eigensystem, t: Array, v: Array) -> Array:
    """``P(t) @ v`` without forming P: ``V (e^{lam t} * (V^-1 v))`` (no custom derivative)."""
    return eig.eigenvectors @ (jnp.exp(eig.eigenvalues * t) * (eig.inverse_eigenvectors @ v))
