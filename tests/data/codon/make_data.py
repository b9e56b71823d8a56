"""Regenerate the codeml oracle data set (run from the repository root; needs scipy + codeml).

    python tests/data/codon/make_data.py && (cd tests/data/codon && codeml codeml.ctl)

Simulates 7 taxa x 200 codons under MG94 (HKY theta, kappa = 2.5, omega = 0.4, F1X4) on a fixed
unrooted tree with phylojax's own model, then codeml evaluates the lnL with everything fixed.
"""

import pathlib

import jax
import numpy as np
import scipy.linalg

jax.config.update("jax_enable_x64", True)

from phylojax.alphabets import genetic_code  # noqa: E402
from phylojax.models.codon import mgk  # noqa: E402

HERE = pathlib.Path(__file__).parent
TREE = "((A:0.1,B:0.25):0.08,(C:0.15,(D:0.05,E:0.3):0.12):0.06,(F:0.2,G:0.1):0.04);"
# Same tree, nodes listed for simulation: (child, parent, length), root = 'R'.
EDGES = [
    ("X1", "R", 0.08), ("A", "X1", 0.1), ("B", "X1", 0.25),
    ("X2", "R", 0.06), ("C", "X2", 0.15), ("X3", "X2", 0.12), ("D", "X3", 0.05), ("E", "X3", 0.3),
    ("X4", "R", 0.04), ("F", "X4", 0.2), ("G", "X4", 0.1),
]  # fmt: skip


def main():
    rng = np.random.default_rng(20240601)
    sense, _, _ = genetic_code(1)
    nuc = np.array([0.3, 0.2, 0.25, 0.25])
    model = mgk(2.5, 0.4, np.repeat(nuc[None], 3, 0))
    q = np.asarray(model.rate_matrix())
    pi = np.asarray(model.frequencies)
    n = 200
    states = {"R": rng.choice(len(sense), size=n, p=pi)}
    for child, parent, t in EDGES:
        p = scipy.linalg.expm(q * t)
        states[child] = np.array([rng.choice(len(sense), p=p[s]) for s in states[parent]])
    taxa = "ABCDEFG"
    with open(HERE / "mg94.phy", "w") as fh:
        fh.write(f" {len(taxa)} {3 * n}\n")
        for name in taxa:
            fh.write(f"{name}  {''.join(sense[s] for s in states[name])}\n")
    (HERE / "mg94.nwk").write_text(TREE + "\n")


if __name__ == "__main__":
    main()
