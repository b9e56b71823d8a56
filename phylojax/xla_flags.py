"""XLA:CPU compiler settings that phylojax's command line uses (and that library users may opt into).

phylojax's programs are long chains of small matrix products and elementwise fusions, and on the
CPU most of a first run is XLA compiling them. With jaxlib 0.10, XLA:CPU's newer MLIR fusion
emitters took 30 % more compile time than its older LLVM IR emitters for the same programs and
made the elementwise fusions no faster -- slightly slower: HepatitisD FEL, CPU seconds of a
script that prepares the data and compiles the four programs 10.5 -> 8.6, the site fits
0.70 -> 0.61 s, the warm ``fel()`` 1.44 -> 1.33 s (benchmarks/RESULTS_fel.md). :func:`tune_cpu_compiler` turns the fusion emitters off through
``XLA_FLAGS``, which XLA reads once, when JAX starts its backend; so it must run before the first
JAX computation of the process, and it does nothing afterwards (a notebook that has already run
JAX keeps XLA's defaults). Worker processes inherit the setting through the environment.

The site fits' programs (FEL's largest) are compiled at LLVM optimisation level 1 instead of 2
(:func:`site_compiler_options`, per program through ``jax.jit(compiler_options=...)``): their
time goes to matrix products in XLA's runtime library, not to generated code, and level 1 cut
their compilation by ~20 % (HepatitisD 2.5 -> 2.0 s; rbp3's worker share, first call with its
compilation, 6.7-7.0 -> 5.5-6.0 s) at the same or better speed (0.61 -> 0.60 s, 2.55-2.79 -> 2.59-2.63 s). The global fits' programs stay at
level 2 (level 1 made their evaluations ~8 % slower). Only on a CPU-only installation.

The flag is an XLA debug option whose name an XLA release may drop, and XLA aborts on a flag it
does not know; so it is set only for the jaxlib releases it was measured with
(:data:`TESTED_JAXLIB`), never when the user's ``XLA_FLAGS`` already mentions it, and never with
``PHYLOJAX_XLA_TUNING=off``. It affects only XLA:CPU; results agree with the default emitters to
~1e-11 in lnL (rounding order).
"""

from __future__ import annotations

import os
import sys

CPU_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)
TESTED_JAXLIB = ((0, 10),)  # (major, minor) releases the flags were measured with


def _jaxlib_release() -> tuple[int, int] | None:
    try:
        from importlib.metadata import version

        major, minor = version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except Exception:  # noqa: BLE001 -- not installed the usual way: leave XLA alone
        return None


def _tuning_allowed() -> bool:
    """Not switched off (``PHYLOJAX_XLA_TUNING=off``) and a jaxlib the settings were measured with."""
    off = os.environ.get("PHYLOJAX_XLA_TUNING", "on").strip().lower() in ("off", "0", "no", "false")
    return not off and _jaxlib_release() in TESTED_JAXLIB


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return True  # cannot tell: assume it has, and change nothing


def tune_cpu_compiler() -> bool:
    """Add :data:`CPU_FLAGS` to ``XLA_FLAGS`` (see the module docstring); returns whether it did.

    Call it before the first JAX computation (the ``phylojax`` command does, first thing)."""
    if not _tuning_allowed() or _backend_started():
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in CPU_FLAGS if f.split("=")[0] not in flags]
    if not extra:
        return False
    os.environ["XLA_FLAGS"] = " ".join([flags.strip(), *extra]).strip()
    return True


_ACCELERATOR_PACKAGES = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu", "jax-tpu")


def _cpu_only() -> bool:
    """Whether JAX can only run on the CPU here (``JAX_PLATFORMS=cpu``, or no accelerator
    plugin installed); decided without starting JAX's backend."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    try:
        from importlib.metadata import distributions

        names = [(d.metadata["Name"] or "").lower() for d in distributions()]
    except Exception:  # noqa: BLE001
        return False
    return not any(n.startswith(_ACCELERATOR_PACKAGES) for n in names)


_SITE_OPTIONS: list = []


def site_compiler_options() -> dict | None:
    """``compiler_options`` for the site fits' jitted programs: LLVM level 1 on a CPU-only
    installation of a tested jaxlib (module docstring), else ``None`` (XLA's defaults)."""
    if not _SITE_OPTIONS:
        tuned = _tuning_allowed() and _cpu_only()
        _SITE_OPTIONS.append({"xla_backend_optimization_level": 1} if tuned else None)
    return _SITE_OPTIONS[0]
