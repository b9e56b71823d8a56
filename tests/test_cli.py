"""End-to-end CLI checks that span modules."""

import json

import pytest

from phylojax.cli import main


def test_help_lists_working_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("loglik", "fit", "simulate", "fel", "parsimony", "index"):
        assert name in out


def test_codon_loglik_matches_codeml(capsys, data_dir):
    # codeml (PAML 4.9j), control file tests/data/codon/codeml.ctl: seqtype = 1, model = 0,
    # CodonFreq = 4 (F1x4MG), kappa = 2.5 and omega = 0.4 fixed, fix_blength = 2:
    #   lnL(ntime:  0  np:  0):  -2146.911494
    code = main(["loglik", "-s", str(data_dir / "codon/mg94.phy"), "-t",
                 str(data_dir / "codon/mg94.nwk"), "-m", "MGK{2.5,0.4}+F1X4", "--json"])
    assert code == 0
    value = json.loads(capsys.readouterr().out)["log_likelihood"]
    assert value == pytest.approx(-2146.911494, abs=1e-6)
