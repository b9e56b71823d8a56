"""phylojax.xla_flags: the XLA:CPU settings of the command line.

Oracles: the environment a fresh interpreter ends up with, and XLA itself accepting the flags
(it aborts the process on a flag it does not know, so a JAX computation after the change must
run)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from phylojax import xla_flags

SCRIPT = """
import os
from phylojax.xla_flags import tune_cpu_compiler, TESTED_JAXLIB, _jaxlib_release
changed = tune_cpu_compiler()
import jax, jax.numpy as jnp
x = float(jax.jit(lambda a: jnp.sum(jnp.exp(a)))(jnp.zeros(3)))
print(changed, _jaxlib_release() in TESTED_JAXLIB, repr(os.environ.get("XLA_FLAGS", "")), x)
print(tune_cpu_compiler())  # the backend has started: nothing more
"""


def _run(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PHYLOJAX_XLA_TUNING")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, env=full)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split("\n")


def test_fresh_process_gets_the_flags_and_xla_accepts_them():
    first, second = _run()[:2]
    changed, tested, flags, value = first.split(" ", 3)
    if tested == "False":
        pytest.skip("jaxlib release the flags were not measured with: left alone")
    assert changed == "True" and "--xla_cpu_use_fusion_emitters=false" in flags
    assert float(value) == 3.0 and second == "False"


def test_user_flags_and_the_off_switch_are_respected():
    line = _run(XLA_FLAGS="--xla_cpu_use_fusion_emitters=true")[0].split(" ", 3)
    assert line[0] == "False" and line[2] == "'--xla_cpu_use_fusion_emitters=true'"
    line = _run(PHYLOJAX_XLA_TUNING="off")[0].split(" ", 3)
    assert line[0] == "False" and line[2] == "''"


def test_nothing_changes_once_the_backend_has_started(monkeypatch):
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()  # this test process's backend
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert xla_flags.tune_cpu_compiler() is False
    assert "XLA_FLAGS" not in os.environ


def test_site_options_only_where_measured(monkeypatch):
    monkeypatch.setattr(xla_flags, "_SITE_OPTIONS", [])
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert xla_flags.site_compiler_options() is None  # an accelerator: XLA's defaults
    monkeypatch.setattr(xla_flags, "_SITE_OPTIONS", [])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(xla_flags, "_jaxlib_release", lambda: (0, 99))
    assert xla_flags.site_compiler_options() is None  # an untested jaxlib
    monkeypatch.setattr(xla_flags, "_SITE_OPTIONS", [])
    monkeypatch.setattr(xla_flags, "_jaxlib_release", lambda: xla_flags.TESTED_JAXLIB[0])
    assert xla_flags.site_compiler_options() == {"xla_backend_optimization_level": 1}
