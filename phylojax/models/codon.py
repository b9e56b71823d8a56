"""Muse–Gaut (MG94) codon models over the sense codons of an NCBI genetic code.

MG94 (Muse & Gaut 1994): for sense codons ``i != j`` that differ at exactly one position ``k``, by
nucleotides ``x -> y``, ``q_ij = theta_xy * g_k(y) * (omega if the change is non-synonymous)``;
changes at two or three positions have rate 0. ``theta`` are nucleotide exchangeabilities
(AC, AG, AT, CG, CT, GT), ``g_k`` the position-specific nucleotide "rate frequencies". The model is
reversible with ``pi_c ∝ prod_k g_k(c_k)`` over sense codons, so it is a
:class:`~phylojax.models.nucleotide.ReversibleModel` with ``R_ij = q_ij / pi_j``.

Frequency estimators (``g`` and ``pi`` from observed position-specific nucleotide frequencies
``f_k``): F1X4 (``g_k = f`` pooled over positions), F3X4 (``g_k = f_k``) and CF3X4 (Kosakovsky
Pond et al. 2010: ``g_k = n_k`` corrected so that the *codon* frequencies, which exclude stop
codons, reproduce the observed position-specific nucleotide frequencies exactly; HyPhy's default
for FEL). PAML's ``CodonFreq = 4`` (F1x4MG) and ``= 5`` (F3x4MG) are MG94 with F1X4 and F3X4.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..alphabets import codon_index_arrays, genetic_code
from .nucleotide import ReversibleModel, symmetric_from_upper

ESTIMATORS = ("F1X4", "F3X4", "CF3X4")


# ------------------------------------------------------------------------------ structure
@functools.lru_cache(maxsize=None)
def codon_structure(code: int | str = 1):
    """Numpy description of single-nucleotide neighbours between sense codons.

    Returns ``(single, position, source, target, synonymous)``, each ``[sense, sense]``:
    ``single`` is True where codons differ at exactly one position, ``position`` that position
    (0..2, else -1), ``source``/``target`` the nucleotides (0..3) at it, ``synonymous`` True for a
    single change that keeps the amino acid.
    """
    sense, table, _ = genetic_code(code)
    idx = codon_index_arrays(code)
    diff = idx[:, None, :] != idx[None, :, :]
    single = diff.sum(-1) == 1
    position = np.where(single, np.argmax(diff, axis=-1), -1)
    k = np.maximum(position, 0)
    rows = np.arange(len(sense))
    source = np.where(single, idx[rows[:, None], k], -1)
    target = np.where(single, idx[rows[None, :], k], -1)
    aa = np.array([table[c] for c in sense])
    synonymous = single & (aa[:, None] == aa[None, :])
    for a in (single, position, source, target, synonymous):
        a.setflags(write=False)
    return single, position, source, target, synonymous


def _stop_index_arrays(code) -> np.ndarray:
    _, _, stops = genetic_code(code)
    return np.array([["ACGT".index(b) for b in c] for c in sorted(stops)], dtype=np.int64).reshape(
        -1, 3
    )


# ------------------------------------------------------------------------------ frequencies
def position_counts(nucleotide_partials: np.ndarray, unknown=None) -> np.ndarray:
    """``[3, 4]`` observed nucleotide counts at each codon position.

    ``nucleotide_partials`` is ``[taxon, site, 4]`` (site = 3 x codon). Ambiguous characters count
    ``1/n`` for each of their ``n`` resolutions; fully unknown characters are skipped, except those
    flagged in the optional ``unknown`` ``bool[taxon, site]`` (HyPhy counts an ``N`` as 1/4 of
    each base but skips gaps: measured on rbp3, whose HyPhy frequencies this reproduces to 1e-17).
    """
    p = np.asarray(nucleotide_partials, dtype=np.float64)
    n = p.sum(-1, keepdims=True)
    counted = (n > 0) & (n < 4)
    if unknown is not None:
        counted = counted | np.asarray(unknown, bool)[..., None]
    w = np.where(counted, p / np.maximum(n, 1), 0.0)
    return w.reshape(w.shape[0], -1, 3, 4).sum(axis=(0, 1))


def cf3x4(position_frequencies, code: int | str = 1, tol: float = 1e-15) -> np.ndarray:
    """Corrected position frequencies ``n[3, 4]`` of CF3X4 (Kosakovsky Pond et al. 2010).

    Solves exactly (fixed point, then Newton to machine precision)
    ``n_k(x) (1 - S_k(x)) / (1 - S) = f_k(x)`` with ``S_k(x) = sum_{stop c, c_k = x} prod_{j != k}
    n_j(c_j)`` and ``S = sum_{stop c} prod_j n_j(c_j)``, i.e. the nucleotide frequencies implied by
    ``pi_c ∝ prod_k n_k(c_k)`` over sense codons equal the observed ``f``.
    """
    f = np.asarray(position_frequencies, dtype=np.float64)
    f = f / f.sum(-1, keepdims=True)
    stops = _stop_index_arrays(code)

    def residual(n):
        return implied_position_frequencies(n, stops) - f

    n = f.copy()
    for _ in range(200):
        pi = _product(n, stops)
        s = pi.sum()
        sk = np.zeros((3, 4))
        for k in range(3):
            others = np.prod([n[j, stops[:, j]] for j in range(3) if j != k], axis=0)
            np.add.at(sk[k], stops[:, k], others)
        new = f * (1.0 - s) / np.maximum(1.0 - sk, 1e-300)
        new = new / new.sum(-1, keepdims=True)
        if np.max(np.abs(new - n)) < 1e-13:
            n = new
            break
        n = new
    # Newton polish on the 9 free coordinates (each row sums to one).
    for _ in range(20):
        r = residual(n)[:, :3].ravel()
        if np.max(np.abs(r)) < tol:
            break
        jac = np.zeros((9, 9))
        h = 1e-7
        for i in range(9):
            d = np.zeros((3, 4))
            d[i // 3, i % 3] = h
            d[i // 3, 3] = -h
            jac[:, i] = (residual(n + d)[:, :3].ravel() - residual(n - d)[:, :3].ravel()) / (2 * h)
        step = np.linalg.solve(jac, -r).reshape(3, 3)
        n[:, :3] += step
        n[:, 3] = 1.0 - n[:, :3].sum(-1)
    return n


def _product(n, stops):
    if len(stops) == 0:
        return np.zeros(0)
    return n[0, stops[:, 0]] * n[1, stops[:, 1]] * n[2, stops[:, 2]]


def implied_position_frequencies(n, stops_or_code=1) -> np.ndarray:
    """``[3, 4]`` nucleotide frequencies at each position implied by ``pi ∝ prod_k n_k`` (sense)."""
    stops = (
        stops_or_code
        if isinstance(stops_or_code, np.ndarray)
        else _stop_index_arrays(stops_or_code)
    )
    n = np.asarray(n, dtype=np.float64)
    pi_stop = _product(n, stops)
    s = pi_stop.sum()
    out = n.copy()
    for k in range(3):
        stop_k = np.zeros(4)
        np.add.at(stop_k, stops[:, k], pi_stop)
        out[k] = (n[k] - stop_k) / (1.0 - s)
    return out


def codon_frequencies(counts_or_partials, estimator: str = "F3X4", code: int | str = 1):
    """Codon equilibrium frequencies and MG94 rate frequencies for an estimator.

    Args:
        counts_or_partials: ``[3, 4]`` position-specific nucleotide counts (or frequencies), or
            nucleotide tip partials ``[taxon, 3 * codon, 4]`` (counted with :func:`position_counts`).
        estimator: "F1X4", "F3X4" or "CF3X4".
    Returns:
        ``(frequencies[sense], position_frequencies[3, 4])``: ``pi_c ∝ prod_k g_k(c_k)`` and the
        ``g`` that enter the MG94 rates.
    """
    a = np.asarray(counts_or_partials, dtype=np.float64)
    counts = a if a.shape == (3, 4) else position_counts(a)
    estimator = estimator.upper()
    if estimator == "F1X4":
        g = np.repeat((counts.sum(0) / counts.sum())[None], 3, axis=0)
    elif estimator == "F3X4":
        g = counts / counts.sum(-1, keepdims=True)
    elif estimator == "CF3X4":
        g = cf3x4(counts, code)
    else:
        raise ValueError(f"unknown codon frequency estimator {estimator!r}; use {ESTIMATORS}")
    return np.asarray(_sense_frequencies(g, code)), g


def sense_frequencies(position_frequencies, code: int | str = 1) -> Array:
    """``pi_c ∝ prod_k g_k(c_k)`` over sense codons (JAX, differentiable in ``g``)."""
    idx = codon_index_arrays(code)
    g = jnp.asarray(position_frequencies)
    pi = g[0, idx[:, 0]] * g[1, idx[:, 1]] * g[2, idx[:, 2]]
    return pi / pi.sum()


# one compiled program instead of a dozen op-by-op ones (each traced and compiled, or fetched
# from the persistent cache, on every run of the CLI)
_sense_frequencies = jax.jit(sense_frequencies, static_argnums=1)


# ------------------------------------------------------------------------------ models
def _theta_matrix(exchangeabilities) -> Array:
    theta = jnp.asarray(exchangeabilities, dtype=float)
    if theta.shape == (4, 4):
        return theta
    if theta.shape[-1] == 5:
        theta = jnp.concatenate([theta, jnp.ones(1, theta.dtype)])
    return symmetric_from_upper(theta)


def mg94_parts(
    exchangeabilities, position_frequencies, code: int | str = 1
) -> tuple[Float[Array, "sense sense"], Float[Array, "sense sense"], Float[Array, " sense"]]:
    """Synonymous and non-synonymous MG94 exchangeabilities and the codon frequencies.

    Returns ``(R_S, R_N, pi)`` with ``R_S``, ``R_N`` symmetric ``[sense, sense]`` (zero diagonal)
    such that the MG94 rate matrix with site rates ``alpha``, ``beta`` is
    ``Q = (alpha R_S + beta R_N) diag(pi)`` with zero row sums; ``Q_S = R_S diag(pi)`` and
    ``Q_N = R_N diag(pi)`` (each with its own diagonal) are FEL's synonymous and
    non-synonymous parts (Kosakovsky Pond & Frost 2005). Not normalised.
    """
    single, position, _, _, synonymous = codon_structure(code)
    _, _, source, target, _ = codon_structure(code)
    theta = _theta_matrix(exchangeabilities)
    g = jnp.asarray(position_frequencies, dtype=float)
    pi = sense_frequencies(g, code)
    k = np.maximum(position, 0)
    s, t = np.maximum(source, 0), np.maximum(target, 0)
    rate = jnp.where(single, theta[s, t] * g[k, t], 0.0)  # q_ij without omega
    r = rate / pi[None, :]
    r = 0.5 * (r + r.T)  # exact symmetry (equal up to rounding by reversibility)
    return jnp.where(synonymous, r, 0.0), jnp.where(single & ~synonymous, r, 0.0), pi


def mg94(
    exchangeabilities,
    omega,
    position_frequencies,
    code: int | str = 1,
    frequencies: str | None = None,
    normalise: bool = True,
) -> ReversibleModel:
    """MG94×REV codon model as a :class:`ReversibleModel` over the sense codons.

    Args:
        exchangeabilities: nucleotide ``theta``: 6 values (AC, AG, AT, CG, CT, GT), 5 (GT = 1), or
            a symmetric ``[4, 4]``.
        omega: non-synonymous / synonymous rate ratio.
        position_frequencies: ``[3, 4]``. With ``frequencies=None`` these are the MG94 rate
            frequencies ``g`` used as given. With "F1X4" / "F3X4" / "CF3X4" they are observed
            position counts or frequencies and ``g`` is derived by :func:`codon_frequencies`.
        normalise: scale Q to one expected substitution per codon (codeml's branch lengths).
    """
    g = position_frequencies
    if frequencies is not None:
        _, g = codon_frequencies(np.asarray(position_frequencies), frequencies, code)
    r_s, r_n, pi = mg94_parts(exchangeabilities, g, code)
    return ReversibleModel(r_s + jnp.asarray(omega, dtype=float) * r_n, pi, normalise=normalise)


def mgk(kappa, omega, position_frequencies, code: int | str = 1, frequencies=None, normalise=True):
    """MG94 with HKY-style exchangeabilities (``kappa`` for transitions A<->G and C<->T)."""
    one = jnp.ones((), dtype=float)
    k = jnp.asarray(kappa, dtype=float)
    theta = jnp.stack([one, k, one, one, k, one])
    return mg94(theta, omega, position_frequencies, code, frequencies, normalise)


def expected_rate(r, frequencies) -> Array:
    """``sum_i pi_i sum_{j != i} R_ij pi_j``: expected substitutions per unit time of ``R diag(pi)``."""
    pi = jnp.asarray(frequencies)
    return pi @ (r - jnp.diag(jnp.diag(r))) @ pi


# jitted forms for callers outside a trace (FEL's setup and reports): one program each
mg94_parts_jit = jax.jit(mg94_parts, static_argnums=2)


def expected_rate_np(r, frequencies) -> float:
    """:func:`expected_rate` in numpy, for concrete arrays outside a trace: nothing to compile
    (op-by-op JAX here cost a compilation of ``add`` and of ``expected_rate`` on every first
    run, each waiting behind the large programs compiling in the background)."""
    r, pi = np.asarray(r, dtype=np.float64), np.asarray(frequencies, dtype=np.float64)
    return float(pi @ (r - np.diag(np.diag(r))) @ pi)


def model_from_spec(spec, problem, code: int | str = 1):
    """``(ReversibleModel, RateModel)`` for a codon :class:`~phylojax.models.spec.ModelSpec`
    (MGK{kappa,omega} or MG94xREV{AC,AG,AT,CG,CT,omega}, GT = 1), frequencies counted from
    ``problem.alignment`` with the spec's estimator (F1X4 / F3X4 / CF3X4; default F3X4).
    Free parameters take defaults (kappa 2, omega 1, rates 1). Normalised per codon."""
    from ..alphabets import nucleotide_partials
    from .rates import rate_model

    p = spec.parameters
    omega = p.get("omega") if p.get("omega") is not None else 1.0
    estimator = spec.frequency_mode if spec.frequency_mode.upper() in ESTIMATORS else "F3X4"
    counts = position_counts(nucleotide_partials(problem.alignment))
    if spec.name == "MGK":
        kappa = p.get("kappa") if p.get("kappa") is not None else 2.0
        model = mgk(kappa, omega, counts, code, frequencies=estimator)
    else:
        rates = p.get("rates") if p.get("rates") is not None else (1.0,) * 5
        model = mg94(jnp.asarray(tuple(rates) + (1.0,)), omega, counts, code, frequencies=estimator)
    alpha = p.get("alpha") if spec.category_count > 1 else None
    rates = rate_model(
        alpha=alpha if alpha is not None else (1.0 if spec.category_count > 1 else None),
        category_count=spec.category_count,
        pinv=p.get("pinv") or 0.0,
    )
    return model, rates
