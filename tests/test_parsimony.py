"""Parsimony: exact lengths, exact SPR deltas against reference tables and full recomputation,
apply/undo, search, bad input and the CLI (issue 4)."""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import shared_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phylojax.alphabets import nucleotide_bitsets
from phylojax.cli import main
from phylojax.commands.parsimony import _inputs, node_names
from phylojax.errors import InputError
from phylojax.io import read_alignment, read_tree
from phylojax.parsimony import fitch, search, spr


def load(aln_path, tree_path):
    aln = read_alignment(aln_path)
    tree = read_tree(tree_path).reorder_leaves(aln.names)
    return tree, nucleotide_bitsets(aln)


def length(tree, sets):
    return int(fitch.parsimony_length(jnp.asarray(sets), fitch.tree_arrays(tree.parents, tree.leaf_count)))


def read_table(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    rows = {}
    with opener(path, "rt") as handle:
        header = None
        for line in handle:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split("\t")
            if header is None:
                header = fields
                continue
            row = dict(zip(header, fields))
            rows[(row["src"], row["dst"])] = (int(row["delta_sankoff"]), row["lca"], int(row["path_len"]))
    return rows


def check_table(tree, sets, table, radius):
    moves = spr.score_all_moves(tree.parents, sets, fitch.tree_arrays(tree.parents, tree.leaf_count), radius=radius)
    names = node_names(tree)
    mine = {
        (names[s], names[d]): (int(x), names[l], int(p))
        for s, d, x, l, p in zip(moves.src, moves.dst, moves.delta, moves.lca, moves.path_len)
    }
    assert set(mine) == set(table)
    wrong = [(k, table[k], mine[k]) for k in table if mine[k] != table[k]]
    assert not wrong, wrong[:5]


# ------------------------------------------------------------------------------ reference lengths
def test_test5_tree0_length(data_dir):
    d = data_dir / "parsimony"
    tree, sets = load(d / "tree_0_leaves.fasta", d / "tree_0.nwk")
    assert length(tree, sets) == 174
    assert fitch.sankoff_length_numpy(tree.parents, sets) == 174


@pytest.mark.parametrize("k", range(5))
def test_test5_all_lengths(k):
    base = shared_or_skip("larch_test_5_trees")
    tree, sets = load(base / f"tree_{k}_leaves.fasta", base / f"tree_{k}.nwk")
    assert length(tree, sets) == 174


@pytest.mark.parametrize(
    "aln,nwk,expected",
    [
        ("seedtree_varsites.fasta", "seedtree.nwk", 1641),
        ("seedtree_optimized_varsites.fasta", "seedtree_optimized.nwk", 1605),
    ],
)
def test_seedtree_lengths(aln, nwk, expected):
    base = shared_or_skip("larch_seedtree")
    tree, sets = load(base / aln, base / nwk)
    assert length(tree, sets) == expected
    # Hartigan counts, not the 0/1 empty-intersection cost (1,621 on seedtree).
    assert fitch.sankoff_length_numpy(tree.parents, sets) == expected


# ------------------------------------------------------------------------------ dnapars (PHYLIP)
# Lengths frozen from PHYLIP 3.697 dnapars (Debian `phylip`), user-tree mode:
#   python -c 'import sys; sys.path.insert(0, "benchmarks"); import bench_parsimony as b; ...'
# i.e. benchmarks/bench_parsimony.py:dnapars_lengths, which writes `infile` (PHYLIP, taxa renamed
# t0, t1, ... padded to 10 characters, state sets as IUPAC letters, all four states as N) and
# `intree` (one topology-only Newick per line), then runs
#   printf 'U\nY\n' | /usr/lib/phylip/bin/dnapars
# and reads "requires a total of N" from `outfile`, once per tree.  dnapars scores
# multifurcating user trees exactly (a 5-taxon star with sites AACCG / ACGTT: 6).
# `resolve` is Tree.resolve_binary() (deterministic); a binary resolution is never longer.
DNAPARS_LENGTHS = [
    # (alignment, tree, resolve, dnapars length)
    ("parsimony/dnapars_small.fasta", "parsimony/dnapars_small.nwk", False, 232),  # IUPAC codes
    ("parsimony/dnapars_small.fasta", "parsimony/dnapars_small.nwk", True, 223),
    ("parsimony/tree_0_leaves.fasta", "parsimony/tree_0.nwk", False, 174),
    ("parsimony/tree_0_leaves.fasta", "parsimony/tree_0.nwk", True, 174),
    ("larch_seedtree/seedtree_varsites.fasta", "larch_seedtree/seedtree.nwk", False, 1641),
    ("larch_seedtree/seedtree_varsites.fasta", "larch_seedtree/seedtree.nwk", True, 1630),
]


@pytest.mark.parametrize("aln,nwk,resolve,expected", DNAPARS_LENGTHS)
def test_lengths_match_dnapars(data_dir, aln, nwk, resolve, expected):
    if aln.startswith("larch_"):
        base = shared_or_skip(aln.split("/")[0]).parent
    else:
        base = data_dir
    tree, sets = load(base / aln, base / nwk)
    if resolve:
        tree = tree.resolve_binary()
    assert length(tree, sets) == expected
    assert fitch.sankoff_length_numpy(tree.parents, sets) == expected


@pytest.mark.skipif(not pathlib.Path("/usr/lib/phylip/bin/dnapars").exists(), reason="no dnapars")
def test_dnapars_live_small(data_dir):
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_parsimony.py"
    spec = importlib.util.spec_from_file_location("bench_parsimony", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tree, sets = load(data_dir / "parsimony/dnapars_small.fasta", data_dir / "parsimony/dnapars_small.nwk")
    trees = [tree, tree.resolve_binary()]
    assert bench.dnapars_lengths(sets, [t.parents for t in trees]) == [length(t, sets) for t in trees]


# ------------------------------------------------------------------------------ move tables
@pytest.mark.slow
def test_test5_tree0_every_move(data_dir):
    d = data_dir / "parsimony"
    tree, sets = load(d / "tree_0_leaves.fasta", d / "tree_0.nwk")
    table = read_table(d / "tree_0_spr_moves_all.tsv.gz")
    assert len(table) == 10633
    check_table(tree, sets, table, None)


@pytest.mark.slow
def test_seedtree_moves_pathlen_le5():
    base = shared_or_skip("larch_seedtree")
    tree, sets = load(base / "seedtree_varsites.fasta", base / "seedtree.nwk")
    table = read_table(base / "seedtree_spr_moves_pathlen_le5.tsv")
    assert len(table) == 25112
    check_table(tree, sets, table, 5)


# ------------------------------------------------------------------------------ oracles
LEAVES, SITES = 8, 12
SLOTS = 2 * LEAVES - 1


@st.composite
def trees_and_sets(draw):
    """A random rooted tree on 8 leaves with polytomies (parent array padded to 15 slots with -2)
    and random IUPAC state sets, biased to few states so that deltas vary."""
    pool = list(range(LEAVES))
    parents = np.full(SLOTS, -2, dtype=np.int64)
    nxt = LEAVES
    while len(pool) > 1:
        k = draw(st.integers(2, min(4, len(pool))))
        idx = draw(st.permutations(range(len(pool))))[:k]
        group = [pool[i] for i in idx]
        for v in group:
            parents[v] = nxt
        pool = [v for v in pool if v not in group] + [nxt]
        nxt += 1
    parents[pool[0]] = -1
    choices = [1, 2, 4, 1, 2, 1 | 2, 15, 8]
    sets = np.array(
        draw(st.lists(st.sampled_from(choices), min_size=LEAVES * SITES, max_size=LEAVES * SITES)),
        dtype=np.uint8,
    ).reshape(LEAVES, SITES)
    return parents, sets


def padded_arrays(parents):
    return fitch.tree_arrays(parents, LEAVES, node_slots=SLOTS, max_children=4, min_steps=16)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_and_sets())
def test_incremental_delta_equals_recomputation(case):
    parents, sets = case
    before = fitch.sankoff_length_numpy(parents, sets)
    arrays = padded_arrays(parents)
    assert int(fitch.parsimony_length(jnp.asarray(sets), arrays)) == before
    moves = spr.score_all_moves(parents, sets, arrays, batch=16)
    assert len(moves.delta) > 0
    # The preorder pass restricted to changed words (1 of the 2 words here) gives the same moves.
    compact = spr.score_all_moves(parents, sets, arrays, batch=16, words=1)
    assert all(np.array_equal(a, b) for a, b in zip(compact, moves))
    for s, d, delta in zip(moves.src, moves.dst, moves.delta):
        after, _ = spr.apply_spr(parents, s, d)
        assert fitch.sankoff_length_numpy(after, sets) - before == delta, (s, d)


@settings(max_examples=50, deadline=None)
@given(trees_and_sets(), st.data())
def test_apply_then_undo_restores(case, data):
    parents, _ = case
    legal = [
        (s, d)
        for s in np.flatnonzero(parents >= 0)
        for d in np.flatnonzero(parents >= 0)
        if not spr.subtree_contains(parents, s, d)
    ]
    s, d = data.draw(st.sampled_from(legal))
    after, undo = spr.apply_spr(parents, s, d)
    kids = np.bincount(after[after >= 0], minlength=len(after))
    assert np.all(kids[LEAVES:][after[LEAVES:] != -2] != 1)  # no unary node left behind
    assert after[s] >= 0 and after[after[s]] != -2
    assert np.array_equal(spr.undo_spr(after, undo), parents)


def exhaustive_length(parents, sets):
    """Minimum over every assignment of single states to internal nodes (tiny trees only)."""
    internal = [v for v in range(len(parents)) if v >= sets.shape[0]]
    total = 0
    for site in range(sets.shape[1]):
        best = None
        for states in itertools.product(range(4), repeat=len(internal)):
            state = dict(zip(internal, states))
            cost = 0
            for v, p in enumerate(parents):
                if p < 0:
                    continue
                if v < sets.shape[0]:
                    cost += 0 if (sets[v, site] >> state[p]) & 1 else 1
                else:
                    cost += state[v] != state[p]
            best = cost if best is None else min(best, cost)
        total += best
    return total


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_fitch_matches_exhaustive(seed):
    rng = np.random.default_rng(seed)
    # 6 leaves, 3 internal nodes: a polytomy root with two cherries and two leaves.
    parents = np.array([6, 6, 7, 7, 8, 8, 8, 8, -1])
    perm = rng.permutation(6)
    parents[:6] = parents[:6][perm]
    sets = rng.choice(np.array([1, 2, 4, 8, 3, 15], dtype=np.uint8), size=(6, 5))
    arrays = fitch.tree_arrays(parents, 6)
    expected = exhaustive_length(parents, sets)
    assert int(fitch.parsimony_length(jnp.asarray(sets), arrays)) == expected
    assert fitch.sankoff_length_numpy(parents, sets) == expected


def test_constant_sites_do_not_change_deltas(data_dir):
    d = data_dir / "parsimony"
    tree, sets = load(d / "tree_0_leaves.fasta", d / "tree_0.nwk")
    mask, const = fitch.constant_length_sites(sets)
    assert mask.any()
    per_site = np.asarray(fitch.site_lengths(jnp.asarray(sets), fitch.tree_arrays(tree.parents, tree.leaf_count)))
    assert np.array_equal(per_site[mask], const[mask])


@pytest.mark.slow
def test_search_reaches_local_optimum(data_dir):
    d = data_dir / "parsimony"
    tree, sets = load(d / "tree_0_leaves.fasta", d / "tree_0.nwk")
    # Start from a worse tree: move a leaf far away, then climb back.
    moves = spr.score_all_moves(tree.parents, sets, fitch.tree_arrays(tree.parents, tree.leaf_count))
    worst = int(np.argmax(moves.delta))
    start, _ = spr.apply_spr(tree.parents, moves.src[worst], moves.dst[worst])
    result = search.spr_search(start, sets)
    assert result.lengths[0] == 174 + int(moves.delta[worst])
    assert min(result.lengths) <= 174
    final = search.compact(result.parents, tree.leaf_names)
    assert fitch.sankoff_length_numpy(final.reorder_leaves(tree.leaf_names).parents, sets) == min(result.lengths)


# ------------------------------------------------------------------------------ bad input
def _args(aln, nwk):
    return argparse.Namespace(alignment=str(aln), tree=str(nwk))


def test_taxa_mismatch(tmp_path):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACGA\n>c\nACGG\n")
    (tmp_path / "t.nwk").write_text("((a,b),x);")
    with pytest.raises(InputError, match="x") as err:
        _inputs(_args(tmp_path / "a.fasta", tmp_path / "t.nwk"))
    assert "c" in str(err.value)


def test_non_nucleotide_symbol(tmp_path):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACJT\n>c\nACGG\n")
    (tmp_path / "t.nwk").write_text("((a,b),c);")
    with pytest.raises(InputError, match="b"):
        _inputs(_args(tmp_path / "a.fasta", tmp_path / "t.nwk"))


def test_one_leaf_tree(tmp_path):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n")
    (tmp_path / "t.nwk").write_text("a;")
    with pytest.raises(InputError, match="a"):
        _inputs(_args(tmp_path / "a.fasta", tmp_path / "t.nwk"))


def test_bad_move_rejected():
    parents = np.array([4, 4, 5, 5, 6, 6, -1])
    with pytest.raises(InputError, match="subtree"):
        spr.apply_spr(parents, 4, 0)
    with pytest.raises(InputError, match="root"):
        spr.apply_spr(parents, 6, 0)


# ------------------------------------------------------------------------------ CLI
def test_cli_end_to_end(data_dir, tmp_path, capsys):
    d = data_dir / "parsimony"
    aln, nwk = str(d / "tree_0_leaves.fasta"), str(d / "tree_0.nwk")
    assert main(["parsimony", "score", "-s", aln, "-t", nwk, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"parsimony": 174}

    moves = tmp_path / "moves.tsv"
    assert main(["parsimony", "spr", "-s", aln, "-t", nwk, "--radius", "3", "-o", str(moves), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lines = moves.read_text().splitlines()
    header = lines[0].split("\t")
    assert {"src", "dst", "delta"} <= set(header)
    assert out["moves"] == len(lines) - 1 and out["seconds"] >= 0
    table = read_table(d / "tree_0_spr_moves_all.tsv.gz")
    expected = {k: v for k, v in table.items() if v[2] <= 3}
    got = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        got[(row["src"], row["dst"])] = (int(row["delta"]), row["lca"], int(row["path_len"]))
    assert got == expected

    out_tree = tmp_path / "out.nwk"
    assert main(["parsimony", "search", "-s", aln, "-t", nwk, "-o", str(out_tree), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["initial"] == 174 and summary["final"] <= 174
    assert main(["parsimony", "score", "-s", aln, "-t", str(out_tree), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parsimony"] == summary["final"]


def test_cli_bad_input_exit_code(tmp_path, capsys):
    (tmp_path / "a.fasta").write_text(">a\nACGT\n>b\nACGA\n")
    (tmp_path / "t.nwk").write_text("(a,z);")
    assert main(["parsimony", "score", "-s", str(tmp_path / "a.fasta"), "-t", str(tmp_path / "t.nwk")]) == 2
    assert "z" in capsys.readouterr().err


def test_generated_names_for_unnamed_nodes():
    tree = read_tree("((a,b),(c,d)x,e);")
    names = node_names(tree)
    assert names[: tree.leaf_count] == ["a", "b", "c", "d", "e"]
    internal = names[tree.leaf_count :]
    assert "x" in internal and internal[-1] == "_n2"  # the unnamed root is the last internal node
    assert all(n == "x" or n == f"_n{k}" for k, n in enumerate(internal))
    assert node_names(read_tree("((a,b),(c,d)x,e);")) == names  # stable
