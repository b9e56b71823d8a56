"""Maximum-likelihood fitting of branch lengths and model parameters on a fixed topology.

Two optimisers, both on the gradients of the O(n) pruning VJP (:mod:`phylojax.likelihood`):

* **L-BFGS** (``optax.lbfgs`` with its zoom line search, Nocedal & Wright alg. 3.5/3.6) over every
  free quantity at once, on unconstrained transforms: ``log`` for branch lengths, exchangeabilities,
  κ and the Γ shape α; frequencies as log-ratios to the last state (a softmax with one logit held
  at 0, which removes the softmax's flat direction); ``logit`` for p-inv.
* **Safeguarded Newton–Raphson on branch lengths** (coraxlib's ``corax_opt_optimize_newton``
  idea): every branch gets ``(d lnL/dt, d² lnL/dt²)`` from the sumtable of
  :func:`~phylojax.likelihood.branch_derivatives` (one ``vmap`` over branches; the postorder and
  preorder passes do not depend on the branch and are computed once). A Newton step is taken only
  where the log-likelihood is locally concave and the step stays inside the bracket established by
  the signs of earlier first derivatives; otherwise the branch bisects its bracket (or expands
  geometrically while one side is open). Steps are bounded to a factor of 10 per sweep, and a
  sweep that lowers the total lnL is halved back towards the current point (branches interact,
  so simultaneous 1-D steps need this global check).

``method="alternate"`` (default) alternates Newton sweeps on the branches with L-BFGS on the model
parameters, as IQ-TREE and RAxML do, then polishes everything jointly with L-BFGS;
``method="lbfgs"`` runs joint L-BFGS only. ``benchmarks/bench_fit.py`` measures both.

The tree is fitted unrooted: a rooted input is unrooted first (the two root branches are not
separately identifiable under a reversible model), and zero-length branches that only resolve
multifurcations stay at zero.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .errors import InputError
from .likelihood import Problem, branch_derivatives, log_likelihood, prepare
from .models.nucleotide import ReversibleModel
from .models.rates import RateModel
from .models.spec import DEFAULTS, ModelSpec, build_model, empirical_frequencies
from .tree import Tree

MIN_BRANCH_LENGTH = 1e-8
MAX_BRANCH_LENGTH = 10.0
_ALPHA_BOUNDS = (0.02, 200.0)  # IQ-TREE uses [0.02, 1000]; Γ4 rates do not change beyond ~200
_PINV_INIT = 0.05


# ---------------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class ParameterLayout:
    """Which model parameters are free and how they map to an unconstrained vector (hashable).

    ``names`` are every :class:`~phylojax.models.spec.ModelSpec` parameter the model *structure*
    has (``rates``, ``kappa``, ``kappa_purine``, ``kappa_pyrimidine``, ``omega``, ``frequencies``,
    ``alpha``, ``pinv``), in a fixed order; ``sizes`` their unconstrained sizes. Which of them are
    estimated is a traced mask (:attr:`FitProblem.free_parameters`), so ``GTR+F+G4`` and
    ``GTR{...}+F{...}+G4`` share one compiled likelihood.
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    spec_key: tuple
    codon_code: str | None = None

    @property
    def size(self) -> int:
        return sum(self.sizes)


def _spec_key(spec: ModelSpec) -> tuple:
    """The model structure (what the compiled likelihood depends on), not its fixed values."""
    mode = (
        "equal" if spec.frequency_mode == "equal" else spec.frequency_mode if spec.is_codon else "x"
    )
    return (spec.name, mode, spec.category_count, spec.median, spec.invariant)


def _structural_spec(spec: ModelSpec) -> ModelSpec:
    params = {k: None for k in spec.parameters}
    mode = spec.frequency_mode if spec.frequency_mode == "equal" or spec.is_codon else "estimate"
    return dataclasses.replace(
        spec, parameters=params, frequency_mode=mode, text=str(_spec_key(spec))
    )


def model_parameters(spec: ModelSpec) -> list[str]:
    """Every parameter of the model structure (free or fixed), in the layout's order."""
    names = [n for n in ("rates", "kappa", "kappa_purine", "kappa_pyrimidine", "omega")
             if n in spec.parameters]  # fmt: skip
    if not spec.is_codon and "frequencies" in spec.parameters and spec.frequency_mode != "equal":
        names.append("frequencies")
    if spec.category_count > 1:
        names.append("alpha")
    if spec.invariant:
        names.append("pinv")
    return names


def free_parameters(spec: ModelSpec, *, frequencies: str = "estimate") -> list[str]:
    """Names of the parameters ``fit`` estimates for ``spec``.

    Parameters written without braces are free. ``+F`` without values is estimated by ML when
    ``frequencies == "estimate"`` (IQ-TREE's ``+FO``) and held at the empirical counts when
    ``frequencies == "empirical"`` (IQ-TREE's ``+F``).
    """
    names = []
    for name in ("rates", "kappa", "kappa_purine", "kappa_pyrimidine", "omega", "alpha", "pinv"):
        if name in spec.parameters and spec.parameters[name] is None:
            if name == "alpha" and spec.category_count <= 1:
                continue
            names.append(name)
    if (
        not spec.is_codon
        and frequencies == "estimate"
        and spec.parameters.get("frequencies", 0) is None
        and spec.frequency_mode in ("empirical", "estimate")
    ):
        names.append("frequencies")
    return names


def make_layout(spec: ModelSpec, *, frequencies: str = "estimate", code=None) -> ParameterLayout:
    if frequencies not in ("estimate", "empirical"):
        raise InputError(f"frequencies must be 'estimate' or 'empirical', not {frequencies!r}")
    names = tuple(model_parameters(spec))
    size_of = {"rates": 5, "frequencies": 3}
    sizes = tuple(size_of.get(n, 1) for n in names)
    return ParameterLayout(names, sizes, _spec_key(spec), None if code is None else str(code))


def _to_unconstrained(name: str, value) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if name == "frequencies":
        v = np.maximum(v, 1e-6)
        return np.log(v[:-1] / v[-1])
    if name == "pinv":
        return np.log(v / (1.0 - v))
    if name == "alpha":
        return np.log(np.clip(v, *_ALPHA_BOUNDS))
    return np.log(np.maximum(v, 1e-6))


def _from_unconstrained(name: str, x):
    if name == "frequencies":
        logits = jnp.concatenate([x, jnp.zeros(1, x.dtype)])
        return jax.nn.softmax(logits)
    if name == "pinv":
        return jax.nn.sigmoid(x[0])
    if name == "alpha":
        return jnp.exp(x[0])
    if name == "rates":
        return jnp.exp(x)
    return jnp.exp(x[0])


def unpack_parameters(layout: ParameterLayout, x) -> dict:
    """Unconstrained vector ``[layout.size]`` -> ``{name: value}`` (differentiable)."""
    out, start = {}, 0
    for name, size in zip(layout.names, layout.sizes):
        out[name] = _from_unconstrained(name, x[start : start + size])
        start += size
    return out


def _initial_vector(
    layout: ParameterLayout, spec: ModelSpec, data_frequencies, free: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Unconstrained starting point ``[layout.size]`` and the mask of free entries."""
    parts, mask = [], []
    for name, size in zip(layout.names, layout.sizes):
        fixed = spec.parameters.get(name)
        if name == "frequencies":
            value = data_frequencies if fixed is None else fixed
        elif fixed is not None:
            value = fixed
        elif name == "pinv":
            value = _PINV_INIT
        elif name == "alpha":
            value = 0.5 if spec.invariant else 1.0
        else:
            value = DEFAULTS[name]
        parts.append(_to_unconstrained(name, value))
        mask.append(np.full(size, name in free))
    if not parts:
        return np.zeros(0), np.zeros(0, bool)
    return np.concatenate(parts), np.concatenate(mask)


# ---------------------------------------------------------------------------------- the objective
class FitProblem(eqx.Module):
    """Arrays a fit needs (a pytree), plus the static parameter layout.

    Attributes:
        data: the :class:`~phylojax.likelihood.PhyloData`.
        free_branches: ``bool[node]`` branches that are estimated (not the root, not the zero-length
            branches that resolve multifurcations).
        free_parameters: ``bool[layout.size]`` entries of the model vector that are estimated.
        data_frequencies: ``[state]`` empirical frequencies (used where frequencies are not free);
            for codon models the MG94 position rate frequencies ``[3, 4]``.
        model_builder: ``(layout, values, data_frequencies) -> (model, rates)`` (static).
    """

    data: object
    free_branches: jax.Array
    free_parameters: jax.Array
    data_frequencies: jax.Array
    layout: ParameterLayout = eqx.field(static=True)
    model_builder: Callable = eqx.field(static=True)

    def model(self, x) -> tuple[ReversibleModel, RateModel]:
        return self.model_builder(
            self.layout, unpack_parameters(self.layout, x), self.data_frequencies
        )

    def log_likelihood(self, branch_lengths, x):
        model, rates = self.model(x)
        return log_likelihood(self.data, branch_lengths, model, rates)


def _nucleotide_builder(spec: ModelSpec):
    def build(layout, values, data_frequencies):
        return build_model(spec, values, data_frequencies)

    return build


_BUILDERS: dict = {}


def _builder_for(spec: ModelSpec, problem: Problem, code) -> Callable:
    """A hashable-by-identity model builder, cached per spec so jit caches are shared."""
    key = (_spec_key(spec), str(code)) if spec.is_codon else _spec_key(spec)
    if key in _BUILDERS:
        return _BUILDERS[key]
    if not spec.is_codon:
        builder = _nucleotide_builder(_structural_spec(spec))
    else:
        builder = _codon_builder(_structural_spec(spec))
    _BUILDERS[key] = builder
    return builder


def _codon_builder(spec: ModelSpec):
    """MG94 builder; ``data_frequencies`` holds the position rate frequencies ``g [3, 4]`` (fixed
    from the data by the F1X4/F3X4/CF3X4 estimator), so one builder serves every alignment."""
    from .models import codon
    from .models.rates import rate_model

    def build(layout, values, data_frequencies):
        def get(name):
            return values[name] if name in values else jnp.asarray(DEFAULTS[name], dtype=float)

        omega = get("omega")
        if spec.name == "MGK":
            k = get("kappa")
            one = jnp.ones((), float)
            theta = jnp.stack([one, k, one, one, k, one])
        else:
            theta = jnp.concatenate([jnp.atleast_1d(get("rates")), jnp.ones(1)])
        model = codon.mg94(theta, omega, data_frequencies, layout.codon_code)
        alpha = get("alpha") if spec.category_count > 1 else None
        pinv = get("pinv") if spec.invariant else 0.0
        return model, rate_model(alpha, spec.category_count, pinv, median=spec.median)

    return build


def _codon_rate_frequencies(spec: ModelSpec, problem: Problem, code) -> np.ndarray:
    from .alphabets import nucleotide_partials
    from .models import codon

    estimator = spec.frequency_mode if spec.frequency_mode.upper() in codon.ESTIMATORS else "F3X4"
    counts = codon.position_counts(nucleotide_partials(problem.alignment))
    return np.asarray(codon.codon_frequencies(counts, estimator, code)[1])


# ---------------------------------------------------------------------------------- kernels
# Only two likelihood functions are compiled per (layout, shapes): the joint value-and-gradient and
# the all-branch Newton derivatives. The optimiser loops run in Python around them: a jitted
# ``while_loop`` holding optax's zoom line search inlines several copies of the likelihood and its
# VJP and measured 54 s to compile against 0.3 s of optimisation on CD2 (2 shared CPU cores).
def _lengths_from(problem: FitProblem, log_lengths, fixed_lengths):
    # No clipping here (a clip zeroes the gradient and strands the optimiser outside the bounds):
    # the L-BFGS driver projects its iterates onto the box instead.
    return jnp.where(problem.free_branches, jnp.exp(log_lengths), fixed_lengths)


@eqx.filter_jit
def _value_and_grad(problem: FitProblem, y, fixed_lengths):
    """``lnL`` and its gradient w.r.t. ``y = [log branch lengths (node), unconstrained model]``."""
    node_count = fixed_lengths.shape[0]

    def f(y):
        lengths = _lengths_from(problem, y[:node_count], fixed_lengths)
        return problem.log_likelihood(lengths, y[node_count:])

    return jax.value_and_grad(f)(y)


@eqx.filter_jit
def _all_branch_derivatives(problem: FitProblem, lengths, x):
    """``(lnL, d lnL/dt [node-1], d² lnL/dt² [node-1])`` for every branch in one pass."""
    model, rates = problem.model(x)
    nodes = jnp.arange(lengths.shape[0] - 1)
    lnl, d1, d2 = jax.vmap(branch_derivatives, in_axes=(None, None, None, None, 0))(
        problem.data, lengths, model, rates, nodes
    )
    return lnl[0], d1, d2


@functools.cache
def _lbfgs_transform(memory_size: int):
    """Jitted ``optax.scale_by_lbfgs`` (eagerly, its internal scan recompiles on every call)."""
    transform = optax.scale_by_lbfgs(memory_size=memory_size)
    return jax.jit(transform.init), jax.jit(transform.update)


@eqx.filter_jit
def _model_of(problem: FitProblem, x):
    return problem.model(x)


def lbfgs(
    problem: FitProblem,
    lengths: np.ndarray,
    x: np.ndarray,
    *,
    branches: bool = True,
    max_steps: int = 200,
    tol: float = 1e-6,
    memory_size: int = 10,
    patience: int = 5,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """L-BFGS (``optax.scale_by_lbfgs`` directions) with a backtracking Armijo line search.

    Optimises ``y = [log lengths, x]`` (``branches=False``: ``x`` only; the branch part of the
    gradient is masked). Stops after ``patience`` consecutive steps gaining less than ``tol`` lnL units. Returns
    ``(lengths, x, lnL, steps)``.
    """
    node_count = len(lengths)
    fixed = jnp.asarray(lengths)
    mask = np.ones(node_count + len(x))
    mask[:node_count] = np.asarray(problem.free_branches, dtype=float) if branches else 0.0
    mask[node_count:] = np.asarray(problem.free_parameters, dtype=float)
    y = np.concatenate([np.log(np.maximum(lengths, MIN_BRANCH_LENGTH)), np.asarray(x)])
    scale = float(np.sum(problem.data.pattern_weights))  # objective -lnL/scale is O(1)
    lower, upper = np.full(len(y), -np.inf), np.full(len(y), np.inf)
    lower[:node_count], upper[:node_count] = np.log(MIN_BRANCH_LENGTH), np.log(MAX_BRANCH_LENGTH)
    start = node_count
    for name, size in zip(problem.layout.names, problem.layout.sizes):
        if name == "alpha":
            lower[start], upper[start] = np.log(_ALPHA_BOUNDS)
        elif name != "frequencies":
            lower[start : start + size], upper[start : start + size] = -25.0, 25.0
        start += size
    y = np.clip(y, lower, upper)

    def evaluate(y):
        value, grad = _value_and_grad(problem, jnp.asarray(y), fixed)
        return -float(value) / scale, -np.asarray(grad) * mask / scale

    init, update = _lbfgs_transform(memory_size)
    state = init(jnp.asarray(y))
    f, g = evaluate(y)
    steps, stalled = 0, 0
    while steps < max_steps and mask.any():
        direction, state = update(jnp.asarray(g), state, jnp.asarray(y))
        direction = -np.asarray(direction)
        slope = float(direction @ g)
        if not slope < 0:  # not a descent direction: restart from steepest descent
            state = init(jnp.asarray(y))
            direction, state = update(jnp.asarray(g), state, jnp.asarray(y))
            direction = -np.asarray(direction)
            slope = float(direction @ g)
            if not slope < 0:
                break
        # Bound the step in log space (a factor of e^3 per coordinate) before the line search.
        step = min(1.0, 3.0 / max(np.max(np.abs(direction)), 1e-300))
        accepted = False
        for _ in range(30):
            y_new = np.clip(y + step * direction, lower, upper)  # projected step
            f_new, g_new = evaluate(y_new)
            if np.isfinite(f_new) and f_new <= f + 1e-4 * step * slope:
                accepted = True
                break
            # Quadratic interpolation of the step, kept within [0.1, 0.5] of the last one.
            denom = 2.0 * (f_new - f - step * slope) if np.isfinite(f_new) else np.inf
            guess = -slope * step**2 / denom if denom > 0 else 0.5 * step
            step = float(np.clip(guess, 0.1 * step, 0.5 * step))
        if not accepted:
            break
        gain = (f - f_new) * scale
        s_vec, y_vec = y_new - y, g_new - g
        if s_vec @ y_vec <= 1e-12 * np.linalg.norm(s_vec) * np.linalg.norm(y_vec):
            state = init(jnp.asarray(y_new))  # curvature pair unusable: reset memory
        y, f, g = y_new, f_new, g_new
        steps += 1
        # L-BFGS often makes a small step before a large one: stop after several small gains.
        stalled = stalled + 1 if gain < tol else 0
        if stalled >= patience:
            break
    new_lengths = np.asarray(_lengths_from(problem, jnp.asarray(y[:node_count]), fixed))
    return new_lengths, y[node_count:], -f * scale, steps


def newton_sweeps(
    problem: FitProblem,
    lengths: np.ndarray,
    x: np.ndarray,
    *,
    max_sweeps: int = 8,
    tol: float = 1e-6,
) -> tuple[np.ndarray, float, int]:
    """Safeguarded simultaneous Newton–Raphson sweeps over the free branches.

    Per branch: the bracket ``[lo, hi]`` of the optimum shrinks with the sign of ``d lnL/dt``; a
    Newton step ``t - d1/d2`` is taken where ``d2 < 0`` and it lands inside the bracket, else the
    bracket is bisected (geometric mean) or, while open, expanded by 4×; every step is bounded to
    a factor of 10. The whole sweep is then halved back until lnL does not decrease.
    Returns ``(lengths, lnL, sweeps)``.
    """
    xj = jnp.asarray(x)
    free = np.asarray(problem.free_branches)[:-1]
    bl = np.asarray(lengths, dtype=np.float64).copy()
    lnl, d1, d2 = (np.asarray(v) for v in _all_branch_derivatives(problem, jnp.asarray(bl), xj))
    lnl = float(lnl)
    lo = np.full(len(bl) - 1, MIN_BRANCH_LENGTH)
    hi = np.full(len(bl) - 1, MAX_BRANCH_LENGTH)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        t = bl[:-1]
        lo = np.where(d1 > 0, np.maximum(lo, t), lo)
        hi = np.where(d1 < 0, np.minimum(hi, t), hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = t - d1 / np.where(d2 < 0, d2, -1.0)
            inside = (d2 < 0) & (newton > lo) & (newton < hi)
            closed = hi < MAX_BRANCH_LENGTH
            up = np.where(closed, np.sqrt(np.maximum(lo, MIN_BRANCH_LENGTH) * hi), 4.0 * t)
            down = np.where(lo > MIN_BRANCH_LENGTH, np.sqrt(lo * t), t / 4.0)
        proposal = np.where(inside, newton, np.where(d1 > 0, up, down))
        proposal = np.clip(proposal, t / 10.0, 10.0 * t + 0.01)
        proposal = np.clip(proposal, MIN_BRANCH_LENGTH, MAX_BRANCH_LENGTH)
        proposal = np.where(free & (d1 != 0), proposal, t)
        for k in range(8):
            trial = bl.copy()
            trial[:-1] = t + 0.5**k * (proposal - t)
            out = _all_branch_derivatives(problem, jnp.asarray(trial), xj)
            new_lnl = float(out[0])
            if new_lnl >= lnl:
                break
        else:
            break
        gain = new_lnl - lnl
        bl, lnl = trial, new_lnl
        d1, d2 = np.asarray(out[1]), np.asarray(out[2])
        if gain < tol:
            break
    return bl, lnl, sweeps


# ---------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """Result of :func:`fit`.

    Attributes:
        log_likelihood: the optimised lnL.
        parameters: estimated model parameters by name (floats; tuples for ``rates`` (AC, AG, AT,
            CG, CT; GT = 1) and ``frequencies`` (A, C, G, T)).
        tree: the unrooted input tree with fitted branch lengths (multifurcations kept).
        branch_lengths: ``[node]`` fitted lengths of the binary tree the kernels use.
        iterations: optimiser iterations (L-BFGS steps + Newton sweeps).
        seconds: wall time of the optimisation (including compilation).
        model, rates: the fitted :class:`ReversibleModel` and :class:`RateModel`.
        problem: the prepared :class:`~phylojax.likelihood.Problem` (unrooted tree).
    """

    log_likelihood: float
    parameters: dict
    tree: Tree
    branch_lengths: np.ndarray
    iterations: int
    seconds: float
    model: ReversibleModel
    rates: RateModel
    problem: Problem

    @property
    def newick(self) -> str:
        return self.tree.to_newick()


def _output_tree(problem: Problem, base: Tree, binary_lengths: np.ndarray) -> Tree:
    """The (unrooted, possibly multifurcating) input tree carrying the fitted lengths.

    ``base`` is the tree ``problem`` was prepared from (leaves in alignment order), whose nodes
    ``problem.topology.source_nodes`` refer to.
    """
    topo = problem.topology
    source = topo.source_nodes
    lengths = np.zeros(base.node_count)
    for v in range(topo.node_count - 1):
        if source[v] >= 0:
            lengths[source[v]] = binary_lengths[v]
    return base.with_branch_lengths(lengths)


def _parameter_values(layout: ParameterLayout, x, free: list[str]) -> dict:
    out = {}
    for name, value in unpack_parameters(layout, jnp.asarray(x)).items():
        if name not in free:
            continue
        arr = np.asarray(value, dtype=np.float64)
        out[name] = tuple(float(v) for v in arr.ravel()) if arr.ndim else float(arr)
    return out


# ---------------------------------------------------------------------------------- public API
def prepare_fit(
    alignment,
    tree: Tree,
    spec: ModelSpec,
    *,
    code: int | str = 1,
    frequencies: str = "estimate",
) -> tuple[FitProblem, np.ndarray, np.ndarray, Problem, Tree]:
    """Unroot ``tree``, prepare the likelihood problem and the initial unconstrained vectors.

    Returns ``(fit_problem, initial_lengths[node], initial_x[layout.size], problem, unrooted)``.
    """
    unrooted = tree.unroot().reorder_leaves(alignment.names)
    problem = prepare(alignment, unrooted, codon=spec.is_codon, code=code)
    topo = problem.topology
    free = (topo.source_nodes >= 0) & (np.arange(topo.node_count) < topo.node_count - 1)
    lengths = np.where(free, np.clip(problem.branch_lengths, 1e-3, 1.0), 0.0)
    lengths = np.where(np.isfinite(topo.tree.branch_lengths) & free,
                       np.clip(problem.branch_lengths, 1e-4, MAX_BRANCH_LENGTH), lengths)  # fmt: skip
    if spec.is_codon:
        data_freqs = _codon_rate_frequencies(spec, problem, code)
    else:
        data_freqs = empirical_frequencies(problem.patterns.data, problem.patterns.weights)
    layout = make_layout(spec, frequencies=frequencies, code=code if spec.is_codon else None)
    builder = _builder_for(spec, problem, code)
    x0, free_x = _initial_vector(
        layout, spec, data_freqs, free_parameters(spec, frequencies=frequencies)
    )
    fit_problem = FitProblem(
        problem.data,
        jnp.asarray(free),
        jnp.asarray(free_x),
        jnp.asarray(data_freqs),
        layout,
        builder,
    )
    return fit_problem, lengths, x0, problem, unrooted


def fit(
    alignment,
    tree: Tree,
    spec: ModelSpec,
    *,
    code: int | str = 1,
    frequencies: str = "estimate",
    method: str = "alternate",
    tol: float = 1e-6,
    max_rounds: int = 50,
    callback: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Maximum-likelihood branch lengths and free model parameters on the fixed topology of ``tree``.

    Args:
        alignment: an :class:`~phylojax.io.Alignment`.
        tree: the topology (branch lengths, where given, are the starting point; rooted trees are
            unrooted first).
        spec: parsed model; parameters written without braces are estimated.
        frequencies: ``"estimate"`` (ML, IQ-TREE's ``+FO``) or ``"empirical"`` (IQ-TREE's ``+F``)
            for a ``+F`` without values.
        method: ``"alternate"`` (Newton on branches ⇄ L-BFGS on the model, then joint L-BFGS) or
            ``"lbfgs"`` (joint L-BFGS only).
        tol: stop when a round gains less than ``tol`` log-likelihood units.
        callback: called as ``callback(iterations, lnL)`` after every round (progress display).

    Needs float64 (``jax.config.update("jax_enable_x64", True)``).
    """
    if not jax.config.jax_enable_x64:
        raise InputError("fit needs float64: jax.config.update('jax_enable_x64', True)")
    if method not in ("alternate", "lbfgs"):
        raise InputError(f"method must be 'alternate' or 'lbfgs', not {method!r}")
    start = time.perf_counter()
    fp, lengths0, x0, problem, unrooted = prepare_fit(
        alignment, tree, spec, code=code, frequencies=frequencies
    )
    lengths, x = np.asarray(lengths0), np.asarray(x0)
    iterations = 0
    lnl = -np.inf
    if method == "alternate":
        for _ in range(max_rounds):
            lengths, new_lnl, n = newton_sweeps(fp, lengths, x, tol=tol)
            iterations += n
            if np.any(np.asarray(fp.free_parameters)):
                lengths, x, new_lnl, n = lbfgs(
                    fp, lengths, x, branches=False, max_steps=30, tol=tol
                )
                iterations += n
            if callback is not None:
                callback(iterations, new_lnl)
            gained, lnl = new_lnl - lnl, new_lnl
            if gained < max(tol, 1e-3):
                break
    # Joint L-BFGS: the whole fit for method="lbfgs", a polish of the coupled directions otherwise.
    for _ in range(max_rounds):
        lengths, x, new_lnl, n = lbfgs(fp, lengths, x, branches=True, max_steps=500, tol=tol)
        iterations += n
        if callback is not None:
            callback(iterations, new_lnl)
        gained, lnl = new_lnl - lnl, max(lnl, new_lnl)
        if gained < tol or n < 500:
            break
    lengths, x = jnp.asarray(lengths), jnp.asarray(x)
    model, rates = _model_of(fp, x)
    y = jnp.concatenate([jnp.log(jnp.maximum(lengths, MIN_BRANCH_LENGTH)), x])
    final = float(_value_and_grad(fp, y, lengths)[0])
    bl = np.asarray(lengths)
    return FitResult(
        log_likelihood=final,
        parameters=_parameter_values(fp.layout, x, free_parameters(spec, frequencies=frequencies)),
        tree=_output_tree(problem, unrooted, bl),
        branch_lengths=bl,
        iterations=iterations,
        seconds=time.perf_counter() - start,
        model=model,
        rates=rates,
        problem=problem,
    )
