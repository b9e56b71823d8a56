"""The worker pool (phylojax.workers) and FEL's site fits on it (phylojax.selection.parallel).

Oracles: the same fits run in this process (results must agree to the last bit, since each
site's computation is the same program on the same numbers; on the fast path to rounding), and
the pool's own contract (pinned workers, errors and stalls reported as WorkerError, the pool
closed after them)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from phylojax import workers

HERE = pathlib.Path(__file__).parent / "data" / "hyphy"


@pytest.fixture
def pool(monkeypatch):
    monkeypatch.setenv("PHYLOJAX_WORKERS", "2")  # two workers even on a one-CPU machine
    p = workers.get()
    assert p is not None and len(p) == 2
    yield p


def test_workers_are_separate_processes_pinned_to_one_cpu(pool):
    pids = pool.map("os:getpid", [(), ()])
    assert len(set(pids)) == 2 and os.getpid() not in pids
    cpus = pool.map("os:sched_getaffinity", [(0,), (0,)])
    assert all(len(c) == 1 for c in cpus)
    assert pool.map("operator:add", [(1, 2), (3, 4)]) == [3, 7]
    # results come back per ticket, also when read out of order
    first, second = pool.submit(0, "operator:mul", 6, 7), pool.submit(0, "operator:neg", 5)
    assert pool.result(second) == -5 and pool.result(first) == 42
    assert workers.get() is pool  # kept for the next call


def test_threads_share_the_pool(pool):
    """Calls from several threads at once each get their own results."""
    import concurrent.futures

    def call(i):
        return pool.map("operator:mul", [(i, 2), (i, 3)])

    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        got = list(ex.map(call, range(40)))
    assert got == [[2 * i, 3 * i] for i in range(40)]


def test_a_pool_of_another_size_replaces_the_old_one(pool, monkeypatch):
    monkeypatch.setenv("PHYLOJAX_WORKERS", "3")
    bigger = workers.get()  # closes the two-worker pool (this deadlocked on a plain Lock)
    assert pool.closed and len(bigger) == 3
    assert bigger.map("operator:add", [(1, 1)] * 3) == [2, 2, 2]
    bigger.close()


def test_a_failing_call_raises_and_closes_the_pool(pool):
    with pytest.raises(workers.WorkerError, match="ZeroDivisionError"):
        pool.map("operator:truediv", [(1, 0), (1, 1)])
    assert pool.closed
    fresh = workers.get()
    assert fresh is not pool and fresh.map("operator:add", [(1, 1), (2, 2)]) == [2, 4]


def test_a_stalled_worker_is_killed(pool, monkeypatch):
    monkeypatch.setattr(workers, "STALL_SECONDS", 2.0)
    start = time.monotonic()
    with pytest.raises(workers.WorkerError, match="used no CPU"):
        pool.result(pool.submit(1, "time:sleep", 60))
    assert time.monotonic() - start < 20
    assert pool.closed and all(w.proc.poll() is not None for w in pool.workers)


def test_a_dead_worker_is_reported(pool):
    with pytest.raises(workers.WorkerError, match="died|exited"):
        pool.result(pool.submit(0, "os:_exit", 3))
    assert pool.closed


def test_pool_off(monkeypatch):
    monkeypatch.setenv("PHYLOJAX_WORKERS", "off")
    assert workers.worker_count() == 0 and workers.get() is None
    from phylojax.selection import parallel

    assert parallel.plan(1000) == (0, 0)


def test_plan_shares(monkeypatch):
    from phylojax.selection import parallel

    monkeypatch.delenv("PHYLOJAX_WORKERS", raising=False)
    count = workers.worker_count()
    if count < 2:
        pytest.skip("fewer than two CPUs")
    assert parallel.plan(2 * parallel.MIN_SITES_PER_WORKER - 1) == (0, 0)
    n, share = parallel.plan(161)
    assert n == min(count, 161 // parallel.MIN_SITES_PER_WORKER)
    assert share * n >= 161 and share == parallel._bucket(share, parallel.SHARE_STEP)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"srv": False, "ci": True}, {"branches": "Internal"}],
                         ids=["default", "srv-no-ci", "background"])  # fmt: skip
def test_fel_on_workers_is_the_in_process_result(monkeypatch, options):
    """Every per-site output of FEL on CD2 is the same with the site fits on two workers as in
    this process (or, with background branches, in the one-CPU children of ``isolated``): to the
    last bit on the ``--srv No`` and two-class paths, and to rounding on the fast path, whose
    per-site refinement runs in blocks of 4 sites (``site_kernels.PER_SITE_CHUNK``) that XLA
    evaluates with other roundings in a share than in one process (lnL and LRT within 1e-12
    there, alpha and beta within 1e-8 on their flat optima)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import dataclasses

    from phylojax.io import read_alignment
    from phylojax.selection.fel import fel

    aln = read_alignment(HERE / "CD2.nex")
    tree = None
    if "branches" in options:  # the two-class fits: 48 codons (two shares of 32) are enough
        tree = str(HERE / "CD2.annotated.nwk")
        aln = dataclasses.replace(aln, sequences=tuple(q[: 3 * 48] for q in aln.sequences))
    monkeypatch.setenv("PHYLOJAX_WORKERS", "off")
    here = fel(aln, tree, **options)
    monkeypatch.setenv("PHYLOJAX_WORKERS", "2")
    on_workers = fel(aln, tree, **options)
    assert workers.get() is not None
    exact = bool(options)  # the fast path's per-site blocks of 4 (below) round differently
    for key in ("alpha", "beta", "null_rate", "lrt", "alt_loglik", "null_loglik", "beta_background"):
        if exact:
            np.testing.assert_array_equal(getattr(on_workers, key), getattr(here, key), err_msg=key)
        else:
            tol = 1e-6 if key in ("alpha", "beta") else 1e-10  # flat optima, lnL to rounding
            np.testing.assert_allclose(getattr(on_workers, key), getattr(here, key), rtol=tol,
                                       atol=tol, err_msg=key)  # fmt: skip
    if options.get("ci"):
        np.testing.assert_array_equal(on_workers.dnds_ci, here.dnds_ci)


COUNT_WORKER_COMPILES = r"""
import logging, sys, jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_log_compiles", True)
import numpy as np
seen = []
class H(logging.Handler):
    def emit(self, record):
        m = record.getMessage()
        if m.startswith("Finished XLA compilation of jit("):
            seen.append(m.split("jit(")[1].split(")")[0])
logging.getLogger("jax").addHandler(H())
from phylojax.io import read_alignment
from phylojax.selection import parallel
from phylojax.selection.fel import prepare_partitions, _variable_patterns
from phylojax.selection.site_fits import SiteProblem
parts, _, _ = prepare_partitions(read_alignment(sys.argv[1]))
tips, var, _ = _variable_patterns(parts[0])
share = parallel._bucket(-(-len(var) // 2), parallel.SHARE_STEP)
d = parts[0].data
abstract = jax.ShapeDtypeStruct
spec = dict(syn=abstract((61, 61), np.float64), nonsyn=abstract((61, 61), np.float64),
            frequencies=abstract((61,), np.float64), times=abstract(d.background.shape, np.float64),
            background=np.asarray(d.background), operations=np.asarray(d.codon.operations),
            has_background=False)
parallel._compile_share("fast", spec, share, tips.shape[1], 61, parallel.SHARE_STEP)
rng = np.random.default_rng(0)
sym = rng.random((61, 61)); sym = sym + sym.T
arrays = dict(spec, syn=sym, nonsyn=sym, frequencies=np.full(61, 1 / 61),
              times=np.full(d.background.shape, 0.1))
block = tips[var][:share]
parallel._fit_share("fast", arrays, block, True, False, parallel.SHARE_STEP)
print(seen.count("_fast_driver"))
"""


@pytest.mark.slow
def test_worker_compiles_its_share_program_once():
    """A worker's ahead-of-time compilation has the signature of its later fit (else the fit
    would compile again): run both worker functions in a fresh process and count."""
    env = {**os.environ, "PHYLOJAX_CACHE_DIR": "off"}
    out = subprocess.run([sys.executable, "-c", COUNT_WORKER_COMPILES, str(HERE / "CD2.nex")],
                         env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.split() == ["1"], out.stderr[-2000:]


FORK_SCRIPT = """
import os, sys
os.environ["PHYLOJAX_WORKERS"] = "2"
import jax
from phylojax import workers
assert workers.can_fork()  # JAX imported, its backend not started
pool = workers.get()
kinds = [type(w.proc).__name__ for w in pool.workers]
pids = pool.map("os:getpid", [(), ()])
cpus = pool.map("os:sched_getaffinity", [(0,), (0,)])
# the workers start JAX themselves, on one CPU each
import numpy as np
sums = pool.map("jax.numpy:sum", [(np.array([1.0, 2.0]),), (np.array([3.0, 4.0]),)])
assert [float(s) for s in sums] == [3.0, 7.0]
# the collector: the workers' thresholds are the command line's, and the objects made before the
# fork are in the permanent generation of both processes (phylojax.cli._collect_garbage_rarely)
import gc
from phylojax.cli import GC_THRESHOLDS
assert pool.map("gc:get_threshold", [(), ()]) == [GC_THRESHOLDS] * 2
assert gc.get_freeze_count() > 10000 and min(pool.map("gc:get_freeze_count", [(), ()])) > 10000
# a forked worker that raises is reported with its traceback
try:
    pool.map("operator:truediv", [(1, 0), (1, 1)])
    raise SystemExit("no error")
except workers.WorkerError as e:
    assert "ZeroDivisionError" in str(e)
jax.numpy.zeros(1).block_until_ready()
assert not workers.can_fork()  # this process's backend has started now
print(kinds, len(set(pids)), os.getpid() not in pids, [len(c) for c in cpus])
"""


def test_workers_forked_before_the_backend_starts():
    """A process whose JAX backend has not started yet forks its workers (no second import of
    JAX); they are pinned, start their own backend, and report errors like spawned ones."""
    out = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PHYLOJAX_WORKER_START": ""})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "['_Forked', '_Forked'] 2 True [1, 1]"


def test_worker_start_spawn_is_respected(monkeypatch):
    monkeypatch.setenv("PHYLOJAX_WORKER_START", "spawn")
    assert not workers.can_fork()
