"""Public likelihood functions: root, per-site, edge log-likelihoods and ancestral states.

All functions are pure and un-jitted so that callers can ``jit``, ``vmap`` and ``grad`` them; the
``*_jit`` helpers in :mod:`phylojax.likelihood` are the jitted entry points.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..alphabets import codon_partials, nucleotide_partials
from ..host import to_device
from ..io import Alignment
from ..models.eigen import transition_probs
from ..models.nucleotide import ReversibleModel
from ..models.rates import RateModel
from ..patterns import Patterns, compress
from ..tree import Tree
from .pruning import mixture_log_likelihoods, postorder, preorder
from .topology import Topology, build_topology


class PhyloData(eqx.Module):
    """Everything about the data and the tree shape that the kernels need, as arrays.

    Attributes:
        tip_partials: ``[taxon, state, pattern]`` (state-major; see :mod:`.pruning`).
        pattern_weights: ``[pattern]`` number of sites per pattern.
        operations: ``int32[leaf_count - 1, 3]`` postorder ``[parent, child1, child2]``.
        invariant_states: ``[state, pattern]`` 1 where a state is compatible with every tip (+I).
    """

    tip_partials: Float[Array, "taxon state pattern"]
    pattern_weights: Float[Array, " pattern"]
    operations: Int[Array, "op 3"]
    invariant_states: Float[Array, "state pattern"]

    @property
    def pattern_count(self) -> int:
        return self.pattern_weights.shape[-1]

    def with_operations(self, operations) -> PhyloData:
        return eqx.tree_at(lambda d: d.operations, self, to_device(operations, np.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A prepared likelihood problem: arrays for the kernels plus the records they came from."""

    data: PhyloData
    topology: Topology
    patterns: Patterns
    alignment: Alignment | None = None

    @property
    def branch_lengths(self) -> np.ndarray:
        """Branch lengths of the binary (resolved) tree, ``nan`` replaced by 0.1."""
        lengths = np.nan_to_num(self.topology.tree.branch_lengths, nan=0.1)
        lengths[-1] = 0.0
        return lengths


def make_data(tip_partials: np.ndarray, pattern_weights: np.ndarray, topology: Topology) -> PhyloData:
    tips = np.asarray(tip_partials, dtype=np.float64)
    return PhyloData(
        tip_partials=to_device(np.moveaxis(tips, 1, 2)),
        pattern_weights=to_device(pattern_weights, np.float64),
        operations=to_device(topology.operations, np.int32),
        invariant_states=to_device(np.prod(np.moveaxis(tips, 1, 2), axis=0)),
    )


def prepare(alignment: Alignment, tree: Tree, *, codon: bool = False, code: int | str = 1) -> Problem:
    """Encode ``alignment``, compress site patterns, and build topology arrays for ``tree``."""
    tree = tree.reorder_leaves(alignment.names)
    tips = codon_partials(alignment, code) if codon else nucleotide_partials(alignment)
    patterns = compress(tips)
    topology = build_topology(tree)
    return Problem(make_data(patterns.data, patterns.weights, topology), topology, patterns, alignment)


def _mixture_inputs(data: PhyloData, branch_lengths, model: ReversibleModel, rates: RateModel):
    eig = model.eigensystem()
    times = jnp.asarray(branch_lengths)[:, None] * rates.rates[None, :]
    probs = transition_probs(eig, times)
    root_weights = rates.weights[:, None] * model.frequencies[None, :]
    return probs, root_weights


def _add_invariant(log_gamma, data: PhyloData, model: ReversibleModel, rates: RateModel):
    """``log(pinv * inv + (1 - pinv) * L_gamma)`` without NaN gradients at ``pinv = 0``."""
    inv = model.frequencies @ data.invariant_states
    pinv = rates.pinv
    has_inv = (inv > 0) & (pinv > 0)
    log_inv = jnp.where(has_inv, jnp.log(jnp.where(has_inv, pinv * inv, 1.0)), -jnp.inf)
    return jnp.logaddexp(jnp.log1p(-pinv) + log_gamma, log_inv)


def site_log_likelihoods(
    data: PhyloData,
    branch_lengths: Float[Array, " node"],
    model: ReversibleModel,
    rates: RateModel,
) -> Float[Array, " pattern"]:
    """Log-likelihood of every site pattern (multiply by ``pattern_weights`` and sum for lnL)."""
    probs, root_weights = _mixture_inputs(data, branch_lengths, model, rates)
    log_gamma = mixture_log_likelihoods(data.tip_partials, probs, root_weights, data.operations)
    return _add_invariant(log_gamma, data, model, rates)


def log_likelihood(data: PhyloData, branch_lengths, model: ReversibleModel, rates: RateModel):
    """Total log-likelihood ``sum_p w_p log L_p``."""
    return data.pattern_weights @ site_log_likelihoods(data, branch_lengths, model, rates)


def _passes(data, branch_lengths, model, rates):
    probs, root_weights = _mixture_inputs(data, branch_lengths, model, rates)
    inner, scalers = postorder(data.tip_partials, probs, data.operations)
    coef = jnp.zeros(data.pattern_count, inner.dtype)
    outside, outside_scalers, _, edges = preorder(
        data.tip_partials, probs, root_weights, data.operations, inner, scalers, coef
    )
    return probs, root_weights, inner, scalers, outside, outside_scalers, edges


def edge_log_likelihoods(data: PhyloData, branch_lengths, model, rates) -> Float[Array, " node"]:
    """Total lnL computed with the virtual root on the branch above each non-root node.

    For a reversible model every entry equals :func:`log_likelihood` (the pulley principle).
    """
    *_, edges = _passes(data, branch_lengths, model, rates)
    edges = _add_invariant(edges, data, model, rates)
    return edges[:-1] @ data.pattern_weights


def ancestral_states(
    data: PhyloData, branch_lengths, model: ReversibleModel, rates: RateModel
) -> Float[Array, "op pattern state"]:
    """Marginal posterior ``P(state at node | data)`` for every internal node and pattern.

    Row ``i`` is internal node ``leaf_count + i`` (the root is last). Uses the outside partials of
    the preorder pass: ``post(x) ∝ sum_k A_k(x) D_k(x)``, plus the invariant-site component for +I.
    """
    _, _, inner, scalers, outside, outside_scalers, _ = _passes(data, branch_lengths, model, rates)
    site = site_log_likelihoods(data, branch_lengths, model, rates)
    joint = jnp.einsum("nkxp,nkxp->nxp", outside, inner)
    gamma_part = joint * jnp.exp(scalers + outside_scalers - site[None, :])[:, None, :]
    gamma_part = gamma_part * (1.0 - rates.pinv)
    inv_part = rates.pinv * model.frequencies[:, None] * data.invariant_states * jnp.exp(-site)
    post = gamma_part + inv_part[None]
    post = post / post.sum(axis=1, keepdims=True)
    return jnp.moveaxis(post, 1, 2)


def branch_derivatives(
    data: PhyloData, branch_lengths, model: ReversibleModel, rates: RateModel, node: int
):
    """``(lnL, d lnL/dt, d^2 lnL/dt^2)`` for the branch above ``node`` (coraxlib's sumtable).

    With ``B`` the partial at the top of the branch and ``D`` at the bottom,
    ``L_p(t) = sum_k w_k sum_j e^{lam_j r_k t} s_{kjp}`` where the sumtable
    ``s_{kjp} = (B^T V)_j (V^{-1} D)_j`` is computed once; then every derivative is a cheap sum.
    """
    probs, root_weights, inner, scalers, outside, outside_scalers, _ = _passes(
        data, branch_lengths, model, rates
    )
    leaf_count = data.tip_partials.shape[0]
    parents = _parents_from_operations(data.operations, leaf_count)
    parent = parents[node]
    op = data.operations[parent - leaf_count]
    sibling = jnp.where(op[1] == node, op[2], op[1])

    def fetch(n):
        tip = data.tip_partials[jnp.minimum(n, leaf_count - 1)][None]
        k = jnp.maximum(n - leaf_count, 0)
        return jnp.where(n < leaf_count, tip, inner[k]), jnp.where(n < leaf_count, 0.0, scalers[k])

    d_node, s_node = fetch(node)
    d_sib, s_sib = fetch(sibling)
    a_parent = outside[parent - leaf_count]
    b = a_parent * jnp.einsum("kxy,kyp->kxp", probs[sibling], d_sib)
    eig = model.eigensystem()
    left = jnp.einsum("kxp,xj->kjp", b, eig.eigenvectors)
    right = jnp.einsum("jy,kyp->kjp", eig.inverse_eigenvectors, d_node)
    sumtable = left * right
    rate_lam = rates.rates[:, None] * eig.eigenvalues[None, :]  # k, j
    t = jnp.asarray(branch_lengths)[node]
    e = jnp.exp(rate_lam * t)[:, :, None]
    l0 = jnp.einsum("kjp,kjp->p", e, sumtable)
    l1 = jnp.einsum("kjp,kjp->p", e * rate_lam[:, :, None], sumtable)
    l2 = jnp.einsum("kjp,kjp->p", e * rate_lam[:, :, None] ** 2, sumtable)
    log_scale = outside_scalers[parent - leaf_count] + s_sib + s_node
    # +I: L = (1 - p) e^{S} l0 + p inv; only the Gamma part depends on t.
    inv = model.frequencies @ data.invariant_states
    total = (1.0 - rates.pinv) * l0 + rates.pinv * inv * jnp.exp(-log_scale)
    g1 = (1.0 - rates.pinv) * l1 / total
    g2 = (1.0 - rates.pinv) * l2 / total
    w = data.pattern_weights
    lnl = w @ (jnp.log(total) + log_scale)
    return lnl, w @ g1, w @ (g2 - g1**2)


def _parents_from_operations(operations, leaf_count):
    node_count = 2 * leaf_count - 1
    parents = jnp.full(node_count, -1, dtype=operations.dtype)
    parents = parents.at[operations[:, 1]].set(operations[:, 0])
    return parents.at[operations[:, 2]].set(operations[:, 0])
