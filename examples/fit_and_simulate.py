"""Simulate an alignment under GTR+G4 and recover the parameters by maximum likelihood.

Run from the repository root:  python examples/fit_and_simulate.py
(the first fit compiles for a minute or so on a small CPU; later fits of the same shape are fast)
"""

import jax

jax.config.update("jax_enable_x64", True)

from phylojax.fit import fit  # noqa: E402
from phylojax.io import Alignment, parse_newick  # noqa: E402
from phylojax.models.spec import build_model, parse_model  # noqa: E402
from phylojax.simulate import simulate_alignment  # noqa: E402

truth = "GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+G4{0.7}"
tree = parse_newick("((a:0.1,b:0.2):0.05,c:0.3,(d:0.15,(e:0.1,f:0.05):0.04):0.07);")
model, rates = build_model(parse_model(truth), {})
sequences = simulate_alignment(tree, model, rates, 3000, seed=1)
alignment = Alignment(tuple(sequences), tuple(sequences.values()))

result = fit(alignment, tree, parse_model("GTR+F+G4"))
print(f"lnL {result.log_likelihood:.4f} after {result.iterations} iterations, {result.seconds:.1f} s")
for name, value in result.parameters.items():
    print(f"  {name}: {value}")
print("true:", truth)
print("fitted tree:", result.tree.to_newick(precision=4))
