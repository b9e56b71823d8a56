"""Learned-index suffix-array search (issue 5) against a direct-scan oracle."""

from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phylojax import InputError
from phylojax import index as ix
from phylojax.cli import main
from phylojax.index import suffix_array

BASES = "ACGT"


def oracle(records: list[tuple[str, bytes]], pattern: bytes) -> int:
    """Overlapping occurrences inside each record by direct scan (never across records or N)."""
    total = 0
    for _, seq in records:
        seq = seq.upper()
        start = seq.find(pattern)
        while start != -1:
            total += 1
            start = seq.find(pattern, start + 1)
    return total


def counts(index, patterns, use_model=True):
    lo, hi = ix.count(ix.prepare(index), ix.encode_patterns(patterns), use_model=use_model)
    return (np.asarray(hi) - np.asarray(lo)).tolist()


def check(records, patterns, k):
    index = ix.build_index(records, k=k)
    want = [oracle(records, p if isinstance(p, bytes) else p.encode()) for p in patterns]
    assert counts(index, patterns, True) == want
    assert counts(index, patterns, False) == want
    return index


sequence = st.text(alphabet=BASES, min_size=1, max_size=200)
repeat_rich = st.builds(
    lambda unit, times, tail: (unit * times + tail),
    st.text(alphabet=BASES, min_size=1, max_size=4),
    st.integers(1, 60),
    st.text(alphabet="ACGTN", max_size=10),
)
pattern = st.text(alphabet=BASES, min_size=1, max_size=70)


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seqs=st.lists(st.one_of(sequence, repeat_rich), min_size=1, max_size=3),
    extra=st.lists(pattern, min_size=1, max_size=8),
    k=st.sampled_from([3, 8, 21]),
    data=st.data(),
)
def test_counts_match_direct_scan(seqs, extra, k, data):
    records = [(f"r{i}", s.encode()) for i, s in enumerate(seqs)]
    # Substrings (present), the last bases of each record (end of text / record boundary),
    # strings spanning two records (must not match across the separator) and random ones.
    present = []
    for _, seq in records:
        s = seq.decode()
        a = data.draw(st.integers(0, len(s) - 1))
        b = data.draw(st.integers(a + 1, len(s)))
        present += [s[a:b], s[-min(len(s), 5):], s[-1]]
    spanning = [seqs[i][-3:] + seqs[i + 1][:3] for i in range(len(seqs) - 1)]
    patterns = [p for p in present + spanning + extra if p and "N" not in p]
    check(records, patterns, k)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.one_of(sequence, repeat_rich), extra=st.lists(pattern, min_size=1, max_size=5))
def test_counts_match_direct_scan_quick(seq, extra):
    records = [("r", seq.encode())]
    s = seq.replace("N", "")
    patterns = [p for p in [s[:3], s[-4:], s[-1:], *extra] if p]
    check(records, patterns, 8)


def test_long_patterns_and_repeats():
    rng = np.random.default_rng(3)
    unit = "".join(rng.choice(list(BASES), 37))
    genome = unit * 9 + "".join(rng.choice(list(BASES), 500)) + unit * 3
    records = [("chrA", genome.encode()), ("chrB", (unit[:20] + "N" + unit[20:]).encode())]
    patterns = [unit, unit * 2, unit[:33], genome[-101:], genome[100:201], unit[:20], unit[19:22], "A" * 40]
    check(records, patterns, 21)


def test_absent_and_case():
    records = [("x", b"acgtACGTnnACGT")]
    index = check(records, ["ACGTACGT", "GTAC", "TTTT", "CGTA", "ACGTN"[:4]], 4)
    assert index.non_acgt_count == 2
    assert counts(index, ["acgt"]) == [3]


def test_locate_positions():
    records = [("a", b"GATTACA"), ("b", b"TTACAGATTACA")]
    index = ix.build_index(records, k=3)
    lo, hi = ix.count(ix.prepare(index), ix.encode_patterns(["TTACA", "GATTACA", "CC"]))
    assert ix.locate(index, lo, hi) == [[("a", 2), ("b", 0), ("b", 7)], [("a", 0), ("b", 5)], []]


def test_text_packing_round_trip():
    codes = suffix_array.encode_text([("a", b"ACGTNacgt" * 9), ("b", b"T")]).codes
    words, breaks = suffix_array.pack_text(codes)
    assert np.array_equal(suffix_array.unpack_text(words, breaks, len(codes)), codes)


def test_model_bounds_hold_for_every_kmer():
    rng = np.random.default_rng(0)
    genome = "".join(rng.choice(list(BASES), 20000)).encode()
    index = ix.build_index([("g", genome)], k=10)
    model = index.model
    x, y = ix.learned.kmer_points(index.sorted_keys, model.k)
    err = ix.learned.predict(model, x) - y
    assert err.max() <= model.error_max and err.min() >= model.error_min
    assert model.nbytes <= max(0.01 * index.suffix_array.nbytes, 1024)


@pytest.mark.parametrize(
    "bad, message",
    [(["ACGT", ""], "line 2: empty pattern"), (["ACNT"], "line 1: pattern has 'N' at position 3")],
)
def test_invalid_patterns(bad, message):
    with pytest.raises(InputError, match=message):
        ix.encode_patterns(bad, source="q.txt")


def test_fasta_errors(tmp_path):
    path = tmp_path / "g.fa"
    path.write_text("ACGT\n>x\nAC\n")
    with pytest.raises(InputError, match="line 1: sequence before the first"):
        ix.read_fasta(str(path))
    path.write_text(">x\nAC\n>x\nGT\n")
    with pytest.raises(InputError, match="line 3: duplicate record name 'x'"):
        ix.read_fasta(str(path))
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        ix.read_fasta(str(path))


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(1)
    records = [("c1", "".join(rng.choice(list(BASES), 3000)).encode()), ("c2", b"ACGTNNACGT")]
    index = ix.build_index(records, k=8)
    path = tmp_path / "g.pjx"
    ix.save_index(str(path), index)
    return path, index, records


def test_file_round_trip(saved):
    path, index, records = saved
    loaded = ix.load_index(str(path))
    assert np.array_equal(loaded.suffix_array, index.suffix_array)
    assert loaded.record_names == index.record_names
    assert np.array_equal(loaded.model.knot_keys, index.model.knot_keys)
    patterns = [records[0][1][100:130].decode(), "ACGT", "TTTTTTTTTT"]
    assert counts(loaded, patterns) == [oracle(records, p.encode()) for p in patterns]


def test_file_refuses_truncated_corrupted_foreign(saved, tmp_path):
    path, index, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "bad.pjx"
    cases = [
        (data[: len(data) // 2], "truncated"),
        (data[:5], "truncated"),
        (data + b"x", "trailing"),
        (b"NOTANIDX" + data[8:], "bad magic"),
        (data[:8] + (99).to_bytes(4, "little") + data[12:], "version 99"),
    ]
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    cases.append((bytes(flipped), "checksum"))
    for blob, message in cases:
        bad.write_bytes(blob)
        with pytest.raises(InputError, match=message) as err:
            ix.load_index(str(bad))
        assert "bad.pjx" in str(err.value)


def test_file_refuses_mismatched_suffix_array(saved, tmp_path):
    _, index, _ = saved
    sa = index.suffix_array.copy()
    sa[[10, 20]] = sa[[20, 10]]
    wrong = index._replace(suffix_array=sa)
    path = tmp_path / "wrong.pjx"
    ix.save_index(str(path), wrong)  # checksum is valid: the contents disagree
    with pytest.raises(InputError, match="does not match the text"):
        ix.load_index(str(path))


def test_cli_end_to_end(tmp_path, capsys):
    genome = tmp_path / "g.fa.gz"
    with gzip.open(genome, "wt") as handle:
        handle.write(">one first\nGATTACAGATTACA\n>two\nCCGATTNNACA\n")
    out = tmp_path / "g.pjx"
    assert main(["index", "build", str(genome), "-o", str(out), "--json", "--k", "4"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"sa_bytes", "model_bytes", "text_bytes", "seconds"} <= summary.keys()
    assert summary["sa_bytes"] == 4 * (14 + 11 + 2)
    queries = tmp_path / "q.fa"
    queries.write_text(">q1\nGATTA\n>q2\nACA\n>q3\nTTNN\n")
    hits = tmp_path / "hits.tsv"
    assert main(["index", "query", str(out), str(queries), "-o", str(hits), "--json"]) == 2
    assert "q.fa, line 6: pattern has 'N'" in capsys.readouterr().err
    queries.write_text(">q1\nGATTA\n>q2\nACA\n>q3\nTTAA\n")
    for flags in ([], ["--no-model"]):
        argv = ["index", "query", str(out), str(queries), "-o", str(hits), "--json", "--locate"]
        assert main(argv + flags) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["queries"] == 3 and summary["seconds"] >= 0
        rows = [line.split("\t") for line in hits.read_text().splitlines()]
        assert rows[0] == ["query", "length", "count", "positions"]
        assert rows[1:] == [
            ["q1", "5", "2", "one:0,one:7"],
            ["q2", "3", "3", "one:4,one:11,two:8"],
            ["q3", "4", "0", ""],
        ]
    plain = tmp_path / "q.txt"
    plain.write_text("ACA\n\nGAT\n")
    assert main(["index", "query", str(out), str(plain), "-o", str(hits)]) == 2
    assert "q.txt, line 2: empty line" in capsys.readouterr().err
    broken = tmp_path / "broken.pjx"
    broken.write_bytes(pathlib.Path(out).read_bytes()[:-40])
    assert main(["index", "query", str(broken), str(queries), "-o", str(hits)]) == 2
    assert "truncated" in capsys.readouterr().err
