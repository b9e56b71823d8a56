"""Exact parsimony and SPR moves on larch's seedtree (run from the repository root).

    python examples/parsimony_seedtree.py
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

from phylojax.alphabets import nucleotide_bitsets  # noqa: E402
from phylojax.io import read_alignment, read_tree  # noqa: E402
from phylojax.parsimony import fitch, spr  # noqa: E402

DATA = "../shared/data/larch_seedtree/"
aln = read_alignment(DATA + "seedtree_varsites.fasta")
tree = read_tree(DATA + "seedtree.nwk").reorder_leaves(aln.names)
sets = nucleotide_bitsets(aln)
arrays = fitch.tree_arrays(tree.parents, tree.leaf_count)
print("length", int(fitch.parsimony_length(jnp.asarray(sets), arrays)))  # 1641

moves = spr.score_all_moves(tree.parents, sets, arrays, radius=5)
best = moves.delta.argmin()
print(len(moves.delta), "moves; best", tree.names[moves.src[best]], "->", tree.names[moves.dst[best]], int(moves.delta[best]))
after, undo = spr.apply_spr(tree.parents, moves.src[best], moves.dst[best])
print("after the move", fitch.sankoff_length_numpy(after, sets))  # 1641 + delta
