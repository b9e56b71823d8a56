"""FEL's global fits (DESIGN.md §3 steps 2–4): nucleotide GTR, proportional MG94×REV, full MG94×REV.

Every partition has its own tree and branch parameters; nucleotide rates, frequencies and ω are
shared (HyPhy's FEL). Parameters are bounded to ``[0, 10000]`` and optimised directly by L-BFGS-B (scipy) on exact
gradients (the likelihood engine's O(n) custom-VJP reverse pass); each objective is one module-level
jitted ``value_and_grad``, compiled once per data shape.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from ..host import to_device
from ..likelihood.api import PhyloData, log_likelihood
from ..models.codon import expected_rate_np, mg94_parts, mg94_parts_jit
from ..models.nucleotide import ReversibleModel, gtr
from ..models.rates import rate_model
from ..workers import WorkerError

UPPER = 10000.0  # HyPhy's bound on every parameter
# Branch lengths, rates and omega are optimised in [T_MIN, UPPER] and snapped to 0 afterwards when
# that does not lower lnL; T_MIN changes lnL by < 1e-7. At exactly 0 lnL can be -inf (a branch
# between different tips; omega = 0 with any non-synonymous change; a rate whose change the data
# need), which derails the line search: L-BFGS-B's projected steps land on the bound again and
# again (p51's full fit from omega = 1 stopped 69 lnL units short after 203 evaluations,
# tests/test_global_fits.py). Just above 0, lnL is finite and its gradient points back.
T_MIN = 1e-9


class _Converged(Exception):
    """Raised from the objective to stop L-BFGS-B once it has stalled (see :func:`maximise`)."""


# Stop rule of the global fits: cut once the best lnL has gained < 1e-4 over 5 evaluations.
# Against 1e-6 over 10 (measured 2026-12-02, all HyPhy sets): global MG94 lnL within 7e-5
# (HIV_RT; < 5e-6 elsewhere), site LRTs within 1.9e-3 (HIV_RT; <= 1.3e-4 elsewhere), no class
# changes; HIV_RT's model fitting 91 -> 57 s (its full fit is within 1e-4 of the end at
# evaluation 47 of 83, within 1e-5 at 74).
FIT_STALL = {"stall_tol": 1e-4, "stall_window": 5}
# The proportional fit (2-3 parameters) only starts the full fit and is not reported: cut once
# the best lnL has gained < 1 over 2 evaluations. Against 1e-4 over 2 (2026-12-03, fit_global on
# the eight HyPhy sets, throw-away script): MG94 evaluations of the proportional and full fits
# together CD2 25 -> 20, p51 26 -> 23, rbp3 35 -> 32, partitioned 47 -> 43, yokoyama_rh1 34 ->
# 32, Bacterial_PTS 36 -> 34, HIV_RT 63 -> 61, HepatitisD 27 -> 26; the full fits' lnL within
# 1e-6 of before. (Cutting after one evaluation without gain stops at the start: L-BFGS-B's
# first trial step rarely gains.)
PROPORTIONAL_STALL = {"stall_tol": 1.0, "stall_window": 2}


def maximise(value_and_grad, x0, lower, upper, max_steps: int = 3000, max_restarts: int = 50,
             stall_tol: float = 1e-6, stall_window: int = 10, x_scale=None, f0=None, g0=None):  # fmt: skip
    """Maximise with L-BFGS-B (scipy) in the raw bounded parameters; ``value_and_grad(x)`` is a
    jitted function returning ``(f, df/dx)`` as JAX arrays. Returns ``(x, f, evaluations)``:
    ``evaluations`` counts the calls of ``value_and_grad`` made here.

    ``x_scale``: optional ``[param]`` diagonal preconditioner; L-BFGS-B then works in
    ``y = x / x_scale`` (bounds scaled alike). L-BFGS-B's initial inverse Hessian is the identity,
    so it converges faster when the curvature is about equal in every coordinate; for branch
    lengths the curvature of lnL grows like ``1/t``, and ``x_scale = sqrt(t0)`` evens it out
    (see :func:`sqrt_scale`).

    Bounds are handled by L-BFGS-B's active set, so a branch that wants length 0 sits exactly at
    0 (a log parametrisation crawls there because its gradient vanishes).

    Stopping: L-BFGS-B's own tests are tight (``ftol`` 1e-13, restarted until a restart gains
    < 1e-7), but the run is cut once the best lnL has gained less than ``stall_tol`` over the
    last ``stall_window`` evaluations. On the HyPhy data sets the last 1e-5 lnL units took a
    third of the evaluations (yokoyama_rh1: 88 of 127 to reach 1e-5 of the final value); the
    tolerance HyPhy's own fit meets is ~1e-3. :func:`fit_global` passes the looser
    :data:`FIT_STALL` (1e-4 over 5 evaluations).

    L-BFGS-B keeps 50 correction pairs (scipy's default is 10): on HIV_RT's 957 parameters the
    full MG94 fit took 177 evaluations with 20 pairs and 108 with 50 (rbp3 65 -> 45), to the same
    optimum; the extra cost per iteration is O(50 n), nothing next to one evaluation.

    ``f0``, ``g0``: lnL and its gradient at ``x0`` when the caller has them. The start is
    evaluated once, whether here or by the caller, and L-BFGS-B's own first call (at the start)
    reuses that evaluation: one fewer per fit than when scipy evaluated the start again (on
    HIV_RT an MG94 evaluation is ~0.5 s).

    Runs with one BLAS thread: scipy's L-BFGS-B calls OpenBLAS between evaluations, and
    OpenBLAS's worker threads then spin on the cores XLA is using (measured: 92 ms vs 57 ms per
    MG94 evaluation on rbp3, 2 cores).
    """
    if x_scale is not None:
        d = np.asarray(x_scale, float)

        def scaled(y):
            f, g = value_and_grad(to_device(np.asarray(y) * d))
            return f, np.asarray(g) * d

        y, f, n = maximise(scaled, np.asarray(x0, float) / d, np.asarray(lower, float) / d,
                           np.asarray(upper, float) / d, max_steps, max_restarts, stall_tol,
                           stall_window, f0=f0, g0=None if g0 is None else np.asarray(g0) * d)  # fmt: skip
        return np.clip(y * d, lower, upper), f, n
    count = [0]
    bounds = list(zip(np.asarray(lower, float), np.asarray(upper, float)))
    x = np.clip(np.asarray(x0, float), lower, upper)
    if f0 is None or g0 is None or not np.array_equal(x, np.asarray(x0, float)):
        f0, g0 = value_and_grad(to_device(x))
        count[0] += 1
    start = {"x": x.copy(), "f": float(f0), "g": np.asarray(g0, dtype=np.float64)}
    f0 = start["f"]
    # L-BFGS-B's first step with bounds is the raw gradient: scale the objective by 1/|lnL| so
    # that step moves parameters by O(0.1), not O(100) (which overshoots to lnL = -inf).
    scale = 1.0 / max(abs(f0), 1.0) if np.isfinite(f0) else 1.0
    history = [f0]  # best lnL after each evaluation
    best = {"x": x, "f": f0}

    def neg(x):
        if start and np.array_equal(x, start["x"]):  # L-BFGS-B's first call: the start
            f, g = start["f"], start["g"]
        else:
            count[0] += 1
            f, g = value_and_grad(to_device(x))
            f, g = float(f), np.asarray(g, dtype=np.float64)
        start.clear()
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            return 1e30, np.zeros_like(g)
        if f > best["f"]:
            best["x"], best["f"] = x.copy(), f
        history.append(best["f"])
        if len(history) > stall_window and history[-1] - history[-1 - stall_window] < stall_tol:
            raise _Converged
        return -f * scale, -g * scale

    with threadpool_limits(limits=1, user_api="blas"):
        try:
            x, f = _restarted_lbfgsb(neg, x, f0, scale, bounds, lower, upper, max_steps,
                                     max_restarts)  # fmt: skip
        except _Converged:
            x, f = best["x"], best["f"]
    return x, f, count[0]


def sqrt_scale(x0, floor: float = 1e-4) -> np.ndarray:
    """``sqrt(max(|x0|, floor))``: the diagonal preconditioner for fits of rates and branch
    lengths (:func:`maximise`). Measured on the HyPhy sets with 20 L-BFGS-B correction pairs
    (evaluations to the same optimum, 1e-6): full MG94 fit rbp3 121 -> 64, yokoyama_rh1 105 -> 64, HepatitisD 59 -> 21, CD2 64 -> 17;
    GTR fit 133-187 -> 31-79. Scaling by ``x0`` itself helped less and on rbp3 not at all."""
    return np.sqrt(np.maximum(np.abs(np.asarray(x0, float)), floor))


def block_scale(value_and_grad, x0, blocks, upper, step: float = 1e-4):
    """:func:`sqrt_scale` with one factor per block of parameters fitted to the curvature of lnL.

    Within a block (the branch lengths, the nucleotide rates, omega) ``sqrt(x0)`` gets the
    relative curvature right (the ``1 / sqrt(-d2 lnL / dx_i^2)`` of a central finite-difference
    Hessian at the start is within ~10 % of ``0.09 sqrt(x0_i)`` for every branch of rbp3 and
    HepatitisD; throw-away script), but not the blocks' scales against each other: the
    nucleotide rates and omega, on which every site and branch depends, are 3-10x more curved
    than ``sqrt(x0)`` says (the same Hessian). One finite-difference probe per block (all of
    its parameters moved by ``step`` relative at once) gives ``-(g(x0 + d) - g(x0))_i / d_i``
    for each parameter, and the block's factor is the median of ``1 / sqrt`` of those against
    ``sqrt(x0_i)``. Full MG94 fit evaluations with this scaling, its 4 included, against
    :func:`sqrt_scale`: rbp3 27 vs 45, yokoyama_rh1 29 vs 49, HIV_RT 76 vs 123, HepatitisD 20
    vs 22, p51 18 vs 23, Bacterial_PTS 33 vs 36, partitioned 43 vs 48, CD2 24 vs 18; the same
    optimum to 1e-9 (benchmarks/global_fit_scaling.py, docs/fel.md; counted before e90741f,
    when scipy evaluated the start a second time: the script now gives HepatitisD 21 vs 21).

    Returns ``(x_scale, f0, g0, evaluations)``: lnL and its gradient at ``x0`` (for
    :func:`maximise`). A block whose probe gives no negative curvature keeps ``sqrt(x0)``.
    """
    x0 = np.asarray(x0, float)
    base = sqrt_scale(x0)
    f0, g0 = value_and_grad(to_device(x0))
    f0, g0 = float(f0), np.asarray(g0, float)
    scale, evaluations = base.copy(), 1
    if not (np.isfinite(f0) and np.all(np.isfinite(g0))):
        return base, f0, g0, evaluations
    upper = np.asarray(upper, float)
    for mask in blocks:
        d = np.where(mask, step * np.maximum(np.abs(x0), 1e-3), 0.0)
        d = np.where(x0 + d > upper, -d, d)
        g1 = np.asarray(value_and_grad(to_device(x0 + d))[1], float)
        evaluations += 1
        with np.errstate(divide="ignore", invalid="ignore"):
            curvature = (g1 - g0) / np.where(d != 0, d, 1.0)
        ok = mask & (d != 0) & (np.abs(x0) > 10 * T_MIN) & np.isfinite(curvature) & (curvature < 0)
        if ok.any():
            scale[mask] = base[mask] * np.median(1.0 / np.sqrt(-curvature[ok]) / base[ok])
    return scale, f0, g0, evaluations


def _restarted_lbfgsb(neg, x, f0, scale, bounds, lower, upper, max_steps, max_restarts):
    """L-BFGS-B restarted until a restart gains < 1e-7 (see :func:`maximise`)."""
    from scipy.optimize import minimize

    best_x, best_f = x, f0
    lo, hi = np.asarray(lower, float), np.asarray(upper, float)
    for _ in range(max_restarts):  # L-BFGS-B stops early on its relative-reduction test: restart
        res = minimize(neg, x, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": max_steps, "maxcor": 50, "ftol": 1e-13,
                                "gtol": 1e-7 * scale})  # fmt: skip
        f = -res.fun / scale
        if not f > best_f:
            break
        gain = f - best_f
        best_x, best_f = res.x, f
        x = res.x
        # projected gradient (unscaled): components pushing against an active bound do not count
        g = -np.asarray(res.jac) / scale
        pg = np.where(((x <= lo) & (g < 0)) | ((x >= hi) & (g > 0)), 0.0, g)
        if gain < 1e-7 or np.max(np.abs(pg), initial=0.0) < 1e-3:
            break
    return best_x, best_f


@dataclasses.dataclass(frozen=True)
class PartitionData:
    """One partition: nucleotide and codon pattern data on the same binary tree.

    ``free``: bool[node] branches with a parameter (not the root, not zero-length resolution
    branches). ``background``: bool[node] branches not tested (own ω).
    """

    nucleotide: PhyloData
    codon: PhyloData
    free: np.ndarray
    background: np.ndarray
    initial_lengths: np.ndarray


@dataclasses.dataclass(frozen=True)
class GlobalFit:
    """Result of the global fits.

    Attributes:
        gtr_rates: ``[6]`` AC AG AT CG CT GT (AG = 1); ``nucleotide_frequencies`` ``[4]``.
        gtr_lengths: per partition ``[node]`` GTR branch lengths; ``gtr_loglik``.
        theta: ``[6]`` MG94 nucleotide rates (AG = 1); ``omega``: ``[test, background]``.
        times: per partition ``[node]`` branch parameter t_b; ``codon_frequencies`` ``[sense]``,
        ``position_frequencies`` ``[3, 4]`` CF3x4 ``n``; ``loglik``, ``proportional_loglik``,
        ``proportional_omega``.
    """

    gtr_rates: np.ndarray
    nucleotide_frequencies: np.ndarray
    gtr_lengths: list
    gtr_loglik: float
    theta: np.ndarray
    omega: np.ndarray
    times: list
    codon_frequencies: np.ndarray
    position_frequencies: np.ndarray
    loglik: float
    proportional_loglik: float
    proportional_omega: np.ndarray
    steps: dict

    def mg94_lengths(self, partition: int) -> np.ndarray:
        """Reported MG94 branch lengths ``L_b = t_b sum_i pi_i sum_{j != i} Q_ij / 3``."""
        r_s, r_n, pi = (np.asarray(a) for a in mg94_parts_jit(self.theta, self.position_frequencies, self.code))
        rate_t = expected_rate_np(r_s + self.omega[0] * r_n, pi)
        rate_b = expected_rate_np(r_s + self.omega[1] * r_n, pi)
        return self.times[partition] * np.where(self._background[partition], rate_b, rate_t) / 3.0

    _background: list = dataclasses.field(default_factory=list, repr=False)
    code: int | str = 1


def _theta6(theta5):
    """AC, AT, CG, CT, GT free; AG = 1 (HyPhy's constraint)."""
    t = jnp.asarray(theta5)
    return jnp.stack([t[0], jnp.ones((), t.dtype), t[1], t[2], t[3], t[4]])


def _split(x, sizes):
    out, k = [], 0
    for n in sizes:
        out.append(x[k : k + n])
        k += n
    return out


# Module-level jitted objectives: compiled once per data shape and reused by later calls
# (a warm second analysis compiles nothing). Data enter as arguments, never as closures.
@jax.jit
def _gtr_value_and_grad(x, nucleotide, free, nuc_pi):
    def f(x):
        model = gtr(_theta6(x[:5]), nuc_pi)
        parts = _split(x[5:], [fr.shape[0] for fr in free])
        return sum(log_likelihood(d, jnp.where(fr, t, 0.0), model, rate_model())
                   for d, fr, t in zip(nucleotide, free, parts))  # fmt: skip

    return jax.value_and_grad(f)(x)


def _codon_loglik(theta6, omega, times_list, codon, background, g, code, two_class):
    r_s, r_n, pi = mg94_parts(theta6, g, code)
    test = ReversibleModel(r_s + omega[0] * r_n, pi, normalise=False)
    bg = ReversibleModel(r_s + omega[1] * r_n, pi, normalise=False)
    total = 0.0
    for d, b, times in zip(codon, background, times_list):
        if two_class:  # background branches have their own omega
            total = total + _two_class_loglik(d, b, times, test, bg)
        else:
            total = total + log_likelihood(d, times, test, rate_model())
    return total


@functools.partial(jax.jit, static_argnames=("code", "two_class"))
def _full_value_and_grad(x, free, codon, background, g, code, two_class):
    def f(x):
        k = 7 if two_class else 6
        omega = x[5:7] if two_class else jnp.stack([x[5], x[5]])
        parts = _split(x[k:], [fr.shape[0] for fr in free])
        times = [jnp.where(fr, t, 0.0) for fr, t in zip(free, parts)]
        return _codon_loglik(_theta6(x[:5]), omega, times, codon, background, g, code, two_class)

    return jax.value_and_grad(f)(x)


def _codon_arguments(parts: list[PartitionData], position_frequencies):
    """``(free, codon, background, g, two_class)`` as :func:`_full_value_and_grad` takes them."""
    free = [to_device(part.free) for part in parts]
    codon = [part.codon for part in parts]
    background = [to_device(part.background) for part in parts]
    two_class = bool(any(np.any(part.background & part.free) for part in parts))
    return free, codon, background, to_device(position_frequencies), two_class


def compile_global_later(parts: list[PartitionData], position_frequencies, code=1):
    """Start compiling the MG94 objective of :func:`fit_global` (steps 3 and 4) in the background
    (:mod:`phylojax.aot`), to run while the GTR fit does; returns the job. On large data sets
    the objective goes to the worker processes instead, split by patterns
    (:mod:`.split_global`), and the job is that :class:`.split_global.SplitObjective`."""
    from .. import aot
    from . import split_global

    free, codon, background, g, two_class = _codon_arguments(parts, position_frequencies)
    n = 5 + (2 if two_class else 1) + sum(int(f.shape[0]) for f in free)
    dtype = jax.dtypes.canonicalize_dtype(np.float64)  # float64 only under jax_enable_x64
    # the small codon-model setup first: fit_global calls it between the GTR and MG94 fits, and
    # compiled there it waits behind the large programs (0.6-1.1 s on HepatitisD, 2 cores)
    aot.compile_later(mg94_parts_jit, jax.ShapeDtypeStruct((6,), dtype), g, code)
    if dtype == np.float64:  # the workers run float64
        split = split_global.install(parts, position_frequencies, code)
        if split is not None:
            return split
    x = jax.ShapeDtypeStruct((n,), dtype)
    return aot.compile_later(_full_value_and_grad, x, free, codon, background, g, code, two_class)


def fit_global(parts: list[PartitionData], nucleotide_frequencies, position_frequencies,
               max_steps: int = 3000, code=1, precompiled="start") -> GlobalFit:  # fmt: skip
    """Run DESIGN.md §3 steps 2–4 on all partitions jointly (L-BFGS-B on exact gradients from the
    likelihood engine's O(n) reverse pass).

    ``precompiled``: the job of :func:`compile_global_later` when the caller started it, or
    ``"start"`` (default) to start it here, so the MG94 objective compiles while the GTR fit runs.
    """
    from . import split_global

    if isinstance(precompiled, str):
        precompiled = compile_global_later(parts, position_frequencies, code)
    split = precompiled if isinstance(precompiled, split_global.SplitObjective) else None
    try:
        return _fit_global(parts, nucleotide_frequencies, position_frequencies, max_steps, code,
                           None if split else precompiled, split)  # fmt: skip
    finally:
        if split is not None:  # the workers' copies of the patterns
            split.close()


def _fit_global(parts, nucleotide_frequencies, position_frequencies, max_steps, code, precompiled,
                split) -> GlobalFit:  # fmt: skip
    """:func:`fit_global` once its MG94 objective is being prepared: ``precompiled`` is the
    in-process compilation job or ``split`` the objective on the workers."""
    from .. import aot

    nuc_pi = to_device(nucleotide_frequencies)
    free, codon, background, g, two_class = _codon_arguments(parts, position_frequencies)
    free_np = [np.asarray(part.free) for part in parts]
    nucleotide = [part.nucleotide for part in parts]

    def branch_bounds(upper=UPPER):
        return np.concatenate([np.where(fr, upper, 0.0) for fr in free_np])

    def branch_lower():
        return np.concatenate([np.where(fr, T_MIN, 0.0) for fr in free_np])

    def snap(value_and_grad, x, f):
        """Parameters at the lower bound ``T_MIN`` -> exactly 0 (as HyPhy reports) unless lnL
        drops."""
        at = (x <= T_MIN * 1.0001) & (x > 0)
        if not at.any():
            return x, f
        y = np.where(at, 0.0, x)
        fy = float(value_and_grad(to_device(y))[0])
        return (y, fy) if np.isfinite(fy) and fy >= f - 1e-9 else (x, f)

    # Step 2: nucleotide GTR.
    x0 = np.concatenate([np.ones(5)] + [np.where(fr, np.clip(part.initial_lengths, 1e-3, 1.0), 0.0)
                                        for part, fr in zip(parts, free_np)])  # fmt: skip
    lower = np.concatenate([np.full(5, T_MIN), branch_lower()])
    upper = np.concatenate([np.full(5, UPPER), branch_bounds()])

    def gtr_vg(x):
        return _gtr_value_and_grad(x, nucleotide, free, nuc_pi)

    x, gtr_ll, gtr_steps = maximise(gtr_vg, x0, lower, upper, max_steps, x_scale=sqrt_scale(x0),
                                    **FIT_STALL)  # fmt: skip
    x, gtr_ll = snap(gtr_vg, x, gtr_ll)
    gtr_rates = np.insert(x[:5], 1, 1.0)  # _theta6 in numpy
    gtr_lengths = [np.where(fr, t, 0.0) for fr, t in zip(free_np, _split(x[5:], [len(f) for f in free_np]))]

    def full_vg(x):
        nonlocal split
        if split is not None:
            try:
                return split(x)
            except WorkerError as e:
                warnings.warn(f"global fits in worker processes failed ({e}); fitting in this "
                              "process", RuntimeWarning, stacklevel=2)  # fmt: skip
                split = None
        return _full_value_and_grad(x, free, codon, background, g, code, two_class)

    aot.wait(precompiled)  # the MG94 objective, compiled during the GTR fit (None: split)

    # Step 3: MG94×REV with t_b = s * L_b(GTR), theta fixed at the GTR values. Evaluated through
    # the full objective (chain rule for log s and log omega), so the codon likelihood and its
    # reverse pass are compiled once for steps 3 and 4.
    n_omega = 2 if two_class else 1
    theta5 = gtr_rates[[0, 2, 3, 4, 5]]
    lengths = np.concatenate(gtr_lengths)

    def prop_vg(x):  # logarithms of (scale, omega...): smooth, lnL never -inf inside the bounds
        e = np.exp(np.asarray(x, dtype=np.float64))
        f, grad = full_vg(to_device(np.concatenate([theta5, e[1:], e[0] * lengths])))
        grad = np.asarray(grad)
        d_scale = e[0] * float(lengths @ grad[5 + n_omega :])
        return f, np.concatenate([[d_scale], e[1:] * grad[5 : 5 + n_omega]])

    # start at omega = 1 and the scale that turns GTR lengths (substitutions per nucleotide) into
    # codon branch parameters: 3 L_b substitutions per codon at the unnormalised MG94 rate
    r_s, r_n, pi = (np.asarray(a) for a in mg94_parts_jit(gtr_rates, g, code))
    rate = expected_rate_np(r_s + r_n, pi)
    x0 = np.zeros(1 + n_omega)
    x0[0] = np.log(3.0 / rate) if np.isfinite(rate) and rate > 0 else 0.0
    x, prop_ll, prop_steps = maximise(
        prop_vg, x0, np.full_like(x0, np.log(1e-6)), np.full_like(x0, np.log(UPPER)), max_steps,
        **PROPORTIONAL_STALL)  # 2-3 parameters, only a start
    scale, prop_omega = float(np.exp(x[0])), np.exp(x[1:])

    # Step 4: full refit, started from the proportional fit.
    x0 = np.concatenate([gtr_rates[[0, 2, 3, 4, 5]], prop_omega]
                        + [scale * bl for bl in gtr_lengths])  # fmt: skip
    lower = np.concatenate([np.full(5 + n_omega, T_MIN), branch_lower()])
    x0 = np.maximum(x0, lower)
    upper = np.concatenate([np.full(5 + n_omega, UPPER), branch_bounds()])

    index = np.arange(len(x0))
    blocks = [index < 5, (index >= 5) & (index < 5 + n_omega), index >= 5 + n_omega]
    x_scale, f0, g0, probes = block_scale(full_vg, x0, blocks, upper)
    x, full_ll, full_steps = maximise(full_vg, x0, lower, upper, max_steps, x_scale=x_scale, f0=f0,
                                      g0=g0, **FIT_STALL)  # fmt: skip
    full_steps += probes
    x, full_ll = snap(full_vg, x, full_ll)
    theta = np.insert(x[:5], 1, 1.0)
    omega = x[5 : 5 + n_omega]
    omega = np.asarray(omega if two_class else [omega[0], omega[0]])
    times = [np.where(fr, t, 0.0) for fr, t in zip(free_np, _split(x[5 + n_omega :], [len(f) for f in free_np]))]
    _, _, pi = mg94_parts_jit(theta, g, code)
    return GlobalFit(
        gtr_rates=gtr_rates,
        nucleotide_frequencies=np.asarray(nuc_pi),
        gtr_lengths=gtr_lengths,
        gtr_loglik=gtr_ll,
        theta=theta,
        omega=omega,
        times=times,
        codon_frequencies=np.asarray(pi),
        position_frequencies=np.asarray(g),
        loglik=full_ll,
        proportional_loglik=prop_ll,
        proportional_omega=np.asarray(prop_omega if two_class else [prop_omega[0]] * 2),
        steps={"GTR": gtr_steps, "MG94 proportional": prop_steps, "MG94 full": full_steps},
        _background=[part.background for part in parts],
        code=code,
    )


def _two_class_loglik(codon: PhyloData, background_mask, times, test: ReversibleModel,
                      background: ReversibleModel):
    """lnL with test-branch and background-branch matrices (one eigensystem each)."""
    from ..likelihood.pruning import mixture_log_likelihoods
    from ..models.eigen import transition_probs

    p_t = transition_probs(test.eigensystem(), times)
    p_b = transition_probs(background.eigensystem(), times)
    p = jnp.where(jnp.asarray(background_mask)[:, None, None], p_b, p_t)[:, None]
    root = test.frequencies[None, :]
    site = mixture_log_likelihoods(codon.tip_partials, p, root, codon.operations)
    return codon.pattern_weights @ site
