"""ML fitting against IQ-TREE 2.0.7's optimum on the same fixed topology (frozen values)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from phylojax.fit import fit, newton_sweeps, prepare_fit
from phylojax.io import read_alignment, read_tree
from phylojax.likelihood import log_likelihood
from phylojax.models.spec import parse_model

# iqtree2 -s ALN -te TREE -m GTR+F+G4 -T 1 -redo   (IQ-TREE 2.0.7; "Log-likelihood of the tree"
# in ALN.iqtree; +F there means empirical frequencies, i.e. our frequencies="empirical").
IQTREE_GTR_F_G4 = {
    ("sim7.fa", "sim7.nwk"): -2761.8359,
    ("CD2.fasta", "CD2.nwk"): -3499.8497,  # 10 taxa x 561 nt, one polytomy
    ("p51.fasta", "p51.nwk"): -3279.2384,  # 8 taxa x 1320 nt
}


@pytest.mark.slow
@pytest.mark.parametrize("files", list(IQTREE_GTR_F_G4))
def test_fit_reaches_iqtree_optimum(data_dir, files):
    aln = read_alignment(data_dir / "fit" / files[0])
    tree = read_tree(data_dir / "fit" / files[1])
    iqtree = IQTREE_GTR_F_G4[files]
    same_model = fit(aln, tree, parse_model("GTR+F+G4"), frequencies="empirical")
    assert same_model.log_likelihood >= iqtree - 0.01
    # The same optimum, not a different model: IQ-TREE prints 4 decimals and stops at ~1e-3.
    assert same_model.log_likelihood <= iqtree + 0.05
    # The reported lnL is the likelihood of the reported tree and parameters.
    bl = jnp.asarray(same_model.branch_lengths)
    again = log_likelihood(same_model.problem.data, bl, same_model.model, same_model.rates)
    assert float(again) == pytest.approx(same_model.log_likelihood, abs=1e-8)
    assert set(same_model.parameters) == {"rates", "alpha"}
    # ML frequencies (IQ-TREE's +FO) nest the empirical ones: never worse.
    free_freqs = fit(aln, tree, parse_model("GTR+F+G4"))
    assert free_freqs.log_likelihood >= same_model.log_likelihood - 1e-4
    assert sum(free_freqs.parameters["frequencies"]) == pytest.approx(1.0)


@pytest.mark.slow
def test_fixed_parameters_stay_fixed_and_newton_zeroes_gradient(data_dir):
    aln = read_alignment(data_dir / "fit" / "sim7.fa")
    tree = read_tree(data_dir / "fit" / "sim7.nwk")
    spec = parse_model("GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+G4")
    result = fit(aln, tree, spec)
    assert set(result.parameters) == {"alpha"}
    np.testing.assert_allclose(result.model.frequencies, [0.3, 0.2, 0.25, 0.25], rtol=1e-12)
    # Newton sweeps alone, from the input lengths, at the fitted model: a stationary point
    # (finite-difference check of d lnL / dt on every free branch).
    fp, lengths0, _, problem, _ = prepare_fit(aln, tree, spec)
    fitted_x = _unconstrained_of(fp, result)
    lengths, lnl, sweeps = newton_sweeps(fp, lengths0, fitted_x, max_sweeps=40, tol=1e-10)
    # Simultaneous 1-D steps converge linearly where branches interact (measured: 0.015 short
    # after 40 sweeps on sim7); the joint L-BFGS polish in fit() closes the gap.
    assert lnl == pytest.approx(result.log_likelihood, abs=0.05)
    start = fp.log_likelihood(jnp.asarray(lengths0), jnp.asarray(fitted_x))
    assert lnl > float(start) + 1.0 and sweeps > 1
    assert np.all(lengths[np.asarray(fp.free_branches)] > 0)
    assert np.all(lengths[~np.asarray(fp.free_branches)] == 0)


def _unconstrained_of(fp, result):
    from phylojax.fit import _to_unconstrained

    values = {
        "rates": (1.5, 4.0, 0.8, 1.2, 5.0),
        "frequencies": (0.3, 0.2, 0.25, 0.25),
        "alpha": result.parameters["alpha"],
    }
    return np.concatenate([_to_unconstrained(n, values[n]) for n in fp.layout.names])


@pytest.mark.slow
def test_fit_cli_json(data_dir, tmp_path, capsys):
    from phylojax.cli import main

    out = tmp_path / "fitted.nwk"
    code = main([
        "fit", "-s", str(data_dir / "fit" / "sim7.fa"), "-t", str(data_dir / "fit" / "sim7.nwk"),
        "-m", "GTR+F+G4", "--frequencies", "empirical", "-o", str(out), "--json",
    ])  # fmt: skip
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["log_likelihood"] >= IQTREE_GTR_F_G4[("sim7.fa", "sim7.nwk")] - 0.01
    assert {"rates", "alpha", "tree", "iterations", "seconds"} <= set(result)
    assert read_tree(str(out)).leaf_count == 7
