"""The on-disk index file (format version 1).

Layout (all integers little-endian)::

    offset 0   8 bytes   magic  b"PJXSAIDX"
    offset 8   uint32    format version (1)
    offset 12  uint32    header length H
    offset 16  H bytes   header: UTF-8 JSON (text length, records, model scalars, section table,
                         SHA-256 of the packed text), zero-padded to a multiple of 8
    ...        sections  raw little-endian arrays at the offsets the section table gives:
                         words (uint64), breaks (uint32), suffix_array (int32 or int64),
                         knot_keys (uint32), knot_ranks (int32 or int64), radix_table (int32)
    last 32    bytes     SHA-256 of every byte before it

The 32-base keys in suffix-array order are not stored; :func:`load_index` derives them from the
text and the suffix array (~0.2 s for E. coli) and, as it does so, checks that they are sorted,
which refuses a suffix array that belongs to another text. Truncated, corrupted (checksum),
foreign (magic), newer (version) or inconsistent files raise :class:`InputError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from ..errors import input_error
from . import learned
from .search import SuffixIndex, derive_keys

MAGIC = b"PJXSAIDX"
FORMAT_VERSION = 1
_PREFIX = 16
_DIGEST = 32


def _text_digest(words: np.ndarray, breaks: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(words, dtype="<u8").tobytes())
    digest.update(np.ascontiguousarray(breaks, dtype="<u4").tobytes())
    return digest.hexdigest()


def save_index(path: str, index: SuffixIndex) -> int:
    """Write ``index`` to ``path``; returns the file size in bytes."""
    arrays = {
        "words": np.ascontiguousarray(index.words, dtype="<u8"),
        "breaks": np.ascontiguousarray(index.breaks, dtype="<u4"),
        "suffix_array": np.ascontiguousarray(index.suffix_array, dtype=index.suffix_array.dtype.newbyteorder("<")),
    }
    model = None
    if index.model is not None:
        m = index.model
        rank_dtype = "<i4" if int(m.knot_ranks[-1]) < 2**31 else "<i8"
        arrays["knot_keys"] = np.ascontiguousarray(m.knot_keys, dtype="<u4")
        arrays["knot_ranks"] = np.ascontiguousarray(m.knot_ranks, dtype=rank_dtype)
        arrays["radix_table"] = np.ascontiguousarray(m.radix_table, dtype="<i4")
        model = {
            "k": m.k,
            "key_bits": m.key_bits,
            "radix_bits": m.radix_bits,
            "segment_steps": m.segment_steps,
            "error_max": m.error_max,
            "error_min": m.error_min,
            "error_p95": m.error_p95,
            "epsilon": m.epsilon,
        }
    header = {
        "format": "phylojax suffix-array index",
        "text_length": int(index.text_length),
        "record_names": list(index.record_names),
        "record_starts": [int(v) for v in index.record_starts],
        "record_lengths": [int(v) for v in index.record_lengths],
        "non_acgt_count": int(index.non_acgt_count),
        "text_sha256": _text_digest(index.words, index.breaks),
        "model": model,
        "sections": [],
    }
    # Offsets depend on the header's own length: lay out twice with the final header size.
    for _ in range(3):
        blob = json.dumps(header, sort_keys=True).encode()
        header_length = len(blob) + (-len(blob)) % 8
        offset = _PREFIX + header_length
        sections = []
        for name, array in arrays.items():
            sections.append(
                {"name": name, "dtype": array.dtype.str, "length": int(array.size), "offset": offset}
            )
            offset += array.nbytes + (-array.nbytes) % 8
        if sections == header["sections"]:
            break
        header["sections"] = sections
    blob = json.dumps(header, sort_keys=True).encode()
    blob += b"\0" * ((-len(blob)) % 8)
    digest = hashlib.sha256()
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        def write(data: bytes) -> None:
            digest.update(data)
            handle.write(data)

        write(MAGIC + np.array([FORMAT_VERSION, len(blob)], dtype="<u4").tobytes() + blob)
        for array in arrays.values():
            data = array.tobytes()
            write(data + b"\0" * ((-len(data)) % 8))
        handle.write(digest.digest())
    os.replace(tmp, path)
    return os.path.getsize(path)


def load_index(path: str) -> SuffixIndex:
    """Read, verify and return the index at ``path`` (see the module docstring for the checks)."""
    with open(path, "rb") as handle:
        data = handle.read()
    size = len(data)
    if data[: len(MAGIC)] != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(data):
            raise input_error(f"truncated index file ({size} bytes)", file=path)
        raise input_error("not a phylojax suffix-array index (bad magic number)", file=path)
    if size < _PREFIX + _DIGEST:
        raise input_error(f"truncated index file ({size} bytes)", file=path)
    version, header_length = np.frombuffer(data, dtype="<u4", count=2, offset=len(MAGIC)).tolist()
    if version != FORMAT_VERSION:
        raise input_error(
            f"index format version {version}; this phylojax reads version {FORMAT_VERSION} "
            "(rebuild the index with 'phylojax index build')",
            file=path,
        )
    checksum_ok = hashlib.sha256(data[:-_DIGEST]).digest() == data[-_DIGEST:]
    if _PREFIX + header_length + _DIGEST > size:
        raise input_error(f"truncated index file ({size} bytes; the header alone needs more)", file=path)
    try:
        header = json.loads(data[_PREFIX : _PREFIX + header_length].rstrip(b"\0"))
        sections = {s["name"]: s for s in header["sections"]}
        expected = max(
            s["offset"] + s["length"] * np.dtype(s["dtype"]).itemsize for s in sections.values()
        )
        expected += (-expected) % 8 + _DIGEST
    except (ValueError, KeyError, TypeError) as err:
        reason = "checksum mismatch" if not checksum_ok else f"unreadable header: {err}"
        raise input_error(f"corrupted index file ({reason})", file=path) from err
    if size < expected:
        raise input_error(f"truncated index file ({size} bytes, expected {expected})", file=path)
    if size > expected:
        raise input_error(f"corrupted index file ({size - expected} unexpected trailing bytes)", file=path)
    if not checksum_ok:
        raise input_error("corrupted index file (checksum mismatch)", file=path)

    def section(name: str) -> np.ndarray:
        s = sections[name]
        return np.frombuffer(data, dtype=np.dtype(s["dtype"]), count=s["length"], offset=s["offset"]).astype(
            np.dtype(s["dtype"]).newbyteorder("=")
        )

    try:
        n = int(header["text_length"])
        words, breaks, sa = section("words"), section("breaks"), section("suffix_array")
        record_starts = np.asarray(header["record_starts"], dtype=np.int64)
        record_lengths = np.asarray(header["record_lengths"], dtype=np.int64)
        record_names = tuple(header["record_names"])
        word_count = -(-n // 32) + 2
        problems = []
        if len(sa) != n:
            problems.append(f"suffix array has {len(sa)} entries for a text of {n}")
        if len(words) != word_count or len(breaks) != word_count:
            problems.append(f"packed text has {len(words)} words for a text of {n}")
        if not (len(record_names) == len(record_starts) == len(record_lengths)) or int(
            record_lengths.sum() + len(record_lengths)
        ) != n:
            problems.append("record table does not add up to the text length")
        if _text_digest(words, breaks) != header["text_sha256"]:
            problems.append("packed text does not match its recorded SHA-256")
        model = None
        if header["model"] is not None:
            h = header["model"]
            model = learned.LearnedModel(
                k=int(h["k"]),
                key_bits=int(h["key_bits"]),
                radix_bits=int(h["radix_bits"]),
                segment_steps=int(h["segment_steps"]),
                knot_keys=section("knot_keys"),
                knot_ranks=section("knot_ranks").astype(np.int64),
                radix_table=section("radix_table"),
                error_max=float(h["error_max"]),
                error_min=float(h["error_min"]),
                error_p95=float(h["error_p95"]),
                epsilon=float(h["epsilon"]),
            )
            if len(model.radix_table) != 2**model.radix_bits + 1 or len(model.knot_keys) < 2:
                problems.append("learned model tables have inconsistent sizes")
    except (ValueError, KeyError, TypeError) as err:
        raise input_error(f"inconsistent index header: {err}", file=path) from err
    if problems:
        raise input_error("inconsistent index: " + "; ".join(problems), file=path)
    if n and (sa.min() < 0 or sa.max() >= n):
        raise input_error("suffix array holds positions outside the text", file=path)
    keys, lengths = derive_keys(words, breaks, sa)
    if np.any(keys[1:] < keys[:-1]):
        raise input_error("suffix array does not match the text (suffixes out of order)", file=path)
    return SuffixIndex(
        text_length=n,
        words=words,
        breaks=breaks,
        suffix_array=sa,
        sorted_keys=keys,
        key_lengths=lengths,
        model=model,
        record_names=record_names,
        record_starts=record_starts,
        record_lengths=record_lengths,
        non_acgt_count=int(header["non_acgt_count"]),
    )
