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
    root_weights``) and ``A_u = P_u^T B_u``, ``L_p = sum_kxy B_u P_u D_u`` on every branch, so
    ``d log L_p / d P_u[k, x, y] = B_u[k, x, p] D_u[k, y, p] / L_p``.

    Each step of the scan (root first) handles one operation ``(v; a, b)``: ``A_v`` from the
    ``B_v`` that the step of ``v``'s parent wrote, the children's products ``P_a D_a`` and
    ``P_b D_b`` again, ``B_a = A_v (P_b D_b)``, ``B_b = A_v (P_a D_a)`` and both children's
    derivatives: five mat-muls. The earlier form, which computed each child's outside partial in
    its parent's step, took six; pruning value-and-gradient went 15.2 -> 11.9 ms on HepatitisD's
    codon patterns, 408 -> 347 ms on HIV_RT's, 269 -> 253 ms on 100 taxa x 8,170 nucleotide
    patterns x 4 categories, gradients bit-identical. Keeping the children's products from the
    forward pass instead of multiplying them again (three mat-muls a step) was slower again on
    HIV_RT (383 ms) and the nucleotides (290 ms): the stored products cost more in memory
    traffic than the two products (timings from benchmarks/bench_reverse_pass.py; that variant
    was not kept, so only the kept kernel's figures can be reproduced).

    ``B`` of the children is written with one two-row scatter (tips into a spare row, since they
    need no outside partial), and ``B_v`` of the next step is read *after* this step's write and
    carried: reading the carried buffer before updating it made XLA copy the whole buffer at
    every step, O(n^2) in total (measured in benchmarks/profile_pruning.py).

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
    op_count = inner.shape[0]
    log_l = _root_log_likelihoods(inner, scalers, root_weights)
    top = jnp.zeros((op_count + 1, *inner.shape[1:]), inner.dtype)  # row op_count: tips' spare
    top_scalers = jnp.zeros((op_count + 1, scalers.shape[-1]), scalers.dtype)
    root_outside = jnp.broadcast_to(root_weights[:, :, None], inner.shape[1:])

    rows = operations[:, 0] - leaf_count
    next_row = jnp.concatenate([rows[:1], rows[:-1]])  # the reverse scan's next op

    def step(carry, xs):
        top, top_scalers, b_v, sb_v = carry
        op, following = xs
        v, a, b = op[0], op[1], op[2]
        is_root = v - leaf_count == op_count - 1
        a_up, log_m = _rescale(jnp.einsum("kxy,kxp->kyp", transition_probs[v], b_v))
        a_v = jnp.where(is_root, root_outside, a_up)
        sa_v = jnp.where(is_root, 0.0, sb_v + log_m)
        da, sa = _fetch(tips, inner, scalers, a, leaf_count)
        db, sb = _fetch(tips, inner, scalers, b, leaf_count)
        pa, pb = _propagate(transition_probs[a], da), _propagate(transition_probs[b], db)
        b_a, b_b = a_v * pb, a_v * pa
        grads = []
        for b_c, sb_c, d_c, s_c in ((b_a, sa_v + sb, da, sa), (b_b, sa_v + sa, db, sb)):
            weight = pattern_coefficients * jnp.exp(sb_c + s_c - log_l)
            grads.append(jnp.einsum("kxp,kyp->kxy", b_c * weight, d_c))
        child_rows = jnp.stack([jnp.where(c < leaf_count, op_count, c - leaf_count)
                                for c in (a, b)])  # fmt: skip
        top = top.at[child_rows].set(jnp.stack([b_a, b_b]))
        top_scalers = top_scalers.at[child_rows].set(jnp.stack([sa_v + sb, sa_v + sa]))
        b_next = lax.dynamic_index_in_dim(top, following, keepdims=False)
        sb_next = lax.dynamic_index_in_dim(top_scalers, following, keepdims=False)
        out = (jnp.stack(grads), a_v, sa_v)
        if with_edges:  # both children's: sum B_a (P_a D_a) = sum A_v (P_a D_a)(P_b D_b)
            out = out + (jnp.log(jnp.einsum("kxp,kxp->p", a_v, pa * pb)) + sa_v + sa + sb,)
        return (top, top_scalers, b_next, sb_next), out

    init = (top, top_scalers, top[op_count - 1], top_scalers[op_count - 1])
    _, out = lax.scan(step, init, (operations, next_row), reverse=True)
    children = operations[:, 1:].reshape(-1)
    grads = jnp.zeros_like(transition_probs).at[children].set(
        out[0].reshape(-1, *transition_probs.shape[1:])
    )
    outside = jnp.zeros_like(inner).at[rows].set(out[1])
    outside_scalers = jnp.zeros_like(scalers).at[rows].set(out[2])
    edges = None
    if with_edges:
        edges = jnp.zeros((node_count, inner.shape[-1]), inner.dtype).at[children].set(
            jnp.repeat(out[3], 2, axis=0)
        )
    return outside, outside_scalers, grads, edges


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
