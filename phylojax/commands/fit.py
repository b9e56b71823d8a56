"""``phylojax fit``: maximum-likelihood branch lengths and model parameters on a fixed topology."""

from __future__ import annotations

import argparse
import sys

from ..fit import fit
from ..io import read_alignment, read_tree
from ..models.spec import parse_model
from ._common import emit_json, show_progress

HELP = "ML branch lengths and model parameters on a fixed tree (like iqtree2 -te)"
DESCRIPTION = (
    HELP
    + """

Parameters written without braces are estimated; values in braces are held fixed:
  GTR+F+G4                          rates, frequencies, alpha and branch lengths
  GTR{1.5,4,0.8,1.2,5}+F{.3,.2,.25,.25}+G4   alpha and branch lengths only
  HKY+F+I+G4   K80+G4   MGK+F3X4 (codon: kappa, omega; codon frequencies from the data)
+F without values is estimated by ML (IQ-TREE's +FO); --frequencies empirical keeps the observed
frequencies (IQ-TREE's +F). Rooted trees are unrooted first (the two root branches are not
separately identifiable); multifurcations stay multifurcating."""
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--alignment", required=True, help="alignment (FASTA, PHYLIP, NEXUS)")
    p.add_argument(
        "-t", "--tree", required=True, help="Newick tree (lengths optional: start values)"
    )
    p.add_argument("-m", "--model", default="GTR+F+G4", help="model string (default GTR+F+G4)")
    p.add_argument("-o", "--output", metavar="OUT.nwk", help="write the fitted tree (Newick)")
    p.add_argument("--code", default="1", help="genetic code for codon models (NCBI id or name)")
    p.add_argument(
        "--frequencies",
        choices=("estimate", "empirical"),
        default="estimate",
        help="+F without values: ML estimate (default) or observed frequencies",
    )
    p.add_argument(
        "--method",
        choices=("alternate", "lbfgs"),
        default="alternate",
        help="Newton on branches alternating with L-BFGS (default), or joint L-BFGS",
    )
    p.add_argument("--tol", type=float, default=1e-6, help="stop when a round gains less lnL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run(args) -> int:
    aln = read_alignment(args.alignment)
    tree = read_tree(args.tree)
    spec = parse_model(args.model)
    callback = None
    if show_progress(args.quiet):

        def callback(iterations, lnl):
            print(
                f"\riteration {iterations:5d}  lnL {lnl:.6f}", end="", file=sys.stderr, flush=True
            )

    result = fit(
        aln, tree, spec, code=args.code, frequencies=args.frequencies, method=args.method,
        tol=args.tol, callback=callback,
    )  # fmt: skip
    if callback is not None:
        print(file=sys.stderr)
    newick = result.newick
    if args.output:
        with open(args.output, "w") as out:
            out.write(newick + "\n")
    if args.json:
        emit_json({
            "log_likelihood": result.log_likelihood,
            "model": args.model,
            **result.parameters,
            "tree": newick,
            "iterations": result.iterations,
            "seconds": result.seconds,
        })  # fmt: skip
    else:
        print(f"log-likelihood: {result.log_likelihood:.6f}")
        for name, value in result.parameters.items():
            text = (
                ", ".join(f"{v:.6g}" for v in value) if isinstance(value, tuple) else f"{value:.6g}"
            )
            print(f"{name}: {text}")
        print(f"iterations: {result.iterations}; {result.seconds:.2f} s")
        if not args.output:
            print(newick)
    return 0
