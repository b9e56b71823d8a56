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


def test_compilation_cache_setting(tmp_path, monkeypatch):
    """The CLI points JAX's persistent compilation cache at PHYLOJAX_CACHE_DIR (or
    ~/.cache/phylojax/xla) and leaves it alone with PHYLOJAX_CACHE_DIR=off."""
    from phylojax.cli import _enable_compilation_cache

    class FakeJax:  # records config.update calls instead of changing this process's JAX
        def __init__(self):
            self.values = {}
            self.config = self

        def update(self, key, value):
            self.values[key] = value

    fake = FakeJax()
    monkeypatch.setenv("PHYLOJAX_CACHE_DIR", str(tmp_path / "xla"))
    _enable_compilation_cache(fake)
    assert fake.config.values["jax_compilation_cache_dir"] == str(tmp_path / "xla")
    assert (tmp_path / "xla").is_dir()
    off = FakeJax()
    monkeypatch.setenv("PHYLOJAX_CACHE_DIR", "off")
    _enable_compilation_cache(off)
    assert off.config.values == {}
    home = FakeJax()
    monkeypatch.delenv("PHYLOJAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _enable_compilation_cache(home)
    assert home.config.values["jax_compilation_cache_dir"] == str(tmp_path / "cache" / "phylojax" / "xla")
