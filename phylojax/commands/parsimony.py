"""``phylojax parsimony``: exact parsimony length, exact SPR move scores, SPR search."""

from __future__ import annotations

import time

HELP = "exact parsimony length, exact score change of every SPR move, SPR search"
DESCRIPTION = """\
Exact small-parsimony length (Fitch on binary nodes, Hartigan/Sankoff counts on polytomies;
ambiguity codes and gaps are state unions) and exact SPR move scores.

  phylojax parsimony score  -s ALN -t TREE --json              -> {"parsimony": N}
  phylojax parsimony spr    -s ALN -t TREE [--radius R] -o MOVES.tsv --json
                                                               -> {"moves": N, "seconds": S}
  phylojax parsimony search -s ALN -t TREE -o OUT.nwk --json   -> {"initial","final","rounds","seconds"}

SPR move (src, dst): prune the subtree at src, insert a new node on the edge (parent(dst), dst)
with children {dst, src}; dst is not in the subtree of src and is not the root; a unary node left
behind is suppressed; delta = new length - old length.  Moves that leave the topology unchanged
(dst = parent or sibling of src under a binary parent) are listed too, with delta 0.
MOVES.tsv columns: src, dst, lca, path_len (edges on the src-dst path), delta.

Node names: leaves and named internal nodes use their Newick names (the larch data sets name
every node, so MOVES.tsv rows match their reference tables).  An unnamed internal node is called
"_n<k>", where k is its index among the internal nodes in phylojax's node numbering (internal
nodes after the leaves, every node after its descendants; the same Newick text always gives the
same numbering, and an unnamed root is the last, _n<internal count - 1>).
"""


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=("score", "spr", "search"))
    parser.add_argument("-s", "--alignment", required=True, help="FASTA/PHYLIP/NEXUS nucleotides")
    parser.add_argument("-t", "--tree", required=True, help="Newick tree (polytomies allowed)")
    parser.add_argument("-o", "--output", help="spr: MOVES.tsv; search: OUT.nwk")
    parser.add_argument("--radius", type=int, default=None, help="spr: max edges src..dst")
    parser.add_argument(
        "--radius-schedule",
        default=None,
        help="search: comma-separated radii tried in turn, e.g. 2,4,8,16,32,64 (default: all moves)",
    )
    parser.add_argument("--plateau-rounds", type=int, default=0, help="search: sideways rounds")
    parser.add_argument("--seed", type=int, default=0, help="search: seed for sideways/escape moves")
    parser.add_argument(
        "--escape-tries",
        type=int,
        default=100,
        help="search: at a local optimum, delta-0 moves tried for a nearby improving move (0: off)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def node_names(tree) -> list[str]:
    """Newick names, with ``_n<k>`` for unnamed internal nodes (see the command's --help)."""
    names = []
    for i, name in enumerate(tree.names):
        if name is None:
            name = f"_n{i - tree.leaf_count}" if i >= tree.leaf_count else f"_leaf{i}"
        names.append(str(name))
    return names


def _inputs(args):
    from ..alphabets import nucleotide_bitsets
    from ..errors import input_error
    from ..io import read_alignment, read_tree

    aln = read_alignment(args.alignment)
    tree = read_tree(args.tree)
    if tree.leaf_count < 2:
        raise input_error(
            f"a parsimony tree needs at least 2 leaves, this one has {tree.leaf_count}"
            f" ({', '.join(tree.leaf_names)})",
            file=args.tree,
        )
    tree = tree.reorder_leaves(aln.names)
    return aln, tree, nucleotide_bitsets(aln)


def run(args) -> int:
    import jax.numpy as jnp
    import numpy as np

    from ..errors import input_error
    from ..parsimony import fitch, search, spr
    from ._common import emit_json

    aln, tree, leaf_sets = _inputs(args)
    arrays = fitch.tree_arrays(tree.parents, tree.leaf_count)
    if args.action == "score":
        length = int(fitch.parsimony_length(jnp.asarray(leaf_sets), arrays))
        if args.json:
            emit_json({"parsimony": length})
        else:
            print(length)
        return 0
    if not args.output:
        raise input_error(f"parsimony {args.action} needs -o/--output")
    if args.action == "spr":
        spr.score_all_moves(tree.parents, leaf_sets, arrays, radius=args.radius)  # compile
        start = time.perf_counter()
        moves = spr.score_all_moves(tree.parents, leaf_sets, arrays, radius=args.radius)
        seconds = time.perf_counter() - start
        names = np.array(node_names(tree), dtype=object)
        rows = zip(
            names[moves.src], names[moves.dst], names[moves.lca], moves.path_len, moves.delta
        )
        with open(args.output, "w") as out:
            out.write("src\tdst\tlca\tpath_len\tdelta\n")
            out.write("".join(f"{a}\t{b}\t{c}\t{d}\t{e}\n" for a, b, c, d, e in rows))
        result = {"moves": int(len(moves.delta)), "seconds": round(seconds, 4)}
        if args.json:
            emit_json(result)
        else:
            print(f"{result['moves']} moves scored in {result['seconds']} s -> {args.output}")
        return 0
    schedule = [int(r) for r in args.radius_schedule.split(",")] if args.radius_schedule else None
    start = time.perf_counter()
    result = search.spr_search(
        tree.parents, leaf_sets, schedule=schedule, plateau_rounds=args.plateau_rounds, seed=args.seed,
        escape_tries=args.escape_tries,
    )
    seconds = time.perf_counter() - start
    final_tree = search.compact(result.parents, tree.leaf_names)
    with open(args.output, "w") as out:
        out.write(final_tree.to_newick() + "\n")
    summary = {
        "initial": result.lengths[0],
        "final": min(result.lengths),
        "rounds": len(result.radii),
        "trajectory": result.lengths,
        "seconds": round(seconds, 3),
    }
    if args.json:
        emit_json(summary)
    else:
        print(f"parsimony {summary['initial']} -> {summary['final']} in {summary['rounds']} rounds")
    return 0

