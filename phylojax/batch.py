"""Log-likelihoods and gradients of many parameter sets or many trees in one compiled call.

Everything here is a ``jax.vmap`` of :func:`phylojax.likelihood.log_likelihood` (whose gradient is
the O(n) preorder VJP), jitted once per shape: a second batch of the same size, with new values
or new topologies of the same taxon count, reuses the compiled function. Use cases: variational
inference (many branch-length/parameter samples), bootstrap replicates (many weight vectors), and
candidate trees from SPR/NNI moves (many ``operations`` arrays).

Shapes (``B`` = batch size, ``node = 2 * taxon_count - 1`` nodes of the binary tree):

* ``branch_lengths``: ``[B, node]`` (or ``[node]``: shared by the batch).
* ``model``: a :class:`~phylojax.models.nucleotide.ReversibleModel` whose arrays carry a leading
  ``B`` axis (``exchangeabilities [B, state, state]``, ``frequencies [B, state]``), built with
  :func:`stack` or ``jax.vmap`` over a constructor; or an unbatched model shared by the batch.
* ``rates``: a :class:`~phylojax.models.rates.RateModel`, batched (``rates [B, category]``) or not.
* ``operations``: ``int32[B, taxon - 1, 3]`` postorder operations of ``B`` binary trees over the
  same leaves (``Topology.operations``), or ``None`` to use ``data.operations``.
* ``pattern_weights``: ``[B, pattern]`` (bootstrap replicates) or ``None``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .likelihood import PhyloData, log_likelihood
from .models.nucleotide import ReversibleModel
from .models.rates import RateModel


def stack(items):
    """Stack equal-structure pytrees (models, rate models) along a new leading batch axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *items)


def _axis(tree, unbatched_ndim: int, leaf) -> int | None:
    return 0 if jnp.ndim(leaf(tree)) > unbatched_ndim else None


def _batched(fn, data, branch_lengths, model, rates, operations, pattern_weights):
    model_axis = _axis(model, 1, lambda m: m.frequencies)
    rates_axis = _axis(rates, 1, lambda r: r.rates)
    bl_axis = 0 if jnp.ndim(branch_lengths) == 2 else None
    ops_axis = None if operations is None else 0
    w_axis = None if pattern_weights is None else 0
    if all(a is None for a in (model_axis, rates_axis, bl_axis, ops_axis, w_axis)):
        raise ValueError("nothing is batched: give branch_lengths [B, node], a stacked model, ...")

    def one(bl, m, r, ops, w):
        d = data if ops is None else data.with_operations(ops)
        if w is not None:
            d = eqx.tree_at(lambda x: x.pattern_weights, d, w)
        return fn(d, bl, m, r)

    return jax.vmap(one, in_axes=(bl_axis, model_axis, rates_axis, ops_axis, w_axis))(
        branch_lengths, model, rates, operations, pattern_weights
    )


@eqx.filter_jit
def batched_log_likelihood(
    data: PhyloData,
    branch_lengths,
    model: ReversibleModel,
    rates: RateModel,
    operations=None,
    pattern_weights=None,
):
    """``lnL[B]`` for a batch (see the module docstring for the shapes)."""
    return _batched(log_likelihood, data, branch_lengths, model, rates, operations, pattern_weights)


@eqx.filter_jit
def batched_value_and_grad(
    data: PhyloData,
    branch_lengths,
    model: ReversibleModel,
    rates: RateModel,
    operations=None,
    pattern_weights=None,
):
    """``(lnL[B], (d lnL/d branch_lengths [B, node], d lnL/d model, d lnL/d rates))``.

    Gradients are taken per batch member with respect to its own branch lengths, model and rate
    model (each gradient pytree has the batched argument's shape; for an unbatched argument the
    gradient is still per member: ``[B, ...]``).
    """

    def value_and_grad(d, bl, m, r):
        return jax.value_and_grad(log_likelihood, argnums=(1, 2, 3))(d, bl, m, r)

    return _batched(value_and_grad, data, branch_lengths, model, rates, operations, pattern_weights)
