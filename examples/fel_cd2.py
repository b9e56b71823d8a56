"""FEL on HyPhy's CD2 example (10 taxa x 187 codons): HyPhy reports 13 positive / 27 negative sites.

    python examples/fel_cd2.py [path/to/CD2.nex]
"""

import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

from phylojax.io import read_alignment  # noqa: E402
from phylojax.selection.fel import fel  # noqa: E402
from phylojax.selection.report import summary, to_json  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[1] / "tests/data/hyphy/CD2.nex"
aln = read_alignment(path)
result = fel(aln)  # tree from the NEXUS file; --branches All, --srv Yes, p <= 0.1
g = result.global_fit
print(f"GTR lnL {g.gtr_loglik:.4f}, MG94xREV lnL {g.loglik:.4f}, dN/dS {g.omega[0]:.4f}")
print(summary(result))
for i in range(len(result.alpha)):
    if result.positive[i] or result.negative[i]:
        kind = "positive" if result.positive[i] else "negative"
        print(f"codon {i + 1:4d} {kind}: alpha {result.alpha[i]:.3f} beta {result.beta[i]:.3f} "
              f"LRT {result.lrt[i]:.3f} p {result.p_value[i]:.4f}")
doc = to_json(result, file_name=str(path), sequences=aln.taxon_count)  # HyPhy FEL JSON layout
