"""Batched lnL and gradients: equal to one-at-a-time evaluation, one compilation per shape."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phylojax import batch
from phylojax.io import parse_newick, read_alignment, read_tree
from phylojax.likelihood import log_likelihood, prepare
from phylojax.models.nucleotide import gtr
from phylojax.models.rates import rate_model


@pytest.fixture(scope="module")
def problem(request):
    data = request.config.rootpath / "tests" / "data" / "lik"
    return prepare(read_alignment(data / "sim7.fa"), read_tree(data / "sim7.nwk"))


def _parameter_batch(seed, size, node_count, base):
    rng = np.random.default_rng(seed)
    # Strictly positive lengths: the binary resolution's zero-length branch is a kink of lnL.
    lengths = jnp.asarray(np.maximum(base, 0.02)[None] * rng.uniform(0.5, 1.5, (size, node_count)))
    lengths = lengths.at[:, -1].set(0.0)
    models = batch.stack(
        [gtr(rng.uniform(0.5, 3, 5), rng.dirichlet(np.full(4, 10.0))) for _ in range(size)]
    )
    rates = batch.stack([rate_model(jnp.asarray(a), 4, 0.05) for a in rng.uniform(0.3, 2, size)])
    return lengths, models, rates


def _member(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@pytest.mark.slow
def test_parameter_batch_equals_one_at_a_time_without_recompiling(problem):
    traces = []

    @eqx.filter_jit
    def counted(data, lengths, models, rates):
        traces.append(1)  # runs once per trace (compilation), not per call
        return batch.batched_value_and_grad(data, lengths, models, rates)

    base = problem.branch_lengths
    for seed in (0, 1):
        lengths, models, rates = _parameter_batch(seed, 4, base.shape[0], base)
        values, (g_bl, g_model, _) = counted(problem.data, lengths, models, rates)
        for i in range(4):
            v, (gb, gm, _) = _vg(problem.data, lengths[i], _member(models, i), _member(rates, i))
            assert float(values[i]) == pytest.approx(float(v), abs=1e-9)
            np.testing.assert_allclose(g_bl[i], gb, atol=1e-7)
            np.testing.assert_allclose(g_model.exchangeabilities[i], gm.exchangeabilities, atol=1e-7)
    assert len(traces) == 1  # the second batch reused the compiled function
    # The public jitted entry point gives the same numbers.
    public = batch.batched_log_likelihood(problem.data, lengths, models, rates)
    np.testing.assert_allclose(public, values, atol=1e-9)


def _vg(data, bl, m, r):
    return jax.value_and_grad(log_likelihood, argnums=(1, 2, 3))(data, bl, m, r)


@pytest.mark.slow
def test_topology_batch_equals_one_at_a_time(problem):
    newicks = [
        "((t1:0.1,t2:0.1):0.05,(t3:0.2,(t4:0.03,t5:0.15):0.07):0.1,(t6:0.3,t7:0.01):0.02);",
        "((t1:0.1,t3:0.1):0.05,(t2:0.2,(t4:0.03,t6:0.15):0.07):0.1,(t5:0.3,t7:0.01):0.02);",
        "(t1:0.1,(t2:0.1,(t3:0.2,(t4:0.03,(t5:0.15,(t6:0.3,t7:0.01):0.1):0.07):0.1):0.05):0.02);",
    ]
    aln = problem.alignment
    problems = [prepare(aln, parse_newick(n)) for n in newicks]
    ops = jnp.stack([jnp.asarray(p.topology.operations) for p in problems])
    lengths = jnp.stack([jnp.asarray(np.maximum(p.branch_lengths, 0.01)) for p in problems])
    lengths = lengths.at[:, -1].set(0.0)
    model = gtr(jnp.asarray([1.5, 4.0, 0.8, 1.2, 5.0]), jnp.asarray([0.3, 0.2, 0.25, 0.25]))
    rates = rate_model(jnp.asarray(0.7), 4)
    values, (g_bl, _, _) = batch.batched_value_and_grad(
        problem.data, lengths, model, rates, operations=ops
    )
    for i, p in enumerate(problems):
        v, (gb, _, _) = _vg(p.data, lengths[i], model, rates)
        assert float(values[i]) == pytest.approx(float(v), abs=1e-9)
        np.testing.assert_allclose(g_bl[i], gb, atol=1e-7)
    # Bootstrap-style weights batch: the same data with resampled pattern weights.
    rng = np.random.default_rng(3)
    sites = problem.patterns.site_to_pattern
    weights = jnp.stack([
        jnp.asarray(np.bincount(rng.choice(sites, sites.shape[0]), minlength=problem.data.pattern_count), float)
        for _ in range(2)
    ])  # fmt: skip
    boot = batch.batched_log_likelihood(
        problem.data, lengths[0], model, rates, pattern_weights=weights
    )
    for i in range(2):
        d = eqx.tree_at(lambda x: x.pattern_weights, problem.data, weights[i])
        assert float(boot[i]) == pytest.approx(float(log_likelihood(d, lengths[0], model, rates)))
