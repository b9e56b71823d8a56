"""Helpers shared by the subcommands: JSON output, progress bars, timing."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


def _to_builtin(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_builtin(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not isinstance(obj, str):
        arr = np.asarray(obj)
        return _to_builtin(arr.tolist()) if arr.ndim else _to_builtin(arr.item())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text of ``obj`` with numpy/jax scalars and arrays converted; non-finite floats -> null."""
    return json.dumps(_to_builtin(obj), indent=indent)


def emit_json(obj: Any) -> None:
    print(dumps(obj))


def show_progress(quiet: bool = False) -> bool:
    """Progress bars only on an interactive terminal, never in pipes or CI logs."""
    return (not quiet) and sys.stderr.isatty()


def progress(iterable: Iterable, *, total: int | None = None, desc: str = "", quiet: bool = False) -> Iterator:
    if not show_progress(quiet):
        yield from iterable
        return
    from tqdm import tqdm

    yield from tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)


@contextmanager
def stage(desc: str, quiet: bool = False):
    """Print ``desc ...`` and the elapsed time on a terminal (quiet elsewhere)."""
    start = time.perf_counter()
    if show_progress(quiet):
        print(f"{desc} ...", end="", file=sys.stderr, flush=True)
    yield
    if show_progress(quiet):
        print(f" {time.perf_counter() - start:.2f} s", file=sys.stderr, flush=True)
