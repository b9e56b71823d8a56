"""FEL (Fixed Effects Likelihood; Kosakovsky Pond & Frost 2005) as computed by HyPhy 2.5.47.

Pipeline (DESIGN.md §3): nucleotide GTR → MG94×REV with proportional lengths → full MG94×REV with
CF3x4 frequencies (:mod:`.global_fits`) → per-site alternative / null fits (:mod:`.site_fits`) →
LRT, χ²₁ p-values, classification. :func:`fel` returns a :class:`FelResult` of numpy arrays; the
HyPhy-layout JSON is built by :mod:`.report`.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import aot
from ..alphabets import codon_partials, nucleotide_partials
from ..errors import PrecisionError, input_error
from ..host import to_device
from ..io import Alignment, parse_newick, tree_for_alignment
from ..likelihood.api import make_data
from ..likelihood.topology import build_topology
from ..models.codon import codon_frequencies, expected_rate_np, mg94_parts_jit, position_counts
from ..patterns import compress
from ..tree import Tree
from . import parallel
from .global_fits import GlobalFit, PartitionData, compile_global_later, fit_global
from .intervals import profile_ci
from .isolated import fit_sites_classes_isolated
from .site_fits import SiteFits, SiteProblem, compile_fast_later, fit_sites_fast
from .site_general import fit_sites_general
from .site_srv_no import compile_srv_no_later, fit_sites_srv_no


def chi2_1_sf(lrt):
    """``P(chi2_1 > x)``; 1 for ``x <= 0``."""
    return np.array([math.erfc(math.sqrt(x / 2.0)) if x > 0 else 1.0 for x in np.ravel(lrt)])


@dataclasses.dataclass
class Partition:
    """One data partition (a NEXUS CHARSET with its own tree) after encoding."""

    name: str
    columns: np.ndarray  # codon indices (0-based) in the full alignment
    tree: Tree  # input tree (unrooted HyPhy-style), leaves in alignment order
    binary: Tree
    source_nodes: np.ndarray
    tested_input: np.ndarray  # bool[input node] tested branches
    data: PartitionData
    codon_patterns: object
    node_names: list


@dataclasses.dataclass
class FelResult:
    """Everything FEL reports. Per-codon arrays are in alignment order (all partitions).

    ``alpha``, ``beta``, ``null_rate`` (alpha = beta), ``lrt``, ``p_value``, ``total_branch_length``,
    ``partition`` (index per codon), ``constant``; optional ``dnds_ci`` ``[codon, 3]``,
    ``bootstrap_lrt`` ``[codon, N]``, ``p_asymptotic``.
    """

    alpha: np.ndarray
    beta: np.ndarray
    null_rate: np.ndarray
    lrt: np.ndarray
    p_value: np.ndarray
    total_branch_length: np.ndarray
    partition: np.ndarray
    constant: np.ndarray
    alt_loglik: np.ndarray
    null_loglik: np.ndarray
    beta_background: np.ndarray
    global_fit: GlobalFit
    partitions: list
    options: dict
    timers: dict
    dnds_ci: np.ndarray | None = None
    bootstrap_lrt: np.ndarray | None = None
    p_asymptotic: np.ndarray | None = None

    @property
    def positive(self) -> np.ndarray:
        return (self.p_value <= self.options["pvalue"]) & (self.alpha < self.beta)

    @property
    def negative(self) -> np.ndarray:
        return (self.p_value <= self.options["pvalue"]) & (self.alpha >= self.beta)


# ------------------------------------------------------------------------------ setup
def _unrooted(tree: Tree) -> Tree:
    kids = tree.children[tree.root]
    return tree.unroot() if len(kids) == 2 else tree


def _internal_names(tree: Tree) -> list[str]:
    """Leaf names, given internal names, else ``Node<k>`` (HyPhy's convention for unnamed)."""
    names, k = [], 0
    for v in range(tree.node_count):
        name = tree.names[v]
        if name is None or v >= tree.leaf_count and not str(name).strip():
            k += 1
            name = f"Node{k}"
        names.append(str(name))
    return names


def select_branches(tree: Tree, branches: str) -> np.ndarray:
    """``bool[node]`` tested branches for HyPhy's ``--branches`` (All, Internal, Leaves,
    Unlabeled, or a ``{label}`` set, case-insensitive)."""
    n = tree.node_count
    is_leaf = np.arange(n) < tree.leaf_count
    key = branches.strip()
    low = key.lower()
    if low == "all":
        mask = np.ones(n, bool)
    elif low == "internal":
        mask = ~is_leaf
    elif low == "leaves":
        mask = is_leaf.copy()
    else:
        labels = [str(lb).lower() if lb is not None else None for lb in tree.labels]
        if low == "unlabeled":
            mask = np.array([lb is None for lb in labels])
        else:
            want = low.strip("{}")
            mask = np.array([lb is not None and lb.strip("{}") == want for lb in labels])
            if not mask[:-1].any():
                known = sorted({str(lb) for lb in tree.labels if lb is not None})
                raise input_error(
                    f"unknown branch set {branches!r}: the tree has no branch labelled "
                    f"{{{branches}}}; use All, Internal, Leaves, Unlabeled"
                    + (f" or one of the labels {', '.join(known)}" if known else ""),
                    file=tree.source,
                )
    mask[tree.root] = False
    return mask


def _partition_trees(aln: Alignment, tree_path) -> list[tuple[str, np.ndarray, Tree]]:
    """``(name, codon columns, tree)`` per partition (NEXUS CHARSETs with one tree each)."""
    codon_count = aln.site_count // 3 if aln.site_count % 3 == 0 else 0
    parts = dict(aln.partitions or {})
    if len(parts) > 1 and tree_path is None and len(aln.trees) >= len(parts):
        out = []
        for (name, cols), (_, newick) in zip(parts.items(), aln.trees):
            cols = np.asarray(cols)
            # HyPhy assigns a codon to the CHARSET holding its third nucleotide (partitioned.nex's
            # SPAN_4 = 1492-1693 is 67 codons + 1 nucleotide; codon 564 goes to SPAN_5)
            codons = np.unique(cols[cols % 3 == 2] // 3)
            if len(codons) == 0:
                raise input_error(f"partition {name} holds no whole codon", file=aln.source)
            tree = parse_newick(newick, aln.source).reorder_leaves(aln.names)
            out.append((name, codons, tree))
        return out
    return [("0", np.arange(codon_count), tree_for_alignment(aln, tree_path))]


def prepare_partitions(aln: Alignment, tree_path=None, *, code=1, branches="All"):
    """Encode every partition; returns ``(partitions, nucleotide_pi[4], position_counts[3, 4])``."""
    codon_tips = codon_partials(aln, code)  # validates frame and stop codons (located errors)
    nuc_tips = nucleotide_partials(aln)
    # HyPhy counts N as 1/4 of each base in the frequencies (gaps are skipped)
    unknown = np.array([[ch in "Nn" for ch in str(seq)] for seq in aln.sequences])
    counts = position_counts(nuc_tips, unknown if unknown.shape == nuc_tips.shape[:2] else None)
    parts = []
    for name, cols, tree in _partition_trees(aln, tree_path):
        tree = _unrooted(tree)
        tested = select_branches(tree, branches)
        topo = build_topology(tree)
        binary, src = topo.tree, topo.source_nodes
        free = (src >= 0) & (np.arange(binary.node_count) != binary.root)
        tested_bin = np.array([s >= 0 and tested[s] for s in src])
        background = free & ~tested_bin
        nuc_cols = (3 * cols[:, None] + np.arange(3)[None]).ravel()
        npat = compress(nuc_tips[:, nuc_cols])
        cpat = compress(codon_tips[:, cols])
        init = np.nan_to_num(binary.branch_lengths, nan=0.1)
        parts.append(
            Partition(
                name=name, columns=cols, tree=tree, binary=binary, source_nodes=src,
                tested_input=tested,
                data=PartitionData(
                    nucleotide=make_data(npat.data, npat.weights, topo),
                    codon=make_data(cpat.data, cpat.weights, topo),
                    free=free, background=background, initial_lengths=init,
                ),
                codon_patterns=cpat, node_names=_internal_names(tree),
            )  # fmt: skip
        )
    nuc_pi = counts.sum(0) / counts.sum()
    return parts, nuc_pi, counts


# ------------------------------------------------------------------------------ analysis
def fel(
    aln: Alignment,
    tree_path=None,
    *,
    code=1,
    branches: str = "All",
    srv: bool = True,
    pvalue: float = 0.1,
    ci: bool = False,
    resample: int = 0,
    seed: int = 0,
    stage=None,
    rate_frequencies=None,
) -> FelResult:
    """Run FEL. ``stage(desc)`` is an optional context-manager factory for progress display.

    ``rate_frequencies``: optional ``[3, 4]`` corrected position frequencies ``n_k(x)`` used
    instead of solving CF3x4 exactly from the data -- e.g. HyPhy's own (loosely solved) values,
    read from its ``--intermediate-fits`` export, to reproduce HyPhy's global lnL to 1e-10.
    """
    import contextlib

    if not jax.config.jax_enable_x64:  # float32 gives NaN site fits, not a slightly worse answer
        raise PrecisionError(
            "fel needs float64: call jax.config.update('jax_enable_x64', True) before any JAX "
            "work (the phylojax command line does)")  # fmt: skip
    stage = stage or (lambda desc: contextlib.nullcontext())
    timers = {}
    t0 = time.perf_counter()
    parallel.start(aln.site_count // 3)  # worker processes for the site fits, if they will run
    parts, nuc_pi, counts = prepare_partitions(aln, tree_path, code=code, branches=branches)
    _, g = codon_frequencies(counts, "CF3X4", code)
    if rate_frequencies is not None:
        g = np.asarray(rate_frequencies, dtype=np.float64).reshape(3, 4)
    # compile the MG94 objective and the site fits' program while the GTR fit runs
    global_job = compile_global_later([p.data for p in parts], g, code)
    patterns = [_variable_patterns(p) for p in parts]  # (tips, variable indices, constant mask)
    site_jobs = [_compile_sites_later(p, pat, srv) for p, pat in zip(parts, patterns)]
    with stage("Global fits (GTR, MG94xREV)"):
        gfit = fit_global([p.data for p in parts], nuc_pi, g, code=code, precompiled=global_job)
    timers["Model fitting"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    r_s, r_n, pi = (np.asarray(a) for a in mg94_parts_jit(gfit.theta, g, code))
    full_rate = expected_rate_np(r_s + r_n, pi)
    codon_count = aln.site_count // 3
    cols = {k: np.zeros(codon_count) for k in ("alpha", "beta", "null", "lrt", "tbl", "alt", "nul")}
    beta_bg = np.full(codon_count, np.nan)
    constant = np.zeros(codon_count, bool)
    partition_of = np.zeros(codon_count, int)
    ci_rows = np.zeros((codon_count, 3)) if ci else None
    boot = np.zeros((codon_count, resample)) if resample else None
    for k, part in enumerate(parts):
        times = gfit.times[k]
        problem = SiteProblem(
            syn=r_s, nonsyn=r_n, frequencies=pi, times=to_device(times),
            background=to_device(part.data.background),
            operations=to_device(part.data.codon.operations),
            has_background=bool(np.any(part.data.background & (times > 0))),
        )  # fmt: skip
        tips, var, is_const = patterns[k]
        with stage(f"Site fits, partition {k + 1}/{len(parts)} ({len(var)} patterns)"):
            _wait_sites(site_jobs[k])
            fits = _fit(problem, tips[var], srv, ci=ci)
        tested_time = float(np.sum(times[~part.data.background]))
        site = part.codon_patterns.site_to_pattern
        where = part.columns
        partition_of[where] = k
        pat = _scatter(len(tips), var, fits)
        constant[where] = is_const[site]
        for key, arr in pat.items():
            cols[key][where] = arr[site]
        cols["tbl"][where] = pat["null"][site] * tested_time * full_rate / 3.0
        if problem.has_background:
            bb = np.zeros(len(tips))
            bb[var] = fits.beta_background
            beta_bg[where] = bb[site]
        if ci:
            with stage("Profile confidence intervals"):
                lohi = np.zeros((len(tips), 3))
                lohi[var] = _profile_ci(problem, tips[var], fits, srv)
                ci_rows[where] = lohi[site]
        if resample:
            with stage(f"Parametric bootstrap ({resample} replicates)"):
                sims = np.zeros((len(tips), resample))
                sims[var] = _bootstrap(problem, tips[var], fits, resample, seed + k, srv)
                boot[where] = sims[site]
    lrt = np.where(constant, 0.0, np.maximum(cols["lrt"], 0.0))
    p_asym = np.where(constant, 1.0, chi2_1_sf(lrt))
    p = p_asym
    if resample:
        p = (np.sum(boot >= lrt[:, None], axis=1) + 1.0) / (resample + 1.0)
        p = np.where(constant, 1.0, p)
    timers["FEL analysis"] = time.perf_counter() - t1
    timers["Total time"] = time.perf_counter() - t0
    return FelResult(
        alpha=cols["alpha"], beta=cols["beta"], null_rate=cols["null"], lrt=lrt, p_value=p,
        total_branch_length=cols["tbl"], partition=partition_of, constant=constant,
        alt_loglik=cols["alt"], null_loglik=cols["nul"], beta_background=beta_bg,
        global_fit=gfit, partitions=parts,
        options={"code": code, "branches": branches, "srv": srv, "pvalue": pvalue, "ci": ci,
                 "resample": resample, "seed": seed},
        timers=timers, dnds_ci=ci_rows, bootstrap_lrt=boot,
        p_asymptotic=p_asym if resample else None,
    )  # fmt: skip


def _variable_patterns(part):
    """``(tips [pattern, taxon, state], variable pattern indices, constant mask)``."""
    tips = np.moveaxis(np.asarray(part.data.codon.tip_partials), 2, 0)
    is_const = tips.prod(axis=1).sum(-1) > 0  # one codon compatible with every taxon
    return tips, np.flatnonzero(~is_const), is_const


def _compile_sites_later(part, patterns, srv: bool):
    """Start compiling the site program of ``part`` when it is one of the fast ones (no
    background branches; the others compile on first use): in the worker processes that will
    run it (:mod:`.parallel`), else on this process's compile thread (:mod:`phylojax.aot`)."""
    background = np.asarray(part.data.background)
    if background.any():
        return None
    tips, var, _ = patterns
    if len(var) == 0:
        return None
    states = tips.shape[2]
    matrix = jax.ShapeDtypeStruct((states, states), jnp.float64)
    problem = SiteProblem(
        syn=matrix, nonsyn=matrix, frequencies=jax.ShapeDtypeStruct((states,), jnp.float64),
        times=jax.ShapeDtypeStruct(background.shape, jnp.float64),
        background=to_device(background), operations=to_device(part.data.codon.operations),
    )  # fmt: skip
    tickets = parallel.compile_later(problem, len(var), tips.shape[1], states,
                                     "fast" if srv else "srv_no")  # fmt: skip
    if tickets is not None:
        return ("workers", tickets)
    later = compile_fast_later if srv else compile_srv_no_later
    return later(problem, len(var), tips.shape[1], states, tips.dtype)


def _wait_sites(job) -> None:
    if isinstance(job, tuple) and job[0] == "workers":
        parallel.wait(job[1])
    else:
        aot.wait(job)


def _fit(problem: SiteProblem, tips, srv: bool, ci: bool = False) -> SiteFits:
    """Null and alternative fits of every site; with background branches and ``ci``, the child
    that fits them computes the profile intervals too (``SiteFits.dnds_ci``)."""
    if len(tips) == 0:
        e = np.zeros(0)
        return SiteFits(e, e, e, e, e, e, e)
    if not problem.has_background:  # on the worker processes when there are enough sites
        fits = parallel.fit(problem, tips, "fast" if srv else "srv_no")
        if fits is not None:
            return fits
        return fit_sites_fast(problem, tips) if srv else fit_sites_srv_no(problem, tips)
    # background branches: the batched two-class fits on one-CPU worker processes (XLA:CPU
    # deadlocks on them with two threads), else in a one-CPU child, else the sequential path
    fits = parallel.fit(problem, tips, "classes", srv, ci)
    if fits is None:
        fits = fit_sites_classes_isolated(problem, tips, srv, ci=ci)
    return fits if fits is not None else fit_sites_general(problem, tips, srv=srv)


def _scatter(pattern_count, var, fits: SiteFits) -> dict:
    out = {}
    for key, arr in (("alpha", fits.alpha), ("beta", fits.beta), ("null", fits.null_rate),
                     ("lrt", fits.lrt), ("alt", fits.alt_loglik), ("nul", fits.null_loglik)):  # fmt: skip
        full = np.zeros(pattern_count)
        full[var] = arr
        out[key] = full
    return out


def _profile_ci(problem, tips, fits: SiteFits, srv: bool = True, iterations: int = 14) -> np.ndarray:
    """True profile 95% interval of dN/dS = beta/alpha, ``[site, (LB, MLE, UB)]``
    (:func:`.intervals.profile_ci`): the one computed with the fits in the one-CPU child when
    there are background branches, else computed here."""
    if fits.dnds_ci is not None:
        return np.asarray(fits.dnds_ci)
    if not problem.has_background:
        rows = parallel.profile_ci(problem, tips, fits, srv)
        if rows is not None:
            return rows
    return profile_ci(problem, tips, fits, srv, iterations,
                      site_chunk=8 if problem.has_background else None)  # fmt: skip


def _bootstrap(problem, tips, fits: SiteFits, replicates: int, seed: int, srv: bool) -> np.ndarray:
    """Parametric bootstrap from each site's null fit: simulate ``replicates`` columns, refit both
    models, return simulated LRTs ``[site, replicate]``. Missing-data tips stay missing."""
    from ..models.eigen import eigensystem, transition_probs

    rng = np.random.default_rng(seed)
    pi = np.asarray(problem.frequencies)
    syn, nonsyn = np.asarray(problem.syn), np.asarray(problem.nonsyn)
    times = np.asarray(problem.times)
    background = np.asarray(problem.background)
    ops = np.asarray(problem.operations)
    leaf_count, state_count = tips.shape[1], tips.shape[2]
    node_count = len(times)
    parents = np.full(node_count, -1)
    parents[ops[:, 1]] = ops[:, 0]
    parents[ops[:, 2]] = ops[:, 0]
    order = np.arange(node_count)[::-1]  # root first (postorder numbering)
    sims = []
    for s in range(len(tips)):
        a = float(fits.null_rate[s])
        bg = float(fits.null_beta_background[s]) if problem.has_background else a

        def probs(x, y):
            m = x * syn + y * nonsyn
            q = m * pi[None, :]
            q = q - np.diag(q.sum(1))
            return np.asarray(transition_probs(eigensystem(jnp.asarray(q), jnp.asarray(pi)),
                                               jnp.asarray(times)))  # fmt: skip

        p = np.where(background[:, None, None], probs(a, bg), probs(a, a))
        states = np.zeros((replicates, node_count), int)
        states[:, order[0]] = rng.choice(state_count, size=replicates, p=pi / pi.sum())
        for v in order[1:]:
            cum = np.cumsum(p[v][states[:, parents[v]]], axis=1)
            states[:, v] = np.minimum((rng.random((replicates, 1)) < cum).argmax(1), state_count - 1)
        sim = np.zeros((replicates, leaf_count, state_count))
        sim[np.arange(replicates)[:, None], np.arange(leaf_count)[None], states[:, :leaf_count]] = 1
        missing = tips[s].sum(-1) == state_count
        sim[:, missing] = 1.0
        sims.append(sim)
    sims = np.concatenate(sims)
    is_const = sims.prod(axis=1).sum(-1) > 0
    lrt = np.zeros(len(sims))
    var = np.flatnonzero(~is_const)
    if len(var):
        lrt[var] = _fit(problem, sims[var], srv).lrt
    return lrt.reshape(len(tips), replicates)


def dumps_tree(part: Partition, lengths: np.ndarray) -> str:
    """Newick of the input (unrooted) tree with HyPhy-style node names and given binary lengths."""
    input_lengths = np.zeros(part.tree.node_count)
    for b, s in enumerate(part.source_nodes):
        if s >= 0:
            input_lengths[s] = lengths[b]
    kids = part.tree.children

    def render(v):
        name = part.node_names[v]
        if v < part.tree.leaf_count:
            return f"{name}:{input_lengths[v]:.10g}"
        inner = ",".join(render(c) for c in kids[v])
        return f"({inner}){name}" + ("" if v == part.tree.root else f":{input_lengths[v]:.10g}")

    return render(part.tree.root) + ";"


def input_lengths(part: Partition, lengths: np.ndarray) -> np.ndarray:
    """Map per-binary-node values to the input tree's nodes."""
    out = np.zeros(part.tree.node_count)
    for b, s in enumerate(part.source_nodes):
        if s >= 0:
            out[s] = lengths[b]
    return out

