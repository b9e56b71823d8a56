import pathlib

import pytest

from phylojax.xla_flags import tune_cpu_compiler

tune_cpu_compiler()  # the command line's XLA:CPU settings, before JAX starts its backend

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

DATA = pathlib.Path(__file__).parent / "data"
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def data_dir() -> pathlib.Path:
    return DATA


def shared_or_skip(*parts: str) -> pathlib.Path:
    """Path into ../shared/data; the test is skipped where the shared data set is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data {path} not present")
    return path
