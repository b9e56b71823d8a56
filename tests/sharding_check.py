"""Run by tests/test_sharding.py in a subprocess with 4 forced host devices (set before JAX starts).

Prints one JSON line: lnL and gradients on one device and sharded over 4 devices (patterns, and a
batch of parameter sets sharded over its batch axis).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from phylojax import batch, sharding  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.likelihood import log_likelihood, prepare  # noqa: E402
from phylojax.models.nucleotide import gtr  # noqa: E402
from phylojax.models.rates import rate_model  # noqa: E402


def main(alignment, tree_path):
    problem = prepare(read_alignment(alignment), read_tree(tree_path))
    lengths = jnp.asarray(np.maximum(problem.branch_lengths, 0.01))
    lengths = lengths.at[-1].set(0.0)
    model = gtr(jnp.asarray([1.5, 4.0, 0.8, 1.2, 5.0]), jnp.asarray([0.3, 0.2, 0.25, 0.25]))
    rates = rate_model(jnp.asarray(0.7), 4, 0.1)

    def f(data, bl, m, r):
        return log_likelihood(data, bl, m, r)

    vg = jax.jit(jax.value_and_grad(f, argnums=(1, 2, 3)))
    single = vg(problem.data, lengths, model, rates)
    mesh = sharding.pattern_mesh()
    sharded_data = sharding.shard_data(problem.data, mesh)
    multi = vg(sharded_data, *sharding.replicate((lengths, model, rates), mesh))
    shard_count = len(sharded_data.tip_partials.sharding.device_set)

    rng = np.random.default_rng(1)
    bls = jnp.asarray(lengths[None] * rng.uniform(0.5, 1.5, (8, lengths.shape[0])))
    batch_mesh = sharding.pattern_mesh(axis_name=sharding.BATCH_AXIS)
    batched_single = batch.batched_value_and_grad(problem.data, bls, model, rates)
    batched_multi = batch.batched_value_and_grad(
        problem.data, sharding.shard_batch(bls, batch_mesh), model, rates
    )

    def flat(tree):
        return [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tree)]

    print(json.dumps({
        "devices": len(jax.devices()),
        "shards": shard_count,
        "single": flat(single),
        "multi": flat(multi),
        "batched_single": flat(batched_single),
        "batched_multi": flat(batched_multi),
    }))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:3])
