"""The ``phylojax`` command line.

This is the only module that prints, exits or enables float64. Each subcommand lives in its own
module under :mod:`phylojax.commands` and exposes ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``. A subcommand is listed in ``--help`` only when its module exists.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .errors import PhylojaxError

# Order in which subcommands appear in --help.
COMMANDS = ("loglik", "fit", "simulate", "fel", "parsimony", "index")


def _available_commands() -> list[str]:
    return [
        name
        for name in COMMANDS
        if importlib.util.find_spec(f"phylojax.commands.{name}") is not None
    ]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="phylojax",
        description="JAX-native, differentiable phylogenetics.",
    )
    parser.add_argument("--version", action="version", version=f"phylojax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available_commands():
        module = importlib.import_module(f"phylojax.commands.{name}")
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _enable_compilation_cache(jax) -> None:
    """Keep XLA's compiled programs on disk between runs (JAX's persistent compilation cache),
    so that only the first run of a given problem shape on a machine pays for compilation.

    Directory: ``$PHYLOJAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/phylojax/xla`` (``~/.cache``).
    ``PHYLOJAX_CACHE_DIR=off`` disables it. A cache that cannot be created is skipped silently.
    """
    import os
    import pathlib

    where = os.environ.get("PHYLOJAX_CACHE_DIR")
    if where is not None and where.strip().lower() in ("", "0", "off", "no", "none"):
        return
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        where = pathlib.Path(base) / "phylojax" / "xla"
    try:
        pathlib.Path(where).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(where))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except (OSError, AttributeError):  # read-only home, or a JAX without the option
        pass


# Python's garbage-collector thresholds in the command line and its FEL workers; the defaults are
# (700, 10, 10). Why: _collect_garbage_rarely.
GC_THRESHOLDS = (20000, 20, 100)


def _collect_garbage_rarely() -> None:
    """Make Python's cyclic garbage collector run rarely, and never over the imported modules.

    Tracing and lowering JAX programs (a first run's main work besides XLA's compilation)
    creates many short-lived container objects. With Python's default thresholds the collector
    ran ~400 times in a HepatitisD FEL run, three of them over every object the imports made
    (JAX, NumPy, SciPy): 0.7-0.9 s of the main process's CPU and 0.5-0.6 s of each FEL worker's
    (``gc.callbacks``), ~2 CPU seconds of a cold run on two cores. With a gen-0 threshold of
    20000, and the imported objects frozen before the workers are forked (``gc.freeze`` in
    :mod:`phylojax.workers`, as Python advises for fork without exec: kept out of every
    collection and off the pages the processes share copy-on-write), 16 collections took
    0.2-0.3 s in the main process and 0.1-0.2 s in each worker (benchmarks/RESULTS_fel.md).
    Objects are still freed by reference counting as before; only reference cycles wait a
    little longer.

    Only the ``phylojax`` program (:func:`run`) and the workers set this; :func:`main` called
    from Python (a test, a notebook) leaves the process's collector as it is.
    """
    import gc

    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    from .xla_flags import tune_cpu_compiler

    tune_cpu_compiler()  # before JAX starts its backend (phylojax/xla_flags.py)
    import jax

    # Every reported likelihood is float64 (DESIGN.md section 0).
    jax.config.update("jax_enable_x64", True)
    _enable_compilation_cache(jax)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PhylojaxError as err:
        print(f"phylojax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"phylojax {args.command}: error: {err.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phylojax: interrupted", file=sys.stderr)
        return 130


def run() -> None:  # pragma: no cover -- exercised by tests/test_cli.py in a subprocess
    """The ``phylojax`` command: :func:`main`, then exit without tearing the interpreter down.

    Everything a command writes is closed and flushed by then, and JAX's persistent cache is
    written as each program compiles; what is left at exit is freeing JAX's runtime, its caches
    and the FEL worker pool, which took ~0.3 s (HepatitisD with the compilation cache: 3.72 /
    3.84 / 3.75 s -> 3.49 / 3.45 / 3.48 s end to end). The workers are killed first; a command
    that raised an uncaught exception exits the ordinary way, with its traceback.

    Only here, not in :func:`main`: ``malloc`` keeps freed memory (:mod:`phylojax.memory`) and
    Python's collector runs rarely (:func:`_collect_garbage_rarely`).
    """
    import os

    from .memory import keep_freed_memory

    keep_freed_memory()  # before any thread allocates (phylojax/memory.py)
    _collect_garbage_rarely()
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken pipe: report failure, as Python would
        code = code or 1
    from . import workers

    workers.shutdown(kill=True)
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
