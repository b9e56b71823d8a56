"""The pruning engine against IQ-TREE 2, brute-force sums and its own invariants."""

import functools
import itertools
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from phylojax.alphabets import nucleotide_partials
from phylojax.io import Alignment, parse_newick, read_alignment, read_tree
from phylojax.likelihood import (
    ancestral_states,
    branch_derivatives,
    build_topology,
    edge_log_likelihoods,
    log_likelihood,
    make_data,
    prepare,
    site_log_likelihoods,
)
from phylojax.likelihood.pruning import log_space_postorder_log_likelihoods
from phylojax.models import gtr, jc69, rate_model
from phylojax.models.spec import build_model, empirical_frequencies, parse_model

DATA = pathlib.Path(__file__).parent / "data" / "lik"

# Frozen IQ-TREE 2.0.7 values ("1. Initial log-likelihood" with all digits), produced by
#   iqtree2 -s sim7.fa -te sim7.nwk -m "<MODEL>" -blfix -redo -T 1 -vvv -pre run
# in tests/data/lik (sim7: 7 taxa x 600 sites with gaps, N and IUPAC ambiguity codes).
IQTREE = {
    "JC": -2910.64041376321983989,
    "K80{3.0}+I{0.2}": -2806.40411208596333381,
    "GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}": -2817.78725225297239376,
    "GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+G4{0.7}": -2774.56836203779675998,
    "GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+I{0.1}+G4{0.7}": -2777.68180555543312948,
    "HKY{2.5}+F{0.3,0.2,0.25,0.25}+G4{0.7}": -2785.99262574582826346,
    # empirical +F: IQ-TREE resolves ambiguity codes by EM when counting frequencies
    "HKY{2.5}+F+G4{0.7}": -2786.31721038298337589,
    "GTR{1.5,4.0,0.8,1.2,5.0}+F+I{0.1}+G4{0.7}": -2776.51065827290267407,
}


_jit_lnl = jax.jit(log_likelihood)


@pytest.fixture(scope="module")
def sim7():
    aln = read_alignment(DATA / "sim7.fa")
    tree = read_tree(DATA / "sim7.nwk")
    return prepare(aln, tree)


@pytest.mark.parametrize("model_string", IQTREE)
def test_matches_iqtree_blfix(sim7, model_string):
    spec = parse_model(model_string)
    freqs = empirical_frequencies(sim7.patterns.data, sim7.patterns.weights)
    model, rates = build_model(spec, {}, freqs)
    value = _jit_lnl(sim7.data, sim7.branch_lengths, model, rates)
    assert abs(float(value) - IQTREE[model_string]) < 1e-6


def _brute_force(tips, newick_tree, model, rates):
    """Sum over every assignment of internal states (tiny trees only)."""
    tree = newick_tree
    q = np.asarray(model.rate_matrix())
    pi = np.asarray(model.frequencies)
    internal = list(range(tree.leaf_count, tree.node_count))
    total = 0.0
    for site in range(tips.shape[1]):
        lik = 0.0
        for r, w in zip(np.asarray(rates.rates), np.asarray(rates.weights)):
            probs = {v: scipy.linalg.expm(q * tree.branch_lengths[v] * r)
                     for v in range(tree.node_count - 1)}
            acc = 0.0
            for states in itertools.product(range(4), repeat=len(internal)):
                s = dict(zip(internal, states))
                term = pi[s[tree.root]]
                for v in range(tree.node_count - 1):
                    p = probs[v][s[tree.parents[v]]]
                    term *= p[s[v]] if v in s else p @ tips[v, site]
                acc += term
            lik += w * acc
        inv = sum(pi[x] * np.prod(tips[:, site, x]) for x in range(4))
        total += np.log(float(rates.pinv) * inv + (1 - float(rates.pinv)) * lik)
    return total


def test_brute_force_with_polytomy_ambiguity_and_invariant_sites():
    tree = parse_newick("((a:0.1,b:0.2):0.05,c:0.3,(d:0.15,e:0.12):0.07);")
    aln = Alignment(("a", "b", "c", "d", "e"),
                    ("ACGTTA-R", "ACGATAAA", "ATGTCAGA", "GCGTTNAA", "ACCTTAAT"))
    problem = prepare(aln, tree)
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    rates = rate_model(0.7, 4, 0.1)
    got = log_likelihood(problem.data, problem.branch_lengths, model, rates)
    expected = _brute_force(nucleotide_partials(aln), tree, model, rates)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_pulley_principle_and_edge_likelihoods(sim7):
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    rates = rate_model(0.7, 4, 0.1)
    base = float(log_likelihood(sim7.data, sim7.branch_lengths, model, rates))
    edges = edge_log_likelihoods(sim7.data, sim7.branch_lengths, model, rates)
    np.testing.assert_allclose(edges, base, rtol=1e-12)
    tree = read_tree(DATA / "sim7.nwk")
    aln = read_alignment(DATA / "sim7.fa")
    fn = jax.jit(log_likelihood)
    for node in range(tree.node_count - 1):
        rerooted = prepare(aln, tree.reroot_above(node))
        value = fn(rerooted.data, rerooted.branch_lengths, model, rates)
        np.testing.assert_allclose(value, base, rtol=1e-12)


def test_log_space_kernel_agrees(sim7):
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    rates = rate_model(0.7, 4)
    scaled = site_log_likelihoods(sim7.data, sim7.branch_lengths, model, rates)
    from phylojax.models import transition_probs

    probs = transition_probs(model.eigensystem(),
                             jnp.asarray(sim7.branch_lengths)[:, None] * rates.rates[None])
    root_weights = rates.weights[:, None] * model.frequencies[None]
    logspace = log_space_postorder_log_likelihoods(
        sim7.data.tip_partials, probs, root_weights, sim7.data.operations)
    np.testing.assert_allclose(scaled, logspace, rtol=1e-12)


def _fd(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        d = np.zeros_like(x)
        d[i] = eps
        g[i] = (f(x + d) - f(x - d)) / (2 * eps)
    return g


@pytest.mark.parametrize("degenerate", [False, True])
def test_gradients_equal_finite_differences(sim7, degenerate):
    if degenerate:  # JC69-like exchangeabilities at equal frequencies: repeated eigenvalues
        r0, f0 = np.ones(5), np.full(4, 0.25)
    else:
        r0, f0 = np.array([1.5, 4.0, 0.8, 1.2, 5.0]), np.array([0.3, 0.2, 0.25, 0.25])
    bl0 = sim7.branch_lengths

    def lnl(rates5, freqs, bl, alpha, pinv):
        return log_likelihood(sim7.data, bl, gtr(rates5, freqs), rate_model(alpha, 4, pinv))

    args = (jnp.asarray(r0), jnp.asarray(f0), jnp.asarray(bl0), 0.7, 0.1)
    grads = jax.jit(jax.grad(lnl, argnums=(0, 1, 2, 3, 4)))(*args)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    f = jax.jit(lnl)
    np.testing.assert_allclose(grads[0], _fd(lambda x: float(f(x, *args[1:])), r0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        grads[1], _fd(lambda x: float(f(args[0], x, *args[2:])), f0), rtol=1e-5, atol=1e-4)
    # the root has no branch; zero-length branches (resolved polytomies) sit on P's clip at t=0
    mask = bl0 > 1e-12
    fd_bl = _fd(lambda x: float(f(args[0], args[1], x, 0.7, 0.1)), bl0)
    np.testing.assert_allclose(np.asarray(grads[2])[mask], fd_bl[mask], rtol=1e-5, atol=1e-5)
    fd_a = (float(f(*args[:3], 0.7 + 1e-6, 0.1)) - float(f(*args[:3], 0.7 - 1e-6, 0.1))) / 2e-6
    fd_p = (float(f(*args[:3], 0.7, 0.1 + 1e-6)) - float(f(*args[:3], 0.7, 0.1 - 1e-6))) / 2e-6
    np.testing.assert_allclose(grads[3], fd_a, rtol=1e-5)
    np.testing.assert_allclose(grads[4], fd_p, rtol=1e-5)


def test_gradient_at_pinv_zero_is_finite(sim7):
    g = jax.grad(lambda p: log_likelihood(sim7.data, sim7.branch_lengths, jc69(),
                                          rate_model(0.5, 4, p)))(0.0)
    assert np.isfinite(g)


def test_branch_derivatives_match_autodiff(sim7):
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    rates = rate_model(0.7, 4, 0.1)
    bl = jnp.asarray(sim7.branch_lengths)

    def along(node, t):
        return log_likelihood(sim7.data, bl.at[node].set(t), model, rates)

    value = jax.jit(along)
    first = jax.jit(jax.grad(along, argnums=1))
    second = jax.jit(jax.grad(jax.grad(along, argnums=1), argnums=1))
    derivatives = jax.jit(branch_derivatives)
    for node in (0, 3, 8):
        lnl, d1, d2 = derivatives(sim7.data, bl, model, rates, node)
        t = bl[node]
        np.testing.assert_allclose(lnl, value(node, t), rtol=1e-12)
        np.testing.assert_allclose(d1, first(node, t), rtol=1e-8)
        np.testing.assert_allclose(d2, second(node, t), rtol=1e-6)


def test_ancestral_states_match_brute_force_posterior():
    tree = parse_newick("((a:0.1,b:0.2):0.05,(c:0.3,d:0.15):0.07);")
    aln = Alignment(("a", "b", "c", "d"), ("ACGR", "ACTA", "GTGA", "ATG-"))
    problem = prepare(aln, tree)
    model = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25])
    rates = rate_model()
    post = np.asarray(ancestral_states(problem.data, problem.branch_lengths, model, rates))
    tips = nucleotide_partials(aln)
    q, pi = np.asarray(model.rate_matrix()), np.asarray(model.frequencies)
    t = problem.topology.tree
    probs = {v: scipy.linalg.expm(q * t.branch_lengths[v]) for v in range(t.node_count - 1)}
    internal = list(range(t.leaf_count, t.node_count))
    for site in range(4):
        joint = np.zeros((len(internal), 4))
        for states in itertools.product(range(4), repeat=len(internal)):
            s = dict(zip(internal, states))
            term = pi[s[t.root]]
            for v in range(t.node_count - 1):
                p = probs[v][s[t.parents[v]]]
                term *= p[s[v]] if v in s else p @ tips[v, site]
            for k, node in enumerate(internal):
                joint[k, s[node]] += term
        expected = joint / joint.sum(1, keepdims=True)
        pattern = problem.patterns.site_to_pattern[site]
        np.testing.assert_allclose(post[:, pattern], expected, rtol=1e-10, atol=1e-14)


def _random_tree(n, rng, lengths=None):
    nodes = [f"t{i}" for i in range(n)]
    while len(nodes) > 1:
        i, j = sorted(rng.choice(len(nodes), 2, replace=False))
        bl = lambda: lengths if lengths is not None else rng.exponential(0.05)  # noqa: E731
        merged = f"({nodes[i]}:{bl():.6g},{nodes[j]}:{bl():.6g})"
        nodes = [x for k, x in enumerate(nodes) if k not in (i, j)] + [merged]
    return parse_newick(nodes[0] + ";")


def test_same_size_tree_does_not_retrace():
    rng = np.random.default_rng(1)
    names = tuple(f"t{i}" for i in range(12))
    seqs = tuple("".join(rng.choice(list("ACGT"), 40)) for _ in names)
    aln = Alignment(names, seqs)
    model, rates = jc69(), rate_model(0.5, 4)
    counted = eqx.debug.assert_max_traces(log_likelihood, max_traces=1)
    fn = jax.jit(counted)
    values = []
    for _ in range(3):
        problem = prepare(aln, _random_tree(12, rng))
        values.append(float(fn(problem.data, problem.branch_lengths, model, rates)))
        ref = log_likelihood(problem.data, problem.branch_lengths, model, rates)
        np.testing.assert_allclose(values[-1], ref, rtol=1e-12)
    assert len(set(values)) == 3


@functools.cache
def _ten_thousand_taxon_topology():
    rng = np.random.default_rng(7)
    n = 10_000
    children = [[] for _ in range(n)]
    pool = list(range(n))  # random binary tree by successive merging, as child lists
    while len(pool) > 1:
        i, j = sorted(rng.choice(len(pool), 2, replace=False))
        children.append([pool[i], pool[j]])
        pool[i] = len(children) - 1
        pool.pop(j)
    from phylojax.tree import Tree

    names = [f"t{i}" for i in range(n)] + [None] * (len(children) - n)
    tree = Tree.from_children(children, len(children) - 1, names=names,
                              branch_lengths=[0.1] * len(children))
    return build_topology(tree)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,length",
    [(jnp.float32, 1e-8), (jnp.float32, 20.0), (jnp.float64, 1e-8), (jnp.float64, 0.5)],
)
def test_ten_thousand_taxa_stay_finite(dtype, length):
    """Underflow is prevented by design: 10,000 tips, extreme branch lengths, float32 too."""
    rng = np.random.default_rng(7)
    n = 10_000
    topo = _ten_thousand_taxon_topology()
    tips = np.eye(4)[rng.integers(0, 4, size=(n, 64))]
    tips[:, :4] = 1.0  # a few all-missing columns
    data = make_data(tips, np.ones(64), topo)
    data = jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, data)
    model = gtr(jnp.asarray([1.5, 4.0, 0.8, 1.2, 5.0], dtype), jnp.asarray([.3, .2, .25, .25], dtype))
    rates = rate_model(jnp.asarray(0.5, dtype), 4)
    model, rates = jax.tree_util.tree_map(lambda x: x.astype(dtype), (model, rates))
    bl = jnp.full(topo.node_count, length, dtype)
    value = jax.jit(log_likelihood)(data, bl, model, rates)
    assert np.isfinite(float(value))
    if dtype == jnp.float64 and length == 0.5:
        grad = jax.jit(jax.grad(log_likelihood, argnums=1))(data, bl, model, rates)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_gradient_at_zero_length_branch_equals_one_sided_difference(sim7):
    """Resolved polytomies create branches of length exactly 0; P's round-off clip must not
    distort the derivative there."""
    model, rates = gtr([1.5, 4.0, 0.8, 1.2, 5.0], [0.3, 0.2, 0.25, 0.25]), rate_model(0.7, 4)
    bl = jnp.asarray(sim7.branch_lengths)
    zero = int(np.flatnonzero(np.asarray(bl)[:-1] == 0)[0])
    g = jax.grad(log_likelihood, argnums=1)(sim7.data, bl, model, rates)[zero]
    f = jax.jit(log_likelihood)
    h = 1e-7
    one_sided = (f(sim7.data, bl.at[zero].set(h), model, rates) - f(sim7.data, bl, model, rates)) / h
    np.testing.assert_allclose(g, one_sided, rtol=1e-4)
