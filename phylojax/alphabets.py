"""Character alphabets: nucleotides with IUPAC ambiguity, and codons under NCBI genetic codes.

Encoders turn an :class:`~phylojax.io.Alignment` into numpy arrays (tip partial vectors or
bitsets) and validate every symbol, naming taxon, line and column of the first bad one.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

from .errors import input_error
from .io import NUCLEOTIDE_SYMBOLS, Alignment, _fasta_line_of, check_symbols

NUCLEOTIDES = "ACGT"

# IUPAC code -> bitset over A=1, C=2, G=4, T=8 (DESIGN.md section 4).
IUPAC_BITS: dict[str, int] = {
    "A": 1, "C": 2, "G": 4, "T": 8, "U": 8,
    "R": 1 | 4, "Y": 2 | 8, "S": 2 | 4, "W": 1 | 8, "K": 4 | 8, "M": 1 | 2,
    "B": 2 | 4 | 8, "D": 1 | 4 | 8, "H": 1 | 2 | 8, "V": 1 | 2 | 4,
    "N": 15, "-": 15, "?": 15, "X": 15,
}  # fmt: skip

_BIT_TABLE = np.zeros(256, dtype=np.uint8)
for _symbol, _bits in IUPAC_BITS.items():
    _BIT_TABLE[ord(_symbol)] = _bits
    _BIT_TABLE[ord(_symbol.lower())] = _bits


def _as_bytes(sequences) -> np.ndarray:
    return np.frombuffer("".join(sequences).encode("ascii", "replace"), dtype=np.uint8).reshape(
        len(sequences), -1
    )


def nucleotide_bitsets(aln: Alignment) -> np.ndarray:
    """``uint8[taxon, site]`` bitsets (A=1, C=2, G=4, T=8; ambiguity codes are unions)."""
    check_symbols(aln, NUCLEOTIDE_SYMBOLS, "nucleotide")
    return _BIT_TABLE[_as_bytes(aln.sequences)]


def bits_to_partials(bits: np.ndarray) -> np.ndarray:
    """``float64[..., 4]`` indicator vectors from bitsets."""
    return ((bits[..., None] >> np.arange(4, dtype=np.uint8)) & 1).astype(np.float64)


def nucleotide_partials(aln: Alignment) -> np.ndarray:
    """``float64[taxon, site, 4]`` tip partials: one-hot, several ones for ambiguity, all ones for
    gaps and unknowns (the usual 'missing data' convention of IQ-TREE, PAML and BEAGLE)."""
    return bits_to_partials(nucleotide_bitsets(aln))


# ------------------------------------------------------------------------------------- codons
@functools.cache
def genetic_code(code: int | str = 1) -> tuple[tuple[str, ...], dict[str, str], frozenset[str]]:
    """Sense codons (ACGT-lexicographic), codon -> amino acid, and stop codons of an NCBI table.

    ``code`` is an NCBI table id (1 = Universal) or a name known to ``Bio.Data.CodonTable``
    ("Standard", "Vertebrate Mitochondrial", ...; HyPhy's "Universal" is accepted for 1).
    """
    from Bio.Data import CodonTable

    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    if isinstance(code, str) and code.lower() == "universal":
        code = 1
    try:
        table = (
            CodonTable.unambiguous_dna_by_id[code]
            if isinstance(code, int)
            else CodonTable.unambiguous_dna_by_name[code]
        )
    except KeyError:
        known = ", ".join(f"{k} ({v.names[0]})" for k, v in CodonTable.unambiguous_dna_by_id.items())
        raise input_error(f"unknown genetic code {code!r}; known NCBI tables: {known}") from None
    all_codons = ["".join(c) for c in itertools.product(NUCLEOTIDES, repeat=3)]
    sense = tuple(c for c in all_codons if c in table.forward_table)
    return sense, dict(table.forward_table), frozenset(table.stop_codons)


def codon_index_arrays(code: int | str = 1) -> np.ndarray:
    """``int[sense, 3]`` nucleotide indices (A0 C1 G2 T3) of each sense codon."""
    sense, _, _ = genetic_code(code)
    return np.array([[NUCLEOTIDES.index(b) for b in c] for c in sense], dtype=np.int64)


def codon_partials(aln: Alignment, code: int | str = 1) -> np.ndarray:
    """``float64[taxon, codon_site, sense_count]`` tip vectors for a codon alignment.

    Each codon's vector is the indicator of the sense codons compatible with its IUPAC-resolved
    bases (``-``, ``N``, ``?`` are any base, so ``---`` is missing data and ``TG-`` reads as
    ``TGN``). A fully resolved stop codon, or an ambiguous codon compatible with no sense codon,
    is an error naming taxon and codon; so is a length not divisible by 3.
    """
    check_symbols(aln, NUCLEOTIDE_SYMBOLS, "nucleotide")
    if aln.site_count % 3:
        raise input_error(
            f"alignment length {aln.site_count} is not divisible by 3 (not a codon alignment)",
            file=aln.source,
        )
    bits = nucleotide_bitsets(aln).reshape(aln.taxon_count, -1, 3)  # taxon, codon, position
    triplet_sets = bits[..., 0] | (bits[..., 1].astype(np.uint16) << 4) | (bits[..., 2].astype(np.uint16) << 8)
    compatible = _codon_compatibility(code)[triplet_sets]  # taxon, codon, sense
    empty = ~compatible.any(axis=-1)
    if empty.any():
        t, c = map(int, np.argwhere(empty)[0])
        triplet = aln.sequences[t][3 * c : 3 * c + 3]
        kind = "stop codon" if all(b in "ACGTU" for b in triplet) else "codon compatible only with stops"
        raise input_error(
            f"in-frame {kind} {triplet} at codon {c + 1}",
            file=aln.source,
            line=_fasta_line_of(aln, t, 3 * c),
            taxon=aln.names[t],
            column=3 * c + 1,
        )
    return compatible.astype(np.float64)


@functools.cache
def _codon_compatibility(code: int | str = 1) -> np.ndarray:
    """``bool[4096, sense]``: for the three positions' base sets packed as 4-bit fields
    (``first | second << 4 | third << 8``), which sense codons they allow (a table instead of
    comparing every codon of the alignment with every sense codon: HIV_RT 10x faster)."""
    sets = np.arange(4096)
    fields = np.stack([sets & 15, (sets >> 4) & 15, sets >> 8], axis=-1)  # set, position
    base_bits = 1 << codon_index_arrays(code)  # sense, position
    return np.all((fields[:, None, :] & base_bits[None]) != 0, axis=-1)
