"""FEL's global fits (DESIGN.md §3 steps 2–4): nucleotide GTR, proportional MG94×REV, full MG94×REV.

Every partition has its own tree and branch parameters; nucleotide rates, frequencies and ω are
shared (HyPhy's FEL). Parameters are bounded to ``[0, 10000]``: they are optimised as logarithms
(L-BFGS, :func:`optax.lbfgs` with its zoom line search), so a branch that wants length 0 goes to
``exp(-30)`` whose effect on lnL is below 1e-10.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..likelihood.api import PhyloData, log_likelihood
from ..models.codon import expected_rate, mg94_parts
from ..models.nucleotide import ReversibleModel, gtr
from ..models.rates import rate_model

LOG_MIN, LOG_MAX = -30.0, float(np.log(10000.0))


def maximise(objective, params, max_steps: int = 2000, tol: float = 1e-7):
    """Maximise ``objective(params)`` (a pytree of log-parameters) with L-BFGS; returns
    ``(params, value, steps)``. Parameters are clipped to ``[LOG_MIN, LOG_MAX]``."""

    def loss(p):
        p = jax.tree.map(lambda x: jnp.clip(x, LOG_MIN, LOG_MAX), p)
        return -objective(p)

    opt = optax.lbfgs(memory_size=20)
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        p, state, _, _, k = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        new = optax.apply_updates(p, updates)
        # projected gradient norm: ignore components pushing against the bounds
        flat_p = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(p)])
        flat_g = jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(grad)])
        blocked = ((flat_p <= LOG_MIN) & (flat_g > 0)) | ((flat_p >= LOG_MAX) & (flat_g < 0))
        gnorm = jnp.max(jnp.abs(jnp.where(blocked, 0.0, flat_g)))
        new = jax.tree.map(lambda x: jnp.clip(x, LOG_MIN - 1.0, LOG_MAX + 1.0), new)
        return new, state, value, gnorm, k + 1

    def cond(carry):
        *_, value, gnorm, k = carry
        return (k < max_steps) & (gnorm > tol)

    @jax.jit
    def run(p):
        state = opt.init(p)
        return jax.lax.while_loop(cond, step, (p, state, jnp.inf, jnp.inf, 0))

    p, _, _, _, k = run(params)
    p = jax.tree.map(lambda x: jnp.clip(x, LOG_MIN, LOG_MAX), p)
    return p, float(objective(p)), int(k)


@dataclasses.dataclass(frozen=True)
class PartitionData:
    """One partition: nucleotide and codon pattern data on the same binary tree.

    ``free``: bool[node] branches with a parameter (not the root, not zero-length resolution
    branches). ``background``: bool[node] branches not tested (own ω).
    """

    nucleotide: PhyloData
    codon: PhyloData
    free: np.ndarray
    background: np.ndarray
    initial_lengths: np.ndarray


@dataclasses.dataclass(frozen=True)
class GlobalFit:
    """Result of the global fits.

    Attributes:
        gtr_rates: ``[6]`` AC AG AT CG CT GT (AG = 1); ``nucleotide_frequencies`` ``[4]``.
        gtr_lengths: per partition ``[node]`` GTR branch lengths; ``gtr_loglik``.
        theta: ``[6]`` MG94 nucleotide rates (AG = 1); ``omega``: ``[test, background]``.
        times: per partition ``[node]`` branch parameter t_b; ``codon_frequencies`` ``[sense]``,
        ``position_frequencies`` ``[3, 4]`` CF3x4 ``n``; ``loglik``, ``proportional_loglik``,
        ``proportional_omega``.
    """

    gtr_rates: np.ndarray
    nucleotide_frequencies: np.ndarray
    gtr_lengths: list
    gtr_loglik: float
    theta: np.ndarray
    omega: np.ndarray
    times: list
    codon_frequencies: np.ndarray
    position_frequencies: np.ndarray
    loglik: float
    proportional_loglik: float
    proportional_omega: np.ndarray
    steps: dict

    def mg94_lengths(self, partition: int) -> np.ndarray:
        """Reported MG94 branch lengths ``L_b = t_b sum_i pi_i sum_{j != i} Q_ij / 3``."""
        r_s, r_n, pi = mg94_parts(self.theta, self.position_frequencies)
        rate_t = float(expected_rate(r_s + self.omega[0] * r_n, pi))
        rate_b = float(expected_rate(r_s + self.omega[1] * r_n, pi))
        return self.times[partition] * np.where(self._background[partition], rate_b, rate_t) / 3.0

    _background: list = dataclasses.field(default_factory=list, repr=False)


def _theta6(log_theta5):
    """AC, AT, CG, CT, GT free; AG = 1 (HyPhy's constraint)."""
    t = jnp.exp(log_theta5)
    return jnp.stack([t[0], jnp.ones((), t.dtype), t[1], t[2], t[3], t[4]])


def _lengths(log_t, free):
    # exp(LOG_MIN) stands for a branch at its lower bound: report and use exactly 0
    t = jnp.exp(log_t)
    return jnp.where(jnp.asarray(free) & (log_t > LOG_MIN + 1e-6), t, 0.0)


def fit_global(parts: list[PartitionData], nucleotide_frequencies, position_frequencies,
               max_steps: int = 3000) -> GlobalFit:  # fmt: skip
    """Run DESIGN.md §3 steps 2–4 on all partitions jointly."""
    rates1 = rate_model()
    nuc_pi = jnp.asarray(nucleotide_frequencies)

    # Step 2: nucleotide GTR.
    def gtr_objective(p):
        model = gtr(_theta6(p["theta"]), nuc_pi)
        return sum(
            log_likelihood(part.nucleotide, _lengths(lt, part.free), model, rates1)
            for part, lt in zip(parts, p["t"])
        )

    start = {
        "theta": jnp.zeros(5),
        "t": [jnp.log(jnp.clip(jnp.asarray(part.initial_lengths), 1e-3, 1.0)) for part in parts],
    }
    p_gtr, gtr_ll, gtr_steps = maximise(gtr_objective, start, max_steps)
    gtr_rates = np.asarray(_theta6(p_gtr["theta"]))
    gtr_lengths = [np.asarray(_lengths(lt, part.free)) for part, lt in zip(parts, p_gtr["t"])]

    g = jnp.asarray(position_frequencies)
    any_background = any(np.any(part.background & part.free) for part in parts)

    def codon_ll(theta6, omega, times_list):
        r_s, r_n, pi = mg94_parts(theta6, g)
        test = ReversibleModel(r_s + omega[0] * r_n, pi, normalise=False)
        total = 0.0
        for part, times in zip(parts, times_list):
            if any_background:
                # background branches have their own omega: evaluate with per-branch matrices
                bg = ReversibleModel(r_s + omega[1] * r_n, pi, normalise=False)
                total = total + _two_class_loglik(part, times, test, bg)
            else:
                total = total + log_likelihood(part.codon, times, test, rates1)
        return total

    def omegas(log_omega):
        w = jnp.exp(log_omega)
        return w if any_background else jnp.stack([w[0], w[0]])

    # Step 3: MG94×REV with t_b = s * L_b(GTR), theta fixed at the GTR values.
    def prop_objective(p):
        return codon_ll(
            jnp.asarray(gtr_rates), omegas(p["omega"]),
            [jnp.exp(p["scale"]) * jnp.asarray(bl) for bl in gtr_lengths],
        )  # fmt: skip

    p_prop, prop_ll, prop_steps = maximise(
        prop_objective, {"scale": jnp.zeros(()), "omega": jnp.zeros(2 if any_background else 1)}
    )
    scale = float(jnp.exp(p_prop["scale"]))

    # Step 4: full refit.
    def full_objective(p):
        return codon_ll(
            _theta6(p["theta"]), omegas(p["omega"]),
            [_lengths(lt, part.free) for part, lt in zip(parts, p["t"])],
        )  # fmt: skip

    start = {
        "theta": jnp.log(jnp.asarray(gtr_rates)[jnp.array([0, 2, 3, 4, 5])]),
        "omega": p_prop["omega"],
        "t": [jnp.log(jnp.clip(scale * jnp.asarray(bl), 1e-12, None)) for bl in gtr_lengths],
    }
    p_full, full_ll, full_steps = maximise(full_objective, start, max_steps)
    theta = np.asarray(_theta6(p_full["theta"]))
    _, _, pi = mg94_parts(theta, g)
    return GlobalFit(
        gtr_rates=gtr_rates,
        nucleotide_frequencies=np.asarray(nuc_pi),
        gtr_lengths=gtr_lengths,
        gtr_loglik=gtr_ll,
        theta=theta,
        omega=np.asarray(omegas(p_full["omega"])),
        times=[np.asarray(_lengths(lt, part.free)) for part, lt in zip(parts, p_full["t"])],
        codon_frequencies=np.asarray(pi),
        position_frequencies=np.asarray(g),
        loglik=full_ll,
        proportional_loglik=prop_ll,
        proportional_omega=np.asarray(omegas(p_prop["omega"])),
        steps={"GTR": gtr_steps, "MG94 proportional": prop_steps, "MG94 full": full_steps},
        _background=[part.background for part in parts],
    )


def _two_class_loglik(part: PartitionData, times, test: ReversibleModel, background: ReversibleModel):
    """lnL with test-branch and background-branch matrices (one eigensystem each)."""
    from ..likelihood.pruning import mixture_log_likelihoods
    from ..models.eigen import transition_probs

    p_t = transition_probs(test.eigensystem(), times)
    p_b = transition_probs(background.eigensystem(), times)
    p = jnp.where(jnp.asarray(part.background)[:, None, None], p_b, p_t)[:, None]
    root = test.frequencies[None, :]
    site = mixture_log_likelihoods(part.codon.tip_partials, p, root, part.codon.operations)
    return part.codon.pattern_weights @ site
