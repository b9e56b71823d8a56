"""``phylojax loglik``: log-likelihood of an alignment on a fixed tree under a fixed model."""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..io import read_alignment, read_tree
from ..likelihood import ancestral_states, log_likelihood, prepare, site_log_likelihoods
from ..models.spec import build_model, empirical_frequencies, parse_model
from ._common import emit_json

HELP = "log-likelihood of an alignment on a fixed tree (branch lengths as given, like -blfix)"
DESCRIPTION = HELP + """

Models use IQ-TREE syntax; values in braces are fixed, others take defaults (+F: empirical):
  GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+I{0.1}+G4{0.7}
  HKY{2.5}+F+G4{0.7}      JC      K80{2}+G4{0.5}      MGK{2.0,0.3}+F1X4 (codon)
Codon branch lengths are expected substitutions per codon (codeml's convention)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--alignment", required=True, help="alignment (FASTA, PHYLIP, NEXUS)")
    p.add_argument("-t", "--tree", required=True, help="Newick tree with branch lengths")
    p.add_argument("-m", "--model", default="GTR+F", help="model string (default GTR+F)")
    p.add_argument("--code", default="1", help="genetic code for codon models (NCBI id or name)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeat", type=int, default=0, metavar="N",
                   help="time N evaluations after the first compiled call")
    p.add_argument("--site-loglik", metavar="FILE", help="write per-site log-likelihoods (TSV)")
    p.add_argument("--ancestral", metavar="FILE",
                   help="write marginal ancestral state posteriors of internal nodes (TSV)")


def prepare_model(args):
    """Shared by loglik/fit/simulate: read inputs, build the problem and the model."""
    aln = read_alignment(args.alignment)
    tree = read_tree(args.tree)
    spec = parse_model(args.model)
    problem = prepare(aln, tree, codon=spec.is_codon, code=args.code)
    if spec.is_codon:
        from ..models.codon import model_from_spec  # codon models live with FEL's code

        model, rates = model_from_spec(spec, problem, code=args.code)
    else:
        freqs = empirical_frequencies(problem.patterns.data, problem.patterns.weights)
        model, rates = build_model(spec, {}, freqs)
    return aln, tree, spec, problem, model, rates


def node_names(problem) -> list[str]:
    """Names of the binary tree's nodes: input names, else ``Node<k>`` by postorder index."""
    names = []
    for i, name in enumerate(problem.topology.tree.names):
        names.append(name if name else f"Node{i}")
    return names


def run(args) -> int:
    aln, tree, spec, problem, model, rates = prepare_model(args)
    if not tree.has_lengths:
        raise InputError(
            f"{args.tree}: some branches have no length; loglik keeps lengths fixed "
            "(use 'phylojax fit' to estimate them)"
        )
    lengths = jnp.asarray(problem.branch_lengths)
    fn = jax.jit(log_likelihood)
    start = time.perf_counter()
    value = float(fn(problem.data, lengths, model, rates))
    compile_s = time.perf_counter() - start
    result = {
        "log_likelihood": value,
        "model": args.model,
        "taxa": aln.taxon_count,
        "sites": problem.patterns.site_to_pattern.shape[0],
        "patterns": problem.patterns.pattern_count,
    }
    if args.repeat > 0:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn(problem.data, lengths, model, rates).block_until_ready()
            times.append(time.perf_counter() - t0)
        result["timing"] = {
            "compile_s": compile_s,
            "eval_s_median": statistics.median(times),
            "eval_s_min": min(times),
            "repeat": args.repeat,
            "device": str(jax.devices()[0]),
        }
    if args.site_loglik:
        site = np.asarray(jax.jit(site_log_likelihoods)(problem.data, lengths, model, rates))
        per_site = site[problem.patterns.site_to_pattern]
        with open(args.site_loglik, "w") as out:
            out.write("site\tpattern\tlog_likelihood\n")
            for i, (p, v) in enumerate(zip(problem.patterns.site_to_pattern, per_site)):
                out.write(f"{i + 1}\t{p + 1}\t{v:.12g}\n")
    if args.ancestral:
        post = np.asarray(jax.jit(ancestral_states)(problem.data, lengths, model, rates))
        names = node_names(problem)
        leaf_count = problem.topology.leaf_count
        states = _state_labels(spec, args.code, post.shape[-1])
        with open(args.ancestral, "w") as out:
            out.write("node\tsite\t" + "\t".join(states) + "\tmap\n")
            for k in range(post.shape[0]):
                if problem.topology.source_nodes[leaf_count + k] < 0:
                    continue  # zero-length node added to resolve a polytomy
                site_post = post[k][problem.patterns.site_to_pattern]
                for i, row in enumerate(site_post):
                    cells = "\t".join(f"{v:.6g}" for v in row)
                    out.write(f"{names[leaf_count + k]}\t{i + 1}\t{cells}\t{states[row.argmax()]}\n")
    if args.json:
        emit_json(result)
    else:
        print(f"log-likelihood: {value:.10f}")
        if "timing" in result:
            t = result["timing"]
            print(f"compile {t['compile_s']:.3f} s; evaluation median {t['eval_s_median'] * 1e3:.3f} ms")
    return 0


def _state_labels(spec, code, state_count) -> list[str]:
    if not spec.is_codon:
        return list("ACGT")
    from ..alphabets import genetic_code

    return list(genetic_code(code)[0])
