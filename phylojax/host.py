"""Host data onto the device without compiling anything.

``jnp.asarray(numpy_array)`` outside a trace lifts the array with a ``stage`` program that XLA
compiles once per shape and dtype: ~13 ms each in a fresh process, and a FEL analysis met ~14
such shapes, most of them before its first fit could start (cold HepatitisD: 0.29 s of the main
thread's XLA compilation). ``jax.device_put`` copies the array instead (0.1-2.6 ms, the same
dtype canonicalisation: float64 stays float64 only with ``jax_enable_x64``). Inside a trace use
``jnp.asarray`` as usual; this is for the host side: preparing data and calling jitted
objectives from an optimiser.
"""

from __future__ import annotations

import jax
import numpy as np


def to_device(x, dtype=None) -> jax.Array:
    """``jnp.asarray(x, dtype)`` for host data (NumPy arrays, lists, scalars), compiling nothing;
    a JAX array of the right dtype is returned as it is."""
    if isinstance(x, jax.Array):
        return x if dtype is None or x.dtype == np.dtype(dtype) else x.astype(dtype)
    return jax.device_put(np.asarray(x, dtype=dtype))
