"""Readers: every format, and a located InputError for every kind of bad input."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phylojax.alphabets import codon_partials, nucleotide_partials
from phylojax.cli import main
from phylojax.errors import InputError
from phylojax.io import parse_newick, read_alignment, tree_for_alignment
from phylojax.patterns import compress


def write(tmp_path, name, text, newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode())
    return path


FASTA = ">a\nACGT\nAC\n>b\nACGTTT\n>c\nAC-TNR\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_fasta_any_line_endings(tmp_path, newline):
    aln = read_alignment(write(tmp_path, "x.fa", FASTA, newline))
    assert aln.names == ("a", "b", "c")
    assert aln.sequences == ("ACGTAC", "ACGTTT", "AC-TNR")


def test_phylip_strict_and_relaxed(tmp_path):
    relaxed = read_alignment(write(tmp_path, "r.phy", "2 6\nlong_name_taxon ACGTAC\nb ACGTTT\n"))
    assert relaxed.names == ("long_name_taxon", "b")
    strict = read_alignment(write(tmp_path, "s.phy", " 2 6\nseq1      ACGTAC\nseq2      ACGTTT\n"))
    assert strict.sequences == ("ACGTAC", "ACGTTT")


def test_nexus_with_tree_charsets_and_labels(tmp_path):
    text = """#NEXUS
begin data; dimensions ntax=3 nchar=6; format datatype=dna gap=- missing=?;
matrix
a ACGTAC
b ACGTTT
c AC-TNR
;
end;
begin trees; tree t1 = ((a{FG}:0.1,b:0.2)95:0.3,c:0.4); end;
begin assumptions; charset first = 1-3; charset second = 4-6; charset thirds = 3-6\\3; end;
"""
    aln = read_alignment(write(tmp_path, "x.nex", text))
    assert aln.partitions == {"first": [0, 1, 2], "second": [3, 4, 5], "thirds": [2, 5]}
    tree = tree_for_alignment(aln, None)
    assert tree.leaf_names == ["a", "b", "c"]
    assert tree.labels[0] == "FG"
    assert 95.0 in tree.supports


def test_real_hyphy_files_read():
    from conftest import shared_or_skip

    base = shared_or_skip("hyphy")
    aln = read_alignment(base / "HepatitisD.nex")  # '\r' line endings, names start with digits
    assert aln.taxon_count == 33 and aln.site_count == 588
    part = read_alignment(base / "partitioned.nex")  # NOLABELS matrix, 5 CHARSETs and trees
    assert len(part.partitions) == 5 and len(part.trees) == 5


@pytest.mark.parametrize(
    "text,pattern",
    [
        (">a\nACGT\n>b\nACG\n", r"x\.fa, line 3, taxon 'b': sequence has 3 sites"),
        (">a\nACGT\n>a\nACGA\n", r"line 3, taxon 'a': duplicate taxon name"),
        ("", r"empty alignment file"),
        (">a\nACGT\nACJA\n>b\nACGTACGA\n", r"x\.fa, line 3, taxon 'a', column 7: unknown nucleotide symbol 'J'"),
        ("hello\n", r"unrecognised alignment format"),
    ],
)
def test_bad_alignments(tmp_path, text, pattern):
    path = write(tmp_path, "x.fa", text)
    with pytest.raises(InputError, match=pattern):
        aln = read_alignment(path)
        nucleotide_partials(aln)


def test_codon_errors(tmp_path):
    path = write(tmp_path, "c.fa", ">a\nATGAAATTT\n>b\nATGTAGTTT\n")
    with pytest.raises(InputError, match=r"c\.fa, line 4, taxon 'b', column 4: in-frame stop codon TAG at codon 2"):
        codon_partials(read_alignment(path))
    path = write(tmp_path, "d.fa", ">a\nATGAAATT\n>b\nATGTAATT\n")
    with pytest.raises(InputError, match="not divisible by 3"):
        codon_partials(read_alignment(path))


def test_codon_ambiguity_and_partial_codons(tmp_path):
    path = write(tmp_path, "c.fa", ">a\nTG-ATG---\n>b\nTGRATGAAA\n")
    p = codon_partials(read_alignment(path))
    assert p[0, 0].sum() == 3  # TGN: TGA is a stop, TGC TGG TGT remain
    assert p[1, 0].sum() == 1  # TGR: TGA stop, TGG
    assert p[0, 2].sum() == 61  # --- is missing data


@pytest.mark.parametrize(
    "newick,pattern",
    [
        ("((a,b),c;", r"unclosed '\(' at end of input"),
        ("((a,b)),c);", r"unmatched '\)' at position 10"),
        ("((a,b),c)", r"missing ';'"),
        ("((a:-1,b),c);", r"branch length -1 at position 5 must be >= 0"),
        ("((a:nan,b),c);", r"branch length 'nan' at position 5 is not a number"),
        ("((a,b),a);", r"duplicate leaf names in tree: a"),
        ("(a);", r"at least 2 are needed"),
        ("", r"empty tree"),
    ],
)
def test_bad_newick(newick, pattern):
    with pytest.raises(InputError, match=pattern):
        parse_newick(newick, "t.nwk")


def test_taxa_mismatch_names_both_sides(tmp_path):
    aln = read_alignment(write(tmp_path, "x.fa", ">a\nAC\n>b\nAC\n>z\nAC\n"))
    tree = parse_newick("((a,b),c);", "t.nwk")
    with pytest.raises(InputError, match=r"in the tree but not the alignment: c; in the alignment but not the tree: z"):
        tree.reorder_leaves(aln.names)


def test_numeric_labels_are_supports_and_unary_nodes_suppressed():
    tree = parse_newick("(((a:1,b:2)0.95:0.5):0.25,c:1,d:1);")
    assert tree.leaf_names == ["a", "b", "c", "d"]
    assert 0.95 in tree.supports
    assert all(len(c) != 1 for c in tree.children)
    ab = tree.parents[0]
    assert tree.branch_lengths[ab] == pytest.approx(0.75)


names = st.text(alphabet="abcdefghij", min_size=1, max_size=4)


@settings(max_examples=30, deadline=None)
@given(st.lists(names, min_size=2, max_size=8, unique=True), st.randoms(use_true_random=False))
def test_newick_round_trip(leaves, rnd):
    nodes = [f"{n}:{rnd.random():.4f}" for n in leaves]
    while len(nodes) > 1:
        k = min(len(nodes), rnd.choice([2, 3]))
        picked = [nodes.pop(rnd.randrange(len(nodes))) for _ in range(k)]
        nodes.append("(" + ",".join(picked) + f"):{rnd.random():.4f}")
    text = nodes[0].rsplit(":", 1)[0] + ";"
    tree = parse_newick(text)
    again = parse_newick(tree.to_newick())
    assert again.to_newick() == tree.to_newick()
    assert sorted(again.leaf_names) == sorted(leaves)
    np.testing.assert_allclose(np.nansum(again.branch_lengths), np.nansum(tree.branch_lengths))


def test_pattern_compression_round_trip():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2, size=(5, 200, 4)).astype(float)
    p = compress(data)
    np.testing.assert_array_equal(p.data[:, p.site_to_pattern], data)
    assert p.weights.sum() == 200
    assert len({tuple(col.ravel()) for col in np.moveaxis(p.data, 1, 0)}) == p.pattern_count


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    aln = write(tmp_path, "x.fa", ">a\nACGT\n>b\nACGA\n>c\nAAGT\n")
    tree = write(tmp_path, "t.nwk", "((a:0.1,b:0.1):0.1,q:0.2);")
    assert main(["loglik", "-s", str(aln), "-t", str(tree), "-m", "JC"]) == 2
    err = capsys.readouterr().err
    assert "in the tree but not the alignment: q" in err and "Traceback" not in err
    assert main(["loglik", "-s", str(tmp_path / "missing.fa"), "-t", str(tree)]) == 2
    assert main(["loglik", "-s", str(aln), "-t", str(tree), "-m", "FOO"]) == 2


def test_cli_loglik_json_site_and_ancestral(tmp_path, capsys, data_dir):
    site_file, anc_file = tmp_path / "site.tsv", tmp_path / "anc.tsv"
    code = main(["loglik", "-s", str(data_dir / "lik/sim7.fa"), "-t", str(data_dir / "lik/sim7.nwk"),
                 "-m", "GTR{1.5,4.0,0.8,1.2,5.0}+F{0.3,0.2,0.25,0.25}+G4{0.7}", "--json",
                 "--repeat", "2", "--site-loglik", str(site_file), "--ancestral", str(anc_file)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["log_likelihood"] == pytest.approx(-2774.56836203779675998, abs=1e-6)
    assert set(out["timing"]) >= {"compile_s", "eval_s_median", "eval_s_min"}
    rows = site_file.read_text().splitlines()
    assert len(rows) == 601
    assert sum(float(r.split("\t")[2]) for r in rows[1:]) == pytest.approx(out["log_likelihood"])
    anc = anc_file.read_text().splitlines()
    assert anc[0].split("\t")[:6] == ["node", "site", "A", "C", "G", "T"]
    assert len(anc) == 1 + 5 * 600  # 5 internal nodes of the unrooted 7-taxon tree


def test_pattern_compression_is_exact_when_hashes_collide(monkeypatch):
    import phylojax.patterns as patterns

    rng = np.random.default_rng(1)
    data = rng.integers(0, 2, size=(4, 300, 3)).astype(float)
    data[:, 5] = np.where(data[:, 9] == 0, -0.0, data[:, 9])  # column 9 with -0.0 for 0.0
    assert data[:, 5].tobytes() != data[:, 9].tobytes()
    expected = compress(data)
    # every column hashed alike: the rows themselves must be compared and sorted instead
    monkeypatch.setattr(patterns, "_row_keys", lambda rows: np.zeros(len(rows), np.uint64))
    collided = compress(data)
    np.testing.assert_array_equal(collided.site_to_pattern, expected.site_to_pattern)
    np.testing.assert_array_equal(collided.weights, expected.weights)
    np.testing.assert_array_equal(collided.data, expected.data)
    assert expected.site_to_pattern[5] == expected.site_to_pattern[9]
    # first-appearance order, against a plain dictionary of columns
    columns = [c.tobytes() for c in np.moveaxis(data + 0.0, 1, 0)]
    seen = {}
    for c in columns:
        seen.setdefault(c, len(seen))
    assert expected.pattern_count == len(seen)
    np.testing.assert_array_equal(expected.site_to_pattern, [seen[c] for c in columns])
