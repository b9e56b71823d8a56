"""Exception types raised by phylojax.

Everything a user can get wrong about their input is an :class:`InputError` whose message names
the file, and where it applies the line, taxon and column, so that the CLI can print it and exit
without a traceback.
"""

from __future__ import annotations


class PhylojaxError(Exception):
    """Base class of every error phylojax raises on purpose."""


class InputError(PhylojaxError, ValueError):
    """Bad input data: a malformed file, inconsistent names, impossible values.

    Build messages with :func:`input_error` so that the location is always formatted the same way.
    """


class PrecisionError(PhylojaxError, RuntimeError):
    """A computation that needs float64 was called without ``jax_enable_x64``."""


def input_error(
    message: str,
    *,
    file: str | None = None,
    line: int | None = None,
    taxon: str | None = None,
    column: int | None = None,
) -> InputError:
    """Return an :class:`InputError` with a uniform ``file:line: taxon 'x', column n: message``."""
    where = []
    if file is not None:
        where.append(f"{file}" + (f", line {line}" if line is not None else ""))
    elif line is not None:
        where.append(f"line {line}")
    if taxon is not None:
        where.append(f"taxon '{taxon}'")
    if column is not None:
        where.append(f"column {column}")
    prefix = ": ".join([", ".join(where)]) + ": " if where else ""
    return InputError(prefix + message)
