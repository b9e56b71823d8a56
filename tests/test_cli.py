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


def test_console_command_exits_fast_with_its_output_and_status(tmp_path, data_dir):
    """``python -m phylojax`` (the console command's ``cli.run``) ends with ``os._exit``: the
    JSON it wrote, its printed summary and its exit status must all survive that, the worker
    processes must be gone, and an error still gives status 2 and one line."""
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "cd2.json"
    env = {**os.environ, "PHYLOJAX_CACHE_DIR": str(tmp_path / "xla")}
    done = subprocess.run([sys.executable, "-m", "phylojax", "fel", "--alignment",
                           str(data_dir / "hyphy/CD2.nex"), "--output", str(out), "--quiet"],
                          capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Found 13 sites under pervasive positive" in done.stdout
    doc = json.loads(out.read_text())
    assert len(doc["MLE"]["content"]["0"]) == 187
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "_worker_main" not in ps and str(out) not in ps
    bad = subprocess.run([sys.executable, "-m", "phylojax", "fel", "--alignment",
                          str(tmp_path / "missing.nex")], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "missing.nex: no such file" in bad.stderr
    assert "Traceback" not in bad.stderr
