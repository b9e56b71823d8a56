"""Reversible substitution models as immutable pytrees.

Every model is a :class:`ReversibleModel`: symmetric exchangeabilities ``R`` and stationary
frequencies ``pi`` with ``Q_ij = R_ij pi_j`` and (by default) ``-sum_i pi_i Q_ii = 1``, one expected
substitution per unit branch length. Nucleotide exchangeabilities are in the order
AC, AG, AT, CG, CT, GT; frequencies in the order A, C, G, T.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .eigen import Eigensystem, eigensystem

_UPPER = np.triu_indices(4, k=1)  # (0,1) AC, (0,2) AG, (0,3) AT, (1,2) CG, (1,3) CT, (2,3) GT


def symmetric_from_upper(values: Array, state_count: int = 4) -> Array:
    """Symmetric zero-diagonal matrix from its strict upper triangle in row order."""
    rows, cols = np.triu_indices(state_count, k=1)
    m = jnp.zeros((state_count, state_count), dtype=jnp.result_type(values, float))
    m = m.at[rows, cols].set(values)
    return m + m.T


class ReversibleModel(eqx.Module):
    """A time-reversible substitution model.

    Attributes:
        exchangeabilities: ``[state, state]`` symmetric, zero diagonal.
        frequencies: ``[state]`` stationary distribution.
        normalise: scale Q to one expected substitution per unit time (static).
    """

    exchangeabilities: Float[Array, "state state"]
    frequencies: Float[Array, " state"]
    normalise: bool = eqx.field(static=True, default=True)

    @property
    def state_count(self) -> int:
        return self.frequencies.shape[-1]

    def rate_matrix(self) -> Float[Array, "state state"]:
        q = self.exchangeabilities * self.frequencies[None, :]
        q = q - jnp.diag(q.sum(axis=1))
        if self.normalise:
            q = q / -(self.frequencies * jnp.diag(q)).sum()
        return q

    def eigensystem(self) -> Eigensystem:
        return eigensystem(self.rate_matrix(), self.frequencies)


def _freqs(frequencies) -> Array:
    if frequencies is None:
        return jnp.full(4, 0.25)
    f = jnp.asarray(frequencies, dtype=float)
    return f / f.sum()


def gtr(rates, frequencies=None) -> ReversibleModel:
    """GTR with exchangeabilities ``(AC, AG, AT, CG, CT, GT)``; 5 values mean ``GT = 1``."""
    rates = jnp.asarray(rates, dtype=float)
    if rates.shape[-1] == 5:
        rates = jnp.concatenate([rates, jnp.ones(1, rates.dtype)])
    return ReversibleModel(symmetric_from_upper(rates), _freqs(frequencies))


def jc69() -> ReversibleModel:
    return gtr(jnp.ones(6))


def f81(frequencies) -> ReversibleModel:
    return gtr(jnp.ones(6), frequencies)


def tn93(kappa_purine, kappa_pyrimidine, frequencies=None) -> ReversibleModel:
    one = jnp.ones((), dtype=float)
    kr, ky = jnp.asarray(kappa_purine, float), jnp.asarray(kappa_pyrimidine, float)
    return gtr(jnp.stack([one, kr, one, one, ky, one]), frequencies)


def hky85(kappa, frequencies=None) -> ReversibleModel:
    return tn93(kappa, kappa, frequencies)


def k80(kappa) -> ReversibleModel:
    return hky85(kappa, None)
