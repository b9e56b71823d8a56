"""Multi-device likelihoods: shard the site-pattern axis (and the batch axis) with ``jax.sharding``.

Site patterns are independent given the tree and the model, so the pattern axis of the tip
partials is split across a 1-D :class:`jax.sharding.Mesh`; XLA's SPMD partitioner runs the pruning
scan on every device's slice and all-reduces the weighted sum (and, in the VJP, the gradient
contributions of the replicated branch lengths and model parameters). Patterns are padded to a
multiple of the device count with all-ones tip partials and weight 0, which contribute nothing to
lnL or its gradient. Batches (:mod:`phylojax.batch`) shard their leading axis the same way.

Multi-host: call ``jax.distributed.initialize()`` on every process before anything else touches
JAX; ``jax.devices()`` then lists the devices of all hosts and :func:`pattern_mesh` spans them.
See ``docs/fitting.md``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .likelihood import PhyloData

PATTERN_AXIS = "patterns"
BATCH_AXIS = "batch"


def pattern_mesh(devices=None, axis_name: str = PATTERN_AXIS) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis_name,))


def pad_patterns(data: PhyloData, multiple: int) -> PhyloData:
    """Pad the pattern axis to a multiple of ``multiple`` with all-ones, zero-weight patterns."""
    count = data.pattern_count
    extra = (-count) % multiple
    if not extra:
        return data
    tips = jnp.concatenate(
        [
            data.tip_partials,
            jnp.ones(data.tip_partials.shape[:2] + (extra,), data.tip_partials.dtype),
        ],
        axis=-1,
    )
    weights = jnp.concatenate([data.pattern_weights, jnp.zeros(extra, data.pattern_weights.dtype)])
    inv = jnp.concatenate(
        [data.invariant_states, jnp.ones((data.invariant_states.shape[0], extra), tips.dtype)],
        axis=-1,
    )
    return PhyloData(tips, weights, data.operations, inv)


def shard_data(
    data: PhyloData, mesh: Mesh | None = None, axis_name: str = PATTERN_AXIS
) -> PhyloData:
    """Pad and place ``data`` with its pattern axis split over ``mesh`` (operations replicated).

    The result is an ordinary :class:`PhyloData`: pass it to ``jax.jit(log_likelihood)``,
    ``jax.grad``, :func:`phylojax.fit` internals or :mod:`phylojax.batch` unchanged.
    """
    mesh = pattern_mesh(axis_name=axis_name) if mesh is None else mesh
    padded = pad_patterns(data, mesh.shape[axis_name])

    def put(x, spec):
        return jax.device_put(x, NamedSharding(mesh, spec))

    return PhyloData(
        tip_partials=put(padded.tip_partials, P(None, None, axis_name)),
        pattern_weights=put(padded.pattern_weights, P(axis_name)),
        operations=put(padded.operations, P()),
        invariant_states=put(padded.invariant_states, P(None, axis_name)),
    )


def replicate(tree, mesh: Mesh):
    """Place every array of a pytree (model, rates, branch lengths) on all devices of ``mesh``."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def shard_batch(tree, mesh: Mesh, axis_name: str = BATCH_AXIS):
    """Split the leading (batch) axis of every array in ``tree`` over ``mesh``.

    The batch size must be a multiple of the mesh size along ``axis_name``.
    """
    size = mesh.shape[axis_name]

    def put(x):
        if not eqx.is_array(x):
            return x
        if x.shape[0] % size:
            raise ValueError(f"batch of {x.shape[0]} does not split over {size} devices")
        return jax.device_put(x, NamedSharding(mesh, P(axis_name, *([None] * (x.ndim - 1)))))

    return jax.tree.map(put, tree)
