"""Likelihood, gradients, ancestral states and a batch of models on a small alignment.

Run from the repository root:  python examples/likelihood_basics.py
"""

import pathlib

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

from phylojax.batch import batched_log_likelihood, stack  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.likelihood import (  # noqa: E402
    ancestral_states,
    edge_log_likelihoods,
    log_likelihood,
    prepare,
)
from phylojax.models import gtr, rate_model  # noqa: E402

data_dir = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "lik"
problem = prepare(read_alignment(data_dir / "sim7.fa"), read_tree(data_dir / "sim7.nwk"))
model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
rates = rate_model(alpha=0.7, category_count=4)
lengths = jnp.asarray(problem.branch_lengths)

lnl, (d_lengths, d_model) = jax.jit(jax.value_and_grad(log_likelihood, argnums=(1, 2)))(
    problem.data, lengths, model, rates
)
print(f"lnL = {float(lnl):.8f}   (IQ-TREE 2 -blfix: -2774.56836204)")
print("d lnL / d branch lengths:", jnp.round(d_lengths[:-1], 3))
print("d lnL / d exchangeabilities (AC):", float(d_model.exchangeabilities[0, 1]))
print("pulley principle, lnL on every edge:", jnp.round(edge_log_likelihoods(
    problem.data, lengths, model, rates), 8))

posterior = ancestral_states(problem.data, lengths, model, rates)
root = posterior[-1][problem.patterns.site_to_pattern]
print("root state posteriors, first 3 sites:\n", jnp.round(root[:3], 3))

kappas = jnp.linspace(1.0, 8.0, 8)
models = stack([gtr(jnp.array([1.0, k, 1.0, 1.0, k]), model.frequencies) for k in kappas])
print("lnL over a batch of 8 transition/transversion ratios:",
      jnp.round(batched_log_likelihood(problem.data, lengths, models, rates), 3))
