"""Background compilation (phylojax.aot): the later ordinary call reuses the program compiled
ahead of time, and FEL's precompiled signatures match the calls it makes."""

import os
import pathlib
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from phylojax import aot

HERE = pathlib.Path(__file__).parent / "data" / "hyphy"


@partial(jax.jit, static_argnums=(1,))
def _program(x, n):
    return jnp.sin(x) * n


def test_compile_later_fills_the_jit_cache(monkeypatch):
    x = np.linspace(0.0, 1.0, 37)  # a shape no other test uses
    job = aot.compile_later(_program, jax.ShapeDtypeStruct(x.shape, x.dtype), 3)
    assert job is not None
    aot.wait(job)
    assert isinstance(job.result(), jax.stages.Compiled)
    np.testing.assert_allclose(_program(jnp.asarray(x), 3), 3 * np.sin(x))
    # the same program and signature again: the finished job is returned, nothing is resubmitted
    assert aot.compile_later(_program, jnp.asarray(x), 3) is job
    assert aot.compile_later(_program, jnp.asarray(x), 4) is not job
    monkeypatch.setenv("PHYLOJAX_PRECOMPILE", "off")
    assert aot.compile_later(_program, x, 3) is None
    aot.wait(None)  # accepted


def test_failed_job_is_left_to_the_ordinary_call():
    job = aot.compile_later(_program, jax.ShapeDtypeStruct((2, 3), jnp.float64), [1])  # unhashable
    aot.wait(job)  # does not raise
    assert job.exception() is not None


COUNT_COMPILES = r"""
import logging, sys, jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_log_compiles", True)
seen = []
class H(logging.Handler):
    def emit(self, record):
        m = record.getMessage()
        if m.startswith("Finished XLA compilation of jit("):
            seen.append(m.split("jit(")[1].split(")")[0])
logging.getLogger("jax").addHandler(H())
from phylojax.io import read_alignment
from phylojax.selection.fel import fel
fel(read_alignment(sys.argv[1]))
print(seen.count("_fast_driver"), seen.count("_full_value_and_grad"), seen.count("stage"))
"""


@pytest.mark.slow
def test_fel_compiles_each_program_once():
    """In a fresh process, the site driver and the MG94 objective are compiled exactly once:
    the background job's abstract signature is the one the analysis then calls (a mismatch would
    compile twice). And no ``stage`` program: host data go to the device by ``device_put``
    (:func:`phylojax.host.to_device`), not by ``jnp.asarray``, which compiles one per shape."""
    env = {**os.environ, "PHYLOJAX_CACHE_DIR": "off", "PHYLOJAX_PRECOMPILE": "on",
           "PHYLOJAX_WORKERS": "off"}  # the site fits in this process (test_workers has the pool's)
    out = subprocess.run([sys.executable, "-c", COUNT_COMPILES, str(HERE / "CD2.nex")], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["1", "1", "0"], out.stderr[-2000:]


def test_to_device_compiles_nothing_and_keeps_dtypes():
    from phylojax.host import to_device

    compiled = []

    def listener(event, duration, **kwargs):
        if "backend_compile" in event:
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        x = np.arange(3 * 11 * 7, dtype=np.float64).reshape(3, 11, 7)  # shapes no other test uses
        y = to_device(x)
        assert not compiled
        assert isinstance(y, jax.Array) and y.dtype == jax.dtypes.canonicalize_dtype(np.float64)
        np.testing.assert_array_equal(np.asarray(y), x)
        assert to_device([1, 0, 1], np.int32).dtype == np.int32
        assert to_device(y) is y
        assert not compiled
        jnp.asarray(np.ones((5, 13, 2)))  # the listener does see what jnp.asarray compiles
        assert compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
