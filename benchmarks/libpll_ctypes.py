"""Minimal ctypes binding to libpll 0.3.2 (Debian ``libpll-dev``) for likelihood benchmarks.

Only what a full GTR+Gamma evaluation needs: partition creation (AVX2 / AVX / SSE / plain C, with
or without tip-pattern compression), tip states or tip partials, frequencies, exchangeabilities,
mean/median discrete-Gamma category rates, pattern weights, probability matrices, partial updates
with per-node scale buffers (libpll rescales with 2^256 when a site's CLV drops below 2^-256), and
root / edge log-likelihoods. Struct layouts follow ``/usr/include/libpll/pll.h`` exactly.

Tree convention (the one phylojax's :class:`phylojax.likelihood.Topology` uses): a rooted binary
tree with nodes ``0..n-1`` the tips and ``n..2n-2`` the internal nodes, ``operations[i] = [parent,
child1, child2]`` in postorder with ``parent == n + i`` (root last), and ``branch_lengths[node]``
the length of the branch above ``node``. In libpll, tip ``i`` is CLV ``i``, internal node ``v`` is
CLV ``v`` with scale buffer ``v - n``, and the P matrix of the branch above ``v`` is matrix ``v``.

Example::

    from benchmarks.libpll_ctypes import LibpllPartition
    part = LibpllPartition(
        tips=["ACGT...", ...],            # n strings of pattern columns (or float [n, pattern, 4])
        weights=pattern_weights,          # [pattern] ints
        operations=ops,                   # int [n-1, 3]
        branch_lengths=lengths,           # [2n-1]
        rates=(1.5, 4.0, 0.8, 1.2, 5.0, 1.0), freqs=(.3, .2, .25, .25), alpha=0.7, categories=4,
        arch="avx2",                      # "avx2" | "avx" | "sse" | "cpu"
    )
    part.loglik()                         # P matrices + all partials + root lnL
    part.loglik(update_matrices=False)    # partials + root only
    part.edge_loglik()                    # virtual root on the branch below the root's child1
    part.set_branch_lengths(other)        # new lengths (same topology); set_operations for a new tree
    part.close()                          # or use as a context manager

Run ``python benchmarks/libpll_ctypes.py`` for a self-check against phylojax on a small tree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from ctypes import POINTER, c_char_p, c_double, c_int, c_size_t, c_uint, c_ubyte

import numpy as np

PLL_ATTRIB_ARCH_CPU = 0
PLL_ATTRIB_ARCH_SSE = 1 << 0
PLL_ATTRIB_ARCH_AVX = 1 << 1
PLL_ATTRIB_ARCH_AVX2 = 1 << 2
PLL_ATTRIB_PATTERN_TIP = 1 << 4
PLL_GAMMA_RATES_MEAN = 0
PLL_GAMMA_RATES_MEDIAN = 1
PLL_SCALE_BUFFER_NONE = -1

ARCH = {
    "cpu": PLL_ATTRIB_ARCH_CPU,
    "sse": PLL_ATTRIB_ARCH_SSE,
    "avx": PLL_ATTRIB_ARCH_AVX,
    "avx2": PLL_ATTRIB_ARCH_AVX2,
}


class pll_partition_t(ctypes.Structure):
    _fields_ = [
        ("tips", c_uint),
        ("clv_buffers", c_uint),
        ("states", c_uint),
        ("sites", c_uint),
        ("pattern_weight_sum", c_uint),
        ("rate_matrices", c_uint),
        ("prob_matrices", c_uint),
        ("rate_cats", c_uint),
        ("scale_buffers", c_uint),
        ("attributes", c_uint),
        ("alignment", c_size_t),
        ("states_padded", c_uint),
        ("clv", POINTER(POINTER(c_double))),
        ("pmatrix", POINTER(POINTER(c_double))),
        ("rates", POINTER(c_double)),
        ("rate_weights", POINTER(c_double)),
        ("subst_params", POINTER(POINTER(c_double))),
        ("scale_buffer", POINTER(POINTER(c_uint))),
        ("frequencies", POINTER(POINTER(c_double))),
        ("prop_invar", POINTER(c_double)),
        ("invariant", POINTER(c_int)),
        ("pattern_weights", POINTER(c_uint)),
        ("eigen_decomp_valid", POINTER(c_int)),
        ("eigenvecs", POINTER(POINTER(c_double))),
        ("inv_eigenvecs", POINTER(POINTER(c_double))),
        ("eigenvals", POINTER(POINTER(c_double))),
        ("maxstates", c_uint),
        ("tipchars", POINTER(POINTER(c_ubyte))),
        ("charmap", POINTER(c_ubyte)),
        ("ttlookup", POINTER(c_double)),
        ("tipmap", POINTER(c_uint)),
        ("asc_bias_alloc", c_int),
    ]


class pll_operation_t(ctypes.Structure):
    _fields_ = [
        ("parent_clv_index", c_uint),
        ("parent_scaler_index", c_int),
        ("child1_clv_index", c_uint),
        ("child1_matrix_index", c_uint),
        ("child1_scaler_index", c_int),
        ("child2_clv_index", c_uint),
        ("child2_matrix_index", c_uint),
        ("child2_scaler_index", c_int),
    ]


def _load():
    name = ctypes.util.find_library("pll") or "libpll.so.0"
    lib = ctypes.CDLL(name)
    P = POINTER(pll_partition_t)
    u, d = POINTER(c_uint), POINTER(c_double)
    sig = {
        "pll_partition_create": (P, [c_uint] * 9),
        "pll_partition_destroy": (None, [P]),
        "pll_set_tip_states": (c_int, [P, c_uint, u, c_char_p]),
        "pll_set_tip_clv": (c_int, [P, c_uint, d, c_int]),
        "pll_set_pattern_weights": (None, [P, u]),
        "pll_set_subst_params": (None, [P, c_uint, d]),
        "pll_set_frequencies": (None, [P, c_uint, d]),
        "pll_set_category_rates": (None, [P, d]),
        "pll_set_category_weights": (None, [P, d]),
        "pll_update_eigen": (c_int, [P, c_uint]),
        "pll_update_prob_matrices": (c_int, [P, u, u, d, c_uint]),
        "pll_update_partials": (None, [P, POINTER(pll_operation_t), c_uint]),
        "pll_compute_root_loglikelihood": (c_double, [P, c_uint, c_int, u, d]),
        "pll_compute_edge_loglikelihood": (c_double, [P, c_uint, c_int, c_uint, c_int, c_uint, u, d]),
        "pll_compute_gamma_cats": (c_int, [c_double, c_uint, d, c_int]),
    }
    for fn, (res, args) in sig.items():
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


lib = _load()
pll_map_nt = (c_uint * 256).in_dll(lib, "pll_map_nt")
pll_errno = c_int.in_dll(lib, "pll_errno")  # __thread; valid in the calling (main) thread


def gamma_rates(alpha: float, categories: int, median: bool = False) -> np.ndarray:
    """libpll's discrete-Gamma category rates (``pll_compute_gamma_cats``)."""
    out = np.zeros(categories)
    mode = PLL_GAMMA_RATES_MEDIAN if median else PLL_GAMMA_RATES_MEAN
    if lib.pll_compute_gamma_cats(alpha, categories, _dp(out), mode) != 1:
        raise RuntimeError(f"pll_compute_gamma_cats failed (pll_errno={pll_errno.value})")
    return out


def _dp(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_double))


def _up(a: np.ndarray):
    return a.ctypes.data_as(POINTER(c_uint))


class LibpllPartition:
    """One libpll partition holding a fixed-topology GTR+Gamma likelihood problem.

    Args:
        tips: ``n`` strings (one character per pattern, IUPAC nucleotides; set with
            ``pll_set_tip_states`` and ``pll_map_nt``) or a float array ``[n, pattern, 4]`` of tip
            partials (set with ``pll_set_tip_clv``; incompatible with ``pattern_tip``).
        weights: ``[pattern]`` integer pattern weights.
        operations: ``int[n-1, 3]`` postorder ``[parent, child1, child2]`` (see module docstring).
        branch_lengths: ``[2n-1]`` length of the branch above each node (root entry ignored).
        rates: 6 GTR exchangeabilities (AC, AG, AT, CG, CT, GT); libpll normalises Q itself.
        freqs: 4 stationary frequencies (A, C, G, T).
        alpha, categories: discrete Gamma; ``categories=1`` means no rate heterogeneity.
        category_rates: explicit rates (overrides alpha), e.g. phylojax's for a bitwise-same model.
        median: median instead of mean category rates.
        arch: ``"avx2"`` (default), ``"avx"``, ``"sse"`` or ``"cpu"`` (plain C).
        pattern_tip: use ``PLL_ATTRIB_PATTERN_TIP`` (tip-tip lookup tables; tips must be strings).
        scaling: allocate scale buffers (libpll rescales a site when it underflows 2^-256).
    """

    def __init__(
        self,
        tips,
        weights,
        operations,
        branch_lengths,
        rates,
        freqs,
        alpha: float | None = None,
        categories: int = 4,
        *,
        category_rates=None,
        median: bool = False,
        arch: str = "avx2",
        pattern_tip: bool = False,
        scaling: bool = True,
    ):
        ops = np.asarray(operations, dtype=np.int64)
        n = ops.shape[0] + 1
        self.n = n
        self.node_count = 2 * n - 1
        weights = np.ascontiguousarray(weights, dtype=np.uint32)
        self.patterns = int(weights.shape[0])
        if category_rates is not None:
            cat_rates = np.ascontiguousarray(category_rates, dtype=np.float64)
        elif alpha is None or categories <= 1:
            cat_rates = np.ones(1)
        else:
            cat_rates = gamma_rates(alpha, categories, median)
        self.categories = int(cat_rates.shape[0])
        attrs = ARCH[arch]
        strings = isinstance(tips[0], (str, bytes))
        if pattern_tip:
            if not strings:
                raise ValueError("pattern_tip needs tip strings")
            attrs |= PLL_ATTRIB_PATTERN_TIP
        self.scaling = scaling
        self._p = lib.pll_partition_create(
            n,  # tips
            n - 1,  # inner CLV buffers
            4,  # states
            self.patterns,  # sites (patterns)
            1,  # rate matrices
            self.node_count,  # P matrices (one per node; the root's is unused)
            self.categories,
            (n - 1) if scaling else 0,  # scale buffers
            attrs,
        )
        if not self._p:
            raise RuntimeError(f"pll_partition_create failed (pll_errno={pll_errno.value})")
        if strings:
            for i, s in enumerate(tips):
                b = s.encode() if isinstance(s, str) else bytes(s)
                if len(b) != self.patterns:
                    raise ValueError(f"tip {i}: {len(b)} characters, expected {self.patterns}")
                if lib.pll_set_tip_states(self._p, i, pll_map_nt, b) != 1:
                    raise RuntimeError(f"pll_set_tip_states({i}) failed (pll_errno={pll_errno.value})")
        else:
            clv = np.asarray(tips, dtype=np.float64)
            for i in range(n):
                row = np.ascontiguousarray(clv[i])
                if lib.pll_set_tip_clv(self._p, i, _dp(row), 0) != 1:
                    raise RuntimeError(f"pll_set_tip_clv({i}) failed (pll_errno={pll_errno.value})")
        self._weights = weights
        lib.pll_set_pattern_weights(self._p, _up(weights))
        self._params_idx = np.zeros(self.categories, dtype=np.uint32)
        self.set_model(rates, freqs, cat_rates)
        self.set_operations(ops)
        self.set_branch_lengths(branch_lengths)

    # --- parameters -----------------------------------------------------------------------
    def set_model(self, rates, freqs, category_rates=None):
        """Exchangeabilities, frequencies and (optionally) category rates; eigen is recomputed."""
        r = np.ascontiguousarray(rates, dtype=np.float64)
        f = np.ascontiguousarray(freqs, dtype=np.float64)
        lib.pll_set_subst_params(self._p, 0, _dp(r))
        lib.pll_set_frequencies(self._p, 0, _dp(f))
        if category_rates is not None:
            c = np.ascontiguousarray(category_rates, dtype=np.float64)
            lib.pll_set_category_rates(self._p, _dp(c))
        self.matrices_valid = False

    def set_branch_lengths(self, branch_lengths):
        """Lengths of the branches above nodes ``0..2n-3`` (P matrix ``v`` = branch above ``v``)."""
        bl = np.asarray(branch_lengths, dtype=np.float64)
        self._lengths = np.ascontiguousarray(bl[: self.node_count - 1])
        self._matrix_idx = np.arange(self.node_count - 1, dtype=np.uint32)
        self._bl_params = np.zeros(self.categories, dtype=np.uint32)
        self.matrices_valid = False

    def set_operations(self, operations):
        """A new topology with the same tip count (postorder ``[parent, child1, child2]``)."""
        ops = np.asarray(operations, dtype=np.int64)
        n = self.n
        arr = (pll_operation_t * ops.shape[0])()

        def scaler(v):
            return int(v - n) if (v >= n and self.scaling) else PLL_SCALE_BUFFER_NONE

        for i, (parent, a, b) in enumerate(ops):
            o = arr[i]
            o.parent_clv_index = int(parent)
            o.parent_scaler_index = scaler(parent)
            o.child1_clv_index, o.child1_matrix_index = int(a), int(a)
            o.child1_scaler_index = scaler(a)
            o.child2_clv_index, o.child2_matrix_index = int(b), int(b)
            o.child2_scaler_index = scaler(b)
        self._ops, self._op_count = arr, ops.shape[0]
        self._op_array = ops
        self.root = int(ops[-1, 0])

    # --- evaluation -----------------------------------------------------------------------
    def update_matrices(self):
        """All P matrices (libpll refreshes the eigendecomposition if the model changed)."""
        ok = lib.pll_update_prob_matrices(
            self._p, _up(self._bl_params), _up(self._matrix_idx), _dp(self._lengths),
            self.node_count - 1,
        )
        if ok != 1:
            raise RuntimeError(f"pll_update_prob_matrices failed (pll_errno={pll_errno.value})")
        self.matrices_valid = True

    def update_partials(self):
        lib.pll_update_partials(self._p, self._ops, self._op_count)

    def root_loglik(self, persite: np.ndarray | None = None) -> float:
        ptr = _dp(persite) if persite is not None else None
        scaler = self.root - self.n if self.scaling else PLL_SCALE_BUFFER_NONE
        return lib.pll_compute_root_loglikelihood(self._p, self.root, scaler, _up(self._params_idx), ptr)

    def loglik(self, update_matrices: bool = True) -> float:
        """One full evaluation: P matrices (unless disabled), every partial, root lnL."""
        if update_matrices or not self.matrices_valid:
            self.update_matrices()
        self.update_partials()
        return self.root_loglik()

    def site_logliks(self) -> np.ndarray:
        """Per-pattern log-likelihoods (after :meth:`loglik`)."""
        out = np.zeros(self.patterns)
        self.root_loglik(out)
        return out

    def edge_loglik(self) -> float:
        """lnL on the root's two children joined by one branch (pulley principle), after loglik.

        The root is removed: the partials of its children ``a`` and ``b`` are combined across a
        single branch of length ``t_a + t_b`` (its P matrix goes into the otherwise unused slot
        ``root``). For a reversible model this equals :meth:`root_loglik`.
        """
        _, a, b = self._op_array[-1]
        merged = np.array([self._lengths[a] + self._lengths[b]])
        idx = np.array([self.root], dtype=np.uint32)
        lib.pll_update_prob_matrices(self._p, _up(self._bl_params), _up(idx), _dp(merged), 1)
        n = self.n

        def scaler(v):
            return int(v - n) if (v >= n and self.scaling) else PLL_SCALE_BUFFER_NONE

        return lib.pll_compute_edge_loglikelihood(
            self._p, int(a), scaler(a), int(b), scaler(b), self.root, _up(self._params_idx), None
        )

    def close(self):
        if getattr(self, "_p", None):
            lib.pll_partition_destroy(self._p)
            self._p = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()


def tip_strings(tip_partials) -> list[str]:
    """``[n, state, pattern]`` or ``[n, pattern, state]`` one-hot / IUPAC 0-1 partials → strings.

    Uses the 4-bit IUPAC code (A=1, C=2, G=4, T=8) so ambiguity codes and gaps round-trip through
    ``pll_map_nt``.
    """
    a = np.asarray(tip_partials)
    if a.shape[1] == 4 and a.shape[2] != 4:
        a = np.moveaxis(a, 1, 2)
    code = (a > 0.5).astype(np.int64) @ np.array([1, 2, 4, 8])
    table = np.frombuffer(b"-ACMGRSVTWYHKDBN", np.uint8)
    return [table[row].tobytes().decode() for row in code]


def problem_to_partition(problem, rates, freqs, category_rates, branch_lengths=None, **kw):
    """A :class:`LibpllPartition` for a ``phylojax.likelihood.Problem`` (same patterns, same tree)."""
    tips = tip_strings(np.asarray(problem.data.tip_partials))
    weights = np.rint(np.asarray(problem.data.pattern_weights)).astype(np.uint32)
    lengths = problem.branch_lengths if branch_lengths is None else branch_lengths
    return LibpllPartition(
        tips, weights, np.asarray(problem.topology.operations), lengths, rates, freqs,
        category_rates=category_rates, **kw,
    )


def _selfcheck():
    import jax

    jax.config.update("jax_enable_x64", True)
    from phylojax.io import Alignment, parse_newick
    from phylojax.likelihood import log_likelihood, prepare
    from phylojax.models import gtr, rate_model

    rng = np.random.default_rng(0)
    names = tuple(f"s{i}" for i in range(6))
    seqs = tuple("".join(rng.choice(list("ACGTACGTACGTRN-"), 300)) for _ in names)
    tree = parse_newick("(((s0:0.1,s1:0.2):0.05,(s2:0.3,s3:0.02):0.1):0.07,(s4:0.2,s5:0.15):0.3);")
    problem = prepare(Alignment(names=names, sequences=seqs), tree)
    rates6, freqs, alpha = (1.5, 4.0, 0.8, 1.2, 5.0, 1.0), (0.3, 0.2, 0.25, 0.25), 0.7
    model, rm = gtr(rates6, freqs), rate_model(alpha, 4)
    ref = float(log_likelihood(problem.data, problem.branch_lengths, model, rm))
    print("phylojax", ref)
    for arch in ("avx2", "cpu"):
        for pt in (False, True):
            with problem_to_partition(problem, rates6, freqs, None, arch=arch, pattern_tip=pt,
                                      alpha=alpha, categories=4) as part:
                v, e = part.loglik(), part.edge_loglik()
                print(f"libpll {arch:4s} pattern_tip={pt!s:5s} root {v:.10f} edge {e:.10f} "
                      f"diff {v - ref:+.2e}")


if __name__ == "__main__":
    _selfcheck()
