"""MG94 codon models: brute-force construction, invariants, CF3X4, and a codeml oracle."""

import itertools
import json

import numpy as np
import pytest

from phylojax.alphabets import genetic_code, nucleotide_partials
from phylojax.io import read_alignment, tree_for_alignment
from phylojax.likelihood import log_likelihood, prepare
from phylojax.models.codon import (
    codon_frequencies,
    implied_position_frequencies,
    mg94,
    mg94_parts,
    mgk,
    position_counts,
)
from phylojax.models.rates import rate_model

THETA = np.array([0.55, 1.0, 0.27, 0.49, 1.03, 0.31])  # AC AG AT CG CT GT
G = np.array([[0.3, 0.2, 0.3, 0.2], [0.25, 0.25, 0.2, 0.3], [0.1, 0.4, 0.3, 0.2]])


def brute_force_q(theta6, omega, g, code=1):
    """Direct loop over codon pairs, written independently of phylojax.models.codon."""
    sense, table, _ = genetic_code(code)
    pairs = ["AC", "AG", "AT", "CG", "CT", "GT"]
    th = {}
    for (a, b), v in zip(pairs, theta6):
        th[a + b] = th[b + a] = v
    n = len(sense)
    q = np.zeros((n, n))
    for i, j in itertools.product(range(n), range(n)):
        diffs = [k for k in range(3) if sense[i][k] != sense[j][k]]
        if len(diffs) != 1:
            continue
        k = diffs[0]
        x, y = sense[i][k], sense[j][k]
        rate = th[x + y] * g[k]["ACGT".index(y)]
        if table[sense[i]] != table[sense[j]]:
            rate *= omega
        q[i, j] = rate
    np.fill_diagonal(q, -q.sum(1))
    pi = np.array([np.prod([g[k]["ACGT".index(c[k])] for k in range(3)]) for c in sense])
    return q, pi / pi.sum()


@pytest.mark.parametrize("code", [1, 2])
def test_mg94_matches_brute_force(code):
    q_ref, pi_ref = brute_force_q(THETA, 0.37, G, code)
    model = mg94(THETA, 0.37, G, code=code, normalise=False)
    np.testing.assert_allclose(np.asarray(model.frequencies), pi_ref, rtol=1e-13)
    np.testing.assert_allclose(np.asarray(model.rate_matrix()), q_ref, rtol=1e-12, atol=1e-15)
    # normalised: one expected substitution per codon
    qn = np.asarray(mg94(THETA, 0.37, G, code=code).rate_matrix())
    np.testing.assert_allclose(-(pi_ref * np.diag(qn)).sum(), 1.0, rtol=1e-13)
    np.testing.assert_allclose(qn, q_ref / -(pi_ref * np.diag(q_ref)).sum(), rtol=1e-12, atol=1e-15)


def test_invariants_and_split():
    model = mgk(2.3, 0.6, G, normalise=False)
    q = np.asarray(model.rate_matrix())
    pi = np.asarray(model.frequencies)
    np.testing.assert_allclose(q.sum(1), 0.0, atol=1e-14)
    flux = pi[:, None] * q
    np.testing.assert_allclose(flux, flux.T, atol=1e-16)
    # synonymous + omega * non-synonymous parts rebuild the model; each part is reversible
    theta = np.array([1, 2.3, 1, 1, 2.3, 1.0])
    r_s, r_n, pi2 = mg94_parts(theta, G)
    np.testing.assert_allclose(np.asarray(r_s + 0.6 * r_n), np.asarray(model.exchangeabilities))
    np.testing.assert_array_equal(np.asarray(r_s), np.asarray(r_s).T)
    assert np.all((np.asarray(r_s) > 0) & (np.asarray(r_n) > 0) == False)  # noqa: E712
    # 61 x 61 with 9 neighbours per codon at most; stop-adjacent codons have fewer
    single = (np.asarray(r_s) + np.asarray(r_n)) > 0
    assert single.shape == (61, 61) and single.sum(1).max() == 9


@pytest.mark.parametrize("code", [1, 2, 11])
def test_cf3x4_solved_exactly(code):
    rng = np.random.default_rng(code)
    counts = rng.uniform(1, 10, size=(3, 4))
    f = counts / counts.sum(-1, keepdims=True)
    pi, n = codon_frequencies(counts, "CF3X4", code)
    np.testing.assert_allclose(implied_position_frequencies(n, code), f, atol=1e-12)
    np.testing.assert_allclose(n.sum(-1), 1.0, atol=1e-15)
    # and the codon frequencies' marginals are the observed ones
    sense, _, _ = genetic_code(code)
    for k in range(3):
        marg = [pi[[c[k] == b for c in sense]].sum() for b in "ACGT"]
        np.testing.assert_allclose(marg, f[k], atol=1e-12)
    # F3X4 marginals are *not* the observed ones (the stop-codon bias CF3X4 removes)
    pi3, _ = codon_frequencies(counts, "F3X4", code)
    marg3 = [pi3[[c[0] == b for c in sense]].sum() for b in "ACGT"]
    assert np.abs(np.array(marg3) - f[0]).max() > 1e-4


def test_cf3x4_matches_hyphy_cd2(data_dir):
    # HyPhy 2.5.47 solves CF3x4 loosely (DESIGN.md §3 step 4): agreement to 3e-5.
    aln = read_alignment(data_dir / "hyphy" / "CD2.nex")
    pi, _ = codon_frequencies(nucleotide_partials(aln), "CF3X4")
    fits = json.loads((data_dir / "hyphy" / "reference" / "CD2.intermediate-fits.json").read_text())
    ref = np.ravel(fits["Full-MG94"]["EFV"]["XkiuijYa.model_MGREV"])
    np.testing.assert_allclose(pi, ref, atol=3e-5)
    assert position_counts(nucleotide_partials(aln)).sum() == pytest.approx(
        np.sum(nucleotide_partials(aln).sum(-1) < 4)
    )


def test_codeml_f1x4mg_oracle(data_dir):
    # tests/data/codon/codeml.ctl (PAML 4.9j, `codeml codeml.ctl` in tests/data/codon):
    # seqtype = 1, CodonFreq = 4 (F1x4MG), model = 0, NSsites = 0, fix_kappa = 1, kappa = 2.5,
    # fix_omega = 1, omega = 0.4, fix_blength = 2 (branch lengths from mg94.nwk), icode = 0
    # -> codeml.out: "lnL(ntime:  0  np:  0):  -2146.911494"
    codeml_lnl = -2146.911494
    d = data_dir / "codon"
    aln = read_alignment(d / "mg94.phy")
    problem = prepare(aln, tree_for_alignment(aln, d / "mg94.nwk"), codon=True)
    model = mgk(2.5, 0.4, nucleotide_partials(aln), frequencies="F1X4")
    lnl = float(log_likelihood(problem.data, problem.branch_lengths, model, rate_model()))
    assert lnl == pytest.approx(codeml_lnl, abs=1e-6)
    # the oracle discriminates: a different omega or frequency estimator moves lnL a lot
    wrong = mgk(2.5, 0.5, nucleotide_partials(aln), frequencies="F1X4")
    assert abs(float(log_likelihood(problem.data, problem.branch_lengths, wrong, rate_model())) - lnl) > 1
    wrong = mgk(2.5, 0.4, nucleotide_partials(aln), frequencies="F3X4")
    assert abs(float(log_likelihood(problem.data, problem.branch_lengths, wrong, rate_model())) - lnl) > 0.1


def test_position_counts_unknown_bases():
    """HyPhy counts N as 1/4 of each base, skips gaps, and spreads ambiguities 1/n (rbp3's
    HyPhy GTR frequencies are reproduced to 1e-17 with this rule)."""
    from phylojax.models.codon import position_counts

    # one taxon, codon "ANY" + "-RT": A, N, Y | -, R, T
    p = np.array([[[1, 0, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1],
                   [1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 1]]], float)  # fmt: skip
    unknown = np.array([[False, True, False, False, False, False]])
    skip = position_counts(p)
    np.testing.assert_allclose(skip, [[1, 0, 0, 0], [0.5, 0, 0.5, 0], [0, 0.5, 0, 1.5]])
    counted = position_counts(p, unknown)
    np.testing.assert_allclose(counted, [[1, 0, 0, 0], [0.75, 0.25, 0.75, 0.25], [0, 0.5, 0, 1.5]])
