"""FEL site paths on a large tree with extreme branch lengths: finite values, nested fits, and the
reported optimum's lnL equal to an independent evaluation (scipy ``expm`` per branch, pruning in
log space in numpy)."""

import numpy as np
import pytest
import scipy.linalg
from scipy.special import logsumexp

from phylojax.models.codon import mg94_parts
from phylojax.selection.site_fits import UPPER, SiteProblem, fit_sites_fast
from phylojax.selection.site_srv_no import fit_sites_srv_no

LEAVES = 300


def _random_tree(rng, leaves):
    """Postorder ``[parent, child1, child2]`` of a random binary tree (nodes ``0..leaves-1`` are
    tips, the root is ``2 * leaves - 2``)."""
    pool = list(range(leaves))
    ops = []
    nxt = leaves
    while len(pool) > 1:
        i, j = sorted(rng.choice(len(pool), 2, replace=False))
        b, a = pool.pop(j), pool.pop(i)
        ops.append([nxt, a, b])
        pool.append(nxt)
        nxt += 1
    return np.array(ops, np.int32)


def _numpy_loglik(tip, ops, times, q, pi):
    """Independent site lnL: P_b = expm(t_b Q) (scipy), pruning on log partials."""
    leaves = tip.shape[0]
    with np.errstate(divide="ignore"):
        logs = {n: np.log(tip[n]) for n in range(leaves)}
    for parent, a, b in ops:
        parts = []
        for c in (a, b):
            p = scipy.linalg.expm(times[c] * q)
            with np.errstate(divide="ignore"):
                parts.append(logsumexp(np.log(np.maximum(p, 0.0)) + logs[c][None, :], axis=1))
        logs[parent] = parts[0] + parts[1]
    return float(logsumexp(np.log(pi) + logs[ops[-1, 0]]))


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    ops = _random_tree(rng, LEAVES)
    nodes = 2 * LEAVES - 1
    # branch parameters from 1e-8 to 30 (log-uniform), a few exactly 0, the root's unused
    times = np.exp(rng.uniform(np.log(1e-8), np.log(30.0), nodes))
    times[rng.choice(nodes, 20, replace=False)] = 0.0
    times[-1] = 0.0
    g = rng.dirichlet(np.full(4, 5.0), size=3)
    r_s, r_n, pi = mg94_parts(np.array([0.5, 1.0, 0.3, 0.8, 2.0, 0.6]), g)
    prob = SiteProblem(r_s, r_n, pi, times, np.zeros(nodes, bool), ops)
    states = np.asarray(pi).shape[0]
    # 8 sites: random codons, plus fully ambiguous taxa, and one site all-but-one identical
    codes = rng.integers(0, states, (8, LEAVES))
    codes[7] = 5
    codes[7, 0] = 40
    tips = np.zeros((8, LEAVES, states))
    np.put_along_axis(tips, codes[..., None], 1.0, axis=2)
    tips[:, rng.choice(LEAVES, 30, replace=False)] = 1.0
    return prob, tips


def _q(prob, a, b):
    m = a * np.asarray(prob.syn) + b * np.asarray(prob.nonsyn)
    q = m * np.asarray(prob.frequencies)[None, :]
    return q - np.diag(q.sum(1))


@pytest.mark.slow
def test_fast_path_large_tree_extreme_lengths(problem):
    prob, tips = problem
    fits = fit_sites_fast(prob, tips)
    for arr in (fits.alpha, fits.beta, fits.alt_loglik, fits.null_loglik):
        assert np.all(np.isfinite(arr))
    assert np.all(fits.alt_loglik >= fits.null_loglik) and np.all(fits.alt_loglik < 0)
    # every rate within HyPhy's bounds [0, 10000], also on saturated random-codon sites (which
    # reached beta ~ 14142 when the bound was put on r = |(alpha, beta)| instead)
    for arr in (fits.alpha, fits.beta, fits.null_rate):
        assert np.all(arr >= 0) and np.all(arr <= UPPER * (1 + 1e-12)), arr
    ops, times, pi = np.asarray(prob.operations), np.asarray(prob.times), np.asarray(prob.frequencies)
    for s in (0, 7):
        q = _q(prob, fits.alpha[s], fits.beta[s])
        ref = _numpy_loglik(tips[s], ops, times, q, pi)
        assert abs(fits.alt_loglik[s] - ref) < 1e-6 * max(1.0, abs(ref))
        rate = fits.null_rate[s]
        ref_null = _numpy_loglik(tips[s], ops, times, _q(prob, rate, rate), pi)
        assert abs(fits.null_loglik[s] - ref_null) < 1e-6 * max(1.0, abs(ref_null))


@pytest.mark.slow
def test_srv_no_path_large_tree_extreme_lengths(problem):
    prob, tips = problem
    fits = fit_sites_srv_no(prob, tips)
    assert np.all(np.isfinite(fits.beta)) and np.all(np.isfinite(fits.alt_loglik))
    assert np.all(fits.alt_loglik >= fits.null_loglik) and np.all(fits.alt_loglik < 0)
    ops, times, pi = np.asarray(prob.operations), np.asarray(prob.times), np.asarray(prob.frequencies)
    s = 0
    ref = _numpy_loglik(tips[s], ops, times, _q(prob, 1.0, fits.beta[s]), pi)
    assert abs(fits.alt_loglik[s] - ref) < 1e-6 * max(1.0, abs(ref))

