"""Felsenstein pruning on flat arrays, with a hand-written O(n) reverse pass.

Layout (measured faster than site-major on XLA:CPU): partials are *state-major*,
``[category, state, pattern]``, so the long pattern axis is contiguous and every per-node operation
is a small batched mat-mul over it. Tip partials are stored once (``[taxon, state, pattern]``);
internal partials live in one buffer ``[leaf_count - 1, category, state, pattern]`` that a
``lax.scan`` over the postorder operations fills in place, so one compiled function serves every
tree with the same number of taxa and the compile time does not grow with the tree.

Underflow: every internal partial is divided by its per-pattern maximum (over categories and
states) and the log of that maximum is accumulated into a per-pattern log-scaler, which is added
**once** at the root (PRISTINE's shipped code adds it twice; DESIGN.md section 2). This is
branch-free and keeps 10,000-taxon trees finite in float32.

Gradients: reverse-mode AD through a scan that slices a large carried buffer costs O(buffer) per
step (quadratic overall), so :func:`mixture_log_likelihoods` has a custom VJP: a preorder pass
computes the "outside" partial of every node (Ji et al. 2020) and from it the exact derivative of
log L with respect to every transition matrix, in time comparable to the forward pass. Derivatives
with respect to branch lengths and model parameters then follow by ordinary AD through the
(cheap) eigen-cached ``P(t)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int


def _fetch(tips, inner, inner_scalers, node, leaf_count):
    """Partial ``[category, state, pattern]`` and log-scaler ``[pattern]`` of any node."""
    is_tip = node < leaf_count
    tip = lax.dynamic_index_in_dim(tips, jnp.minimum(node, leaf_count - 1), keepdims=False)
    k = jnp.maximum(node - leaf_count, 0)
    inn = lax.dynamic_index_in_dim(inner, k, keepdims=False)
    scale = lax.dynamic_index_in_dim(inner_scalers, k, keepdims=False)
    return jnp.where(is_tip, tip[None], inn), jnp.where(is_tip, 0.0, scale)


def _propagate(p, clv):
    """``(P D)[k, x, p] = sum_y P[k, x, y] D[k, y, p]``: partial at the top of a branch."""
    return jnp.einsum("kxy,kyp->kxp", p, clv)


def _rescale(clv):
    """Divide by the per-pattern maximum; return the rescaled partial and log of the factor."""
    m = jnp.max(clv, axis=(0, 1))
    safe = jnp.where(m > 0, m, 1.0)
    return clv / safe, jnp.log(safe)


def postorder(
    tips: Float[Array, "taxon state pattern"],
    transition_probs: Float[Array, "node category state state"],
    operations: Int[Array, "op 3"],
):
    """Conditional partials of every internal node (scaled) and their cumulative log-scalers."""
    leaf_count, state_count, pattern_count = tips.shape
    category_count = transition_probs.shape[1]
    op_count = operations.shape[0]
    inner = jnp.zeros((op_count, category_count, state_count, pattern_count), tips.dtype)
    scalers = jnp.zeros((op_count, pattern_count), tips.dtype)

    def step(carry, op):
        inner, scalers = carry
        parent, a, b = op[0], op[1], op[2]
        da, sa = _fetch(tips, inner, scalers, a, leaf_count)
        db, sb = _fetch(tips, inner, scalers, b, leaf_count)
        clv = _propagate(transition_probs[a], da) * _propagate(transition_probs[b], db)
        clv, log_m = _rescale(clv)
        i = parent - leaf_count
        inner = lax.dynamic_update_index_in_dim(inner, clv, i, 0)
        scalers = lax.dynamic_update_index_in_dim(scalers, sa + sb + log_m, i, 0)
        return (inner, scalers), None

    (inner, scalers), _ = lax.scan(step, (inner, scalers), operations)
    return inner, scalers


def _root_log_likelihoods(inner, scalers, root_weights):
    lik = jnp.einsum("kx,kxp->p", root_weights, inner[-1])
    return jnp.log(lik) + scalers[-1]


def preorder(
    tips,
    transition_probs,
    root_weights,
    operations,
    inner,
    scalers,
    pattern_coefficients,
    *,
    with_edges: bool = True,
):
    """Outside partials and the derivative of ``sum_p c_p log L_p`` w.r.t. every ``P``.

    With ``B_u = A_v * (P_w D_w)`` for node ``u`` with parent ``v`` and sibling ``w`` (``A_root =
    root_weights``), ``L_p = sum_kxy B_u P_u D_u`` on every branch, so
    ``d log L_p / d P_u[k, x, y] = B_u[k, x, p] D_u[k, y, p] / L_p``.

    Both children of an operation are written with one two-row scatter per buffer, and tips
    write into a spare row: two separate in-place updates (or re-reading the slot about to be
    overwritten) made XLA copy the whole outside buffer at every step, O(n^2) in total
    (measured in benchmarks/profile_pruning.py). The parent's row is read *after* the previous
    step's scatter and carried (jaxlib 0.10 still copied the buffer twice per step when the read
    came first: 126 ms -> 42 ms for value-and-gradient on rbp3, 54 taxa x 410 codon patterns).

    Args:
        pattern_coefficients: ``[pattern]`` cotangent ``c_p`` of each pattern's log-likelihood.
        with_edges: also return per-branch edge log-likelihoods (static).

    Returns:
        outside: ``[op, category, state, pattern]`` scaled ``A`` of every internal node,
        outside_scalers: ``[op, pattern]``,
        d_transition_probs: ``[node, category, state, state]``,
        edge_log_likelihoods: ``[node, pattern]`` log L_p with the virtual root on the branch above
            each node (equal for every branch of a reversible model: the pulley principle), or
            ``None`` without ``with_edges``.
    """
    leaf_count = tips.shape[0]
    node_count = transition_probs.shape[0]
    log_l = _root_log_likelihoods(inner, scalers, root_weights)
    op_count = inner.shape[0]
    # Row op_count is a spare slot that absorbs the writes for tips (which need no outside partial).
    outside = jnp.zeros((op_count + 1, *inner.shape[1:]), inner.dtype)
    outside = outside.at[op_count - 1].set(
        jnp.broadcast_to(root_weights[:, :, None], inner.shape[1:])
    )
    outside_scalers = jnp.zeros((op_count + 1, scalers.shape[-1]), scalers.dtype)

    # The scan runs root first (reverse postorder). The parent's outside row is read at the end of
    # the *previous* step, after that step's writes, and carried: a read of the carried buffer
    # before the update of the same buffer made XLA copy the whole buffer (twice) at every step.
    parents = operations[:, 0] - leaf_count
    next_parent = jnp.concatenate([parents[:1], parents[:-1]])  # the reverse scan's next op

    def step(carry, xs):
        outside, outside_scalers, a_v, s_v = carry
        op, following = xs
        a, b = op[1], op[2]
        da, sa = _fetch(tips, inner, scalers, a, leaf_count)
        db, sb = _fetch(tips, inner, scalers, b, leaf_count)
        pa, pb = transition_probs[a], transition_probs[b]
        prop_a, prop_b = _propagate(pa, da), _propagate(pb, db)
        per_child = []
        for child, p_c, d_c, s_c, prop_c, prop_sib, s_sib in (
            (a, pa, da, sa, prop_a, prop_b, sb),
            (b, pb, db, sb, prop_b, prop_a, sa),
        ):
            b_c = a_v * prop_sib
            s_b = s_v + s_sib
            weight = pattern_coefficients * jnp.exp(s_b + s_c - log_l)
            grad = jnp.einsum("kxp,kyp->kxy", b_c * weight, d_c)
            a_c, log_m = _rescale(jnp.einsum("kxy,kxp->kyp", p_c, b_c))
            edge = (
                jnp.log(jnp.einsum("kxp,kxp->p", b_c, prop_c)) + s_b + s_c if with_edges else None
            )
            row = jnp.where(child < leaf_count, op_count, child - leaf_count)
            per_child.append((row, grad, a_c, s_b + log_m, edge))
        rows = jnp.stack([c[0] for c in per_child])
        outside = outside.at[rows].set(jnp.stack([c[2] for c in per_child]))
        outside_scalers = outside_scalers.at[rows].set(jnp.stack([c[3] for c in per_child]))
        a_next = lax.dynamic_index_in_dim(outside, following, keepdims=False)
        s_next = lax.dynamic_index_in_dim(outside_scalers, following, keepdims=False)
        # Per-branch results leave the loop as scan outputs, not carried buffers.
        out = (jnp.stack([c[1] for c in per_child]),)
        if with_edges:
            out = out + (jnp.stack([c[4] for c in per_child]),)
        return (outside, outside_scalers, a_next, s_next), out

    init = (outside, outside_scalers, outside[op_count - 1], outside_scalers[op_count - 1])
    (outside, outside_scalers, _, _), out = lax.scan(
        step, init, (operations, next_parent), reverse=True
    )
    children = operations[:, 1:].reshape(-1)
    grads = jnp.zeros_like(transition_probs).at[children].set(
        out[0].reshape(-1, *transition_probs.shape[1:])
    )
    edges = None
    if with_edges:
        edges = jnp.zeros((node_count, inner.shape[-1]), inner.dtype).at[children].set(
            out[1].reshape(-1, inner.shape[-1])
        )
    return outside[:-1], outside_scalers[:-1], grads, edges


@jax.custom_vjp
def mixture_log_likelihoods(
    tips: Float[Array, "taxon state pattern"],
    transition_probs: Float[Array, "node category state state"],
    root_weights: Float[Array, "category state"],
    operations: Int[Array, "op 3"],
) -> Float[Array, " pattern"]:
    """Per-pattern ``log sum_k sum_x root_weights[k, x] L_k(x)`` (the rate-category mixture).

    ``root_weights[k, x] = w_k pi_x``. Differentiable w.r.t. ``transition_probs`` and
    ``root_weights`` through a preorder pass (no AD through the scan).
    """
    inner, scalers = postorder(tips, transition_probs, operations)
    return _root_log_likelihoods(inner, scalers, root_weights)


def _mixture_fwd(tips, transition_probs, root_weights, operations):
    inner, scalers = postorder(tips, transition_probs, operations)
    log_l = _root_log_likelihoods(inner, scalers, root_weights)
    return log_l, (tips, transition_probs, root_weights, operations, inner, scalers, log_l)


def _mixture_bwd(residuals, cotangent):
    tips, transition_probs, root_weights, operations, inner, scalers, log_l = residuals
    _, _, d_p, _ = preorder(
        tips, transition_probs, root_weights, operations, inner, scalers, cotangent,
        with_edges=False,
    )
    d_root = jnp.einsum("p,kxp->kx", cotangent * jnp.exp(scalers[-1] - log_l), inner[-1])
    return None, d_p, d_root, None


mixture_log_likelihoods.defvjp(_mixture_fwd, _mixture_bwd)


def log_space_postorder_log_likelihoods(tips, transition_probs, root_weights, operations):
    """Reference log-space pruning (``logsumexp`` over states, no scalers); forward only.

    Slower than the scaled kernel; kept as an independent check of the scaling and for users who
    prefer log-space arithmetic.
    """
    leaf_count, state_count, pattern_count = tips.shape
    category_count = transition_probs.shape[1]
    log_tips = jnp.log(tips)
    log_p = jnp.log(transition_probs)
    inner = jnp.zeros(
        (operations.shape[0], category_count, state_count, pattern_count), tips.dtype
    )

    def fetch(inner, node):
        tip = lax.dynamic_index_in_dim(log_tips, jnp.minimum(node, leaf_count - 1), keepdims=False)
        inn = lax.dynamic_index_in_dim(inner, jnp.maximum(node - leaf_count, 0), keepdims=False)
        return jnp.where(node < leaf_count, tip[None], inn)

    def prop(lp, lclv):
        return jax.nn.logsumexp(lp[:, :, :, None] + lclv[:, None, :, :], axis=2)

    def step(inner, op):
        parent, a, b = op[0], op[1], op[2]
        clv = prop(log_p[a], fetch(inner, a)) + prop(log_p[b], fetch(inner, b))
        return lax.dynamic_update_index_in_dim(inner, clv, parent - leaf_count, 0), None

    inner, _ = lax.scan(step, inner, operations)
    return jax.nn.logsumexp(jnp.log(root_weights)[:, :, None] + inner[-1], axis=(0, 1))
