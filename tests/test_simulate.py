"""Simulation: reproducible by seed, stationary composition, and parameters recovered by fit."""

import jax.numpy as jnp
import numpy as np
import pytest

from phylojax.fit import fit
from phylojax.io import parse_newick, read_alignment
from phylojax.models.nucleotide import gtr
from phylojax.models.rates import rate_model
from phylojax.simulate import simulate_alignment, to_fasta

TREE = "((t1:0.12,t2:0.08):0.05,(t3:0.2,(t4:0.03,t5:0.15):0.07):0.1,(t6:0.3,t7:0.01):0.02);"
RATES = (1.0, 4.0, 0.5, 1.0, 3.0)
FREQS = (0.35, 0.15, 0.2, 0.3)


def _simulate(seed, sites, alpha=0.5, pinv=0.0):
    model = gtr(jnp.asarray(RATES), jnp.asarray(FREQS))
    return simulate_alignment(
        parse_newick(TREE), model, rate_model(jnp.asarray(alpha), 4, pinv), sites, seed=seed
    )


def test_reproducible_by_seed_and_stationary():
    a, b, c = _simulate(1, 4000), _simulate(1, 4000), _simulate(2, 4000)
    assert a == b and a != c
    assert sorted(a) == [f"t{i}" for i in range(1, 8)]
    counts = np.array([sum(s.count(x) for s in a.values()) for x in "ACGT"], float)
    freqs = counts / counts.sum()
    # 28,000 characters, correlated along the tree: generous binomial bound.
    np.testing.assert_allclose(freqs, FREQS, atol=0.03)


def test_invariant_sites_are_constant():
    seqs = _simulate(5, 3000, alpha=0.5, pinv=0.5)
    columns = list(zip(*seqs.values()))
    constant = np.mean([len(set(c)) == 1 for c in columns])
    assert constant > 0.5  # every invariable site plus some slow variable ones


@pytest.mark.slow
def test_fit_recovers_generating_parameters(tmp_path):
    path = tmp_path / "sim.fa"
    path.write_text(to_fasta(_simulate(7, 5000)))
    result = fit(read_alignment(path), parse_newick(TREE), _spec())
    rates = np.asarray(result.parameters["rates"])
    # Sampling error at 5,000 sites on this tree: a few percent (GT = 1 fixes the scale).
    np.testing.assert_allclose(rates, RATES, rtol=0.25)
    np.testing.assert_allclose(result.parameters["frequencies"], FREQS, atol=0.02)
    assert result.parameters["alpha"] == pytest.approx(0.5, rel=0.25)
    truth = parse_newick(TREE).unroot()
    fitted = result.tree.reorder_leaves(truth.leaf_names)
    assert np.sum(fitted.branch_lengths) == pytest.approx(np.sum(truth.branch_lengths), rel=0.1)


def _spec():
    from phylojax.models.spec import parse_model

    return parse_model("GTR+F+G4")
