"""Genome text, 2-bit packing and the suffix array (build-time work, numpy only).

Text model
----------
A genome FASTA with one or more records becomes one *text* of symbol codes::

    A=0, C=1, G=2, T=3, BREAK=4

Records are concatenated with one BREAK between them and one BREAK at the very end. Every symbol
that is not A/C/G/T (``N``, IUPAC ambiguity codes, ``-``, ``*``) also becomes a BREAK; lower-case
(soft-masked) bases are upper-cased first and *are* searchable. Queries may only contain A/C/G/T,
so no query can match a BREAK: a hit never spans two records, an ``N`` run or the end of the text.
BREAK sorts after T, which is the order ``pydivsufsort`` gives to byte 4, so the suffix array, the
packed keys and the comparisons in :mod:`phylojax.index.search` all agree.

Packing
-------
``words`` holds 32 bases per ``uint64``, first base in the two most significant bits, BREAK stored
as T (``3``). ``breaks`` holds one bit per position, 32 per ``uint32``, first position in the most
significant bit. Both are padded with two extra words of BREAK so that a 32-base window starting
anywhere in the text can be read from two consecutive words.

A 32-base *key* of a suffix is its first 32 bases packed like one word, where every base from the
first BREAK on is replaced by T; ``L`` (0..32) is the number of bases before that first BREAK. In
suffix-array order the keys are non-decreasing, and (key, L) decides every comparison with an
A/C/G/T pattern of up to 32 bases exactly (see :func:`phylojax.index.search`).
"""

from __future__ import annotations

import gzip
from typing import NamedTuple

import numpy as np

from ..errors import input_error

BREAK = 4
_CODES = np.full(256, BREAK, dtype=np.uint8)
for _i, _c in enumerate(b"ACGT"):
    _CODES[_c] = _i
    _CODES[_c + 32] = _i  # lower case
_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


class Text(NamedTuple):
    """A genome as one array of symbol codes plus its record table.

    codes: uint8[n] in 0..4 (BREAK=4), ends with BREAK; n = sum(record_lengths) + record_count.
    record_names: tuple[str, ...] of length record_count.
    record_starts: int64[record_count], text position of each record's first base.
    record_lengths: int64[record_count].
    non_acgt_count: how many input symbols (not separators) were turned into BREAK.
    """

    codes: np.ndarray
    record_names: tuple
    record_starts: np.ndarray
    record_lengths: np.ndarray
    non_acgt_count: int


def _open_text(path: str):
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_fasta(path: str) -> list[tuple[str, bytes]]:
    """Records ``(name, sequence bytes)`` of a (optionally gzipped) FASTA file.

    Raises :class:`InputError` naming the file and line for an empty file, sequence before the
    first ``>`` header, an empty header, duplicate record names or a record without sequence.
    """
    records: list[tuple[str, list[bytes], int]] = []
    try:
        with _open_text(path) as handle:
            for line_no, raw in enumerate(handle, start=1):
                line = raw.strip()
                if not line:
                    continue
                if line.startswith(b">"):
                    name = line[1:].split(maxsplit=1)[0].decode("utf-8", "replace") if line[1:].strip() else ""
                    if not name:
                        raise input_error("FASTA header without a record name", file=path, line=line_no)
                    records.append((name, [], line_no))
                elif not records:
                    raise input_error(
                        "sequence before the first '>' header; is this a FASTA file?",
                        file=path,
                        line=line_no,
                    )
                else:
                    records[-1][1].append(line)
    except (OSError, EOFError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise input_error(f"cannot read FASTA: {err}", file=path) from err
    if not records:
        raise input_error("no FASTA records (the file is empty)", file=path)
    seen: dict[str, int] = {}
    out = []
    for name, chunks, line_no in records:
        if name in seen:
            raise input_error(
                f"duplicate record name '{name}' (first at line {seen[name]})", file=path, line=line_no
            )
        seen[name] = line_no
        seq = b"".join(chunks)
        if not seq:
            raise input_error(f"record '{name}' has no sequence", file=path, line=line_no)
        out.append((name, seq))
    return out


def encode_text(records: list[tuple[str, bytes]]) -> Text:
    """Concatenate records into one BREAK-separated code array (see the module docstring)."""
    if not records:
        raise input_error("no records to index")
    parts = []
    starts = []
    lengths = []
    non_acgt = 0
    position = 0
    sep = np.array([BREAK], dtype=np.uint8)
    for _, seq in records:
        raw = np.frombuffer(seq, dtype=np.uint8)
        codes = _CODES[raw]
        non_acgt += int(np.count_nonzero(codes == BREAK))
        parts.extend([codes, sep])
        starts.append(position)
        lengths.append(len(raw))
        position += len(raw) + 1
    return Text(
        codes=np.concatenate(parts),
        record_names=tuple(name for name, _ in records),
        record_starts=np.asarray(starts, dtype=np.int64),
        record_lengths=np.asarray(lengths, dtype=np.int64),
        non_acgt_count=non_acgt,
    )


def pack_text(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2-bit pack ``codes`` (uint8[n]).

    Returns ``words`` uint64[ceil(n/32) + 2] (BREAK stored as T) and ``breaks``
    uint32[ceil(n/32) + 2] (bit set = BREAK), both padded with BREAK words.
    """
    n = len(codes)
    word_count = -(-n // 32) + 2
    padded = np.full(word_count * 32, BREAK, dtype=np.uint8)
    padded[:n] = codes
    is_break = padded == BREAK
    bases = np.where(is_break, 3, padded).astype(np.uint64).reshape(word_count, 32)
    shifts = (2 * (31 - np.arange(32))).astype(np.uint64)
    words = np.bitwise_or.reduce(bases << shifts, axis=1)
    bit_shifts = (31 - np.arange(32)).astype(np.uint32)
    breaks = np.bitwise_or.reduce(
        is_break.reshape(word_count, 32).astype(np.uint32) << bit_shifts, axis=1
    ).astype(np.uint32)
    return words.astype(np.uint64), breaks


def unpack_text(words: np.ndarray, breaks: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_text`: uint8[n] codes."""
    shifts = (2 * (31 - np.arange(32))).astype(np.uint64)
    bases = ((words[:, None] >> shifts) & np.uint64(3)).astype(np.uint8).reshape(-1)
    bit_shifts = (31 - np.arange(32)).astype(np.uint32)
    is_break = ((breaks[:, None] >> bit_shifts) & np.uint32(1)).astype(bool).reshape(-1)
    return np.where(is_break, BREAK, bases).astype(np.uint8)[:n]


def build_suffix_array(codes: np.ndarray) -> np.ndarray:
    """Suffix array of ``codes`` (uint8[n]) with pydivsufsort: int32[n] if n < 2**31 else int64[n]."""
    import pydivsufsort

    sa = pydivsufsort.divsufsort(np.ascontiguousarray(codes, dtype=np.uint8))
    dtype = np.int32 if len(codes) < 2**31 else np.int64
    return np.asarray(sa, dtype=dtype)


def _bit_length32(x: np.ndarray) -> np.ndarray:
    """Bit length of uint32 values (0 for 0), exact via float64 exponents."""
    _, exponent = np.frexp(x.astype(np.float64))
    return exponent.astype(np.int64)


def keys_at(words: np.ndarray, breaks: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """32-base keys and BREAK-free lengths of the suffixes starting at ``positions`` (numpy).

    positions: int[q] in [0, n). Returns ``keys`` uint64[q] (bases from the first BREAK on read as
    T) and ``lengths`` uint8[q] in 0..32 (bases before the first BREAK, 32 if none in the window).
    The JAX twin used inside the query kernel is :func:`phylojax.index.search._keys_at`.
    """
    positions = np.asarray(positions, dtype=np.int64)
    w = positions >> 5
    offset = (positions & 31).astype(np.uint64)
    shift = np.uint64(2) * offset
    high = words[w] << shift
    # A shift by 64 is undefined, so the second word only contributes when offset > 0.
    low = np.where(offset == 0, np.uint64(0), words[w + 1] >> (np.uint64(64) - np.maximum(shift, 1)))
    keys = high | low
    pair = (breaks[w].astype(np.uint64) << np.uint64(32)) | breaks[w + 1].astype(np.uint64)
    mask = ((pair << offset) >> np.uint64(32)) & np.uint64(0xFFFFFFFF)
    lengths = 32 - _bit_length32(mask)
    fill_shift = np.uint64(2) * np.minimum(lengths, 31).astype(np.uint64)
    fill = np.where(lengths < 32, _ALL_ONES >> fill_shift, np.uint64(0))
    return keys | fill, lengths.astype(np.uint8)
