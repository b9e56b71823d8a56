"""``phylojax fel``: Fixed Effects Likelihood site-level selection analysis (HyPhy 2.5 FEL)."""

from __future__ import annotations

import argparse
import sys

from ..io import read_alignment
from ._common import dumps, stage

HELP = "FEL: per-site dN/dS selection test (HyPhy 2.5 FEL, same JSON layout)"
DESCRIPTION = HELP + """

Fits nucleotide GTR, then MG94xREV with CF3x4 codon frequencies, then for every codon site an
alternative (alpha, beta free) and null (alpha = beta) model; LRT with chi2_1 p-values.
Sites with p <= --pvalue are reported as positive (beta > alpha) or negative selection.
The tree comes from the NEXUS file when --tree is absent; NEXUS CHARSETs with one tree each are
analysed as partitions."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alignment", required=True, help="codon alignment (FASTA, PHYLIP, NEXUS)")
    p.add_argument("--tree", help="Newick tree (default: the tree in the NEXUS file)")
    p.add_argument("--output", help="write HyPhy-layout JSON here")
    p.add_argument("--csv", help="write a per-codon CSV table here")
    p.add_argument("--plot", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--code", default="Universal", help="genetic code (NCBI id or name; Universal)")
    p.add_argument("--branches", default="All",
                   help="branches to test: All, Internal, Leaves, Unlabeled or a {label} set")
    p.add_argument("--srv", default="Yes", choices=["Yes", "No", "yes", "no"],
                   help="estimate site synonymous rate alpha (Yes) or fix it to 1 (No)")
    p.add_argument("--pvalue", type=float, default=0.1, help="significance level (default 0.1)")
    p.add_argument("--ci", nargs="?", const="Yes", default="No",
                   help="profile-likelihood 95%% CI for site dN/dS (--ci or --ci Yes)")
    p.add_argument("--resample", type=int, default=0, metavar="N",
                   help="parametric bootstrap replicates per site (p from simulations)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --resample")
    p.add_argument("--quiet", action="store_true", help="no progress display")


def run(args) -> int:
    from ..selection.fel import fel
    from ..selection.report import plot, summary, to_csv, to_json

    aln = read_alignment(args.alignment)
    code = int(args.code) if str(args.code).isdigit() else args.code
    result = fel(
        aln,
        args.tree,
        code=code,
        branches=args.branches,
        srv=args.srv.lower() == "yes",
        pvalue=args.pvalue,
        ci=str(args.ci).lower() in ("yes", "true", "1"),
        resample=args.resample,
        seed=args.seed,
        stage=lambda desc: stage(desc, args.quiet),
    )
    if args.output:
        doc = to_json(result, file_name=str(args.alignment), sequences=aln.taxon_count)
        with open(args.output, "w") as fh:
            fh.write(dumps(doc, indent=1))
    if args.csv:
        with open(args.csv, "w") as fh:
            fh.write(to_csv(result))
    if args.plot:
        plot(result, args.plot)
    g = result.global_fit
    print(f"Nucleotide GTR log-likelihood {g.gtr_loglik:.4f}; "
          f"global MG94xREV log-likelihood {g.loglik:.4f}, dN/dS {g.omega[0]:.4f}")  # fmt: skip
    print(summary(result))
    sys.stdout.flush()
    return 0
