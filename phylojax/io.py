"""Reading alignments and trees: the only module that turns text into records.

Biopython does the parsing (``Bio.SeqIO``/``Bio.AlignIO`` for FASTA and PHYLIP, ``Bio.Nexus`` for
NEXUS, ``Bio.Phylo`` for Newick); this module adds what users need on top: universal line endings,
format detection, and :class:`~phylojax.errors.InputError` messages that name the file, line,
taxon and column of every problem.
"""

from __future__ import annotations

import dataclasses
import io as _io
import math
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from .errors import InputError, input_error
from .tree import Tree

# Nucleotide symbols accepted in alignments (upper case); U is read as T. '.' is rejected because
# its meaning (gap vs "same as the first sequence") differs between programs.
NUCLEOTIDE_SYMBOLS = frozenset("ACGTURYSWKMBDHVN-?X")


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Aligned sequences as read from a file.

    Attributes:
        names: taxon names in file order.
        sequences: upper-case sequences (U already read as T), all the same length.
        source: file name for error messages.
        lines: 1-based line on which each taxon's sequence starts (``None`` when unknown).
        partitions: NEXUS CHARSETs, name -> sorted 0-based column indices.
        trees: trees embedded in a NEXUS TREES block as ``(name, newick)`` pairs.
    """

    names: tuple[str, ...]
    sequences: tuple[str, ...]
    source: str = "<alignment>"
    lines: tuple[int | None, ...] = ()
    partitions: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    trees: tuple[tuple[str, str], ...] = ()

    @property
    def taxon_count(self) -> int:
        return len(self.names)

    @property
    def site_count(self) -> int:
        return len(self.sequences[0]) if self.sequences else 0

    def line_of(self, taxon_index: int) -> int | None:
        return self.lines[taxon_index] if taxon_index < len(self.lines) else None

    def error(self, message: str, taxon_index: int | None = None, column: int | None = None):
        """An :class:`InputError` located at a taxon (and 1-based column) of this alignment."""
        return input_error(
            message,
            file=self.source,
            line=None if taxon_index is None else self.line_of(taxon_index),
            taxon=None if taxon_index is None else self.names[taxon_index],
            column=column,
        )

    def select_columns(self, columns: Sequence[int]) -> Alignment:
        cols = np.asarray(columns, dtype=np.int64)
        seqs = tuple("".join(np.asarray(list(s))[cols]) for s in self.sequences)
        return dataclasses.replace(self, sequences=seqs, partitions={})


# ---------------------------------------------------------------------------------------- text
def _read_text(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", newline=None) as handle:  # '\r', '\r\n' -> '\n'
            text = handle.read()
    except UnicodeDecodeError as err:
        raise input_error(f"not a text file ({err.reason} at byte {err.start})", file=path) from None
    except IsADirectoryError:
        raise input_error("is a directory, expected a file", file=path) from None
    return text


def detect_format(text: str) -> str:
    stripped = text.lstrip()
    if stripped.startswith(">"):
        return "fasta"
    if stripped[:6].upper() == "#NEXUS":
        return "nexus"
    first = stripped.splitlines()[0].split() if stripped else []
    if len(first) >= 2 and first[0].isdigit() and first[1].isdigit():
        return "phylip"
    return "unknown"


# ---------------------------------------------------------------------------------------- FASTA
def _parse_fasta(text: str, source: str) -> Alignment:
    names: list[str] = []
    chunks: list[list[str]] = []
    header_lines: list[int] = []
    # (taxon index, first column on that line, line number) to map columns back to lines.
    line_map: list[list[tuple[int, int]]] = []
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            name = line[1:].strip()
            if not name:
                raise input_error("empty sequence name", file=source, line=lineno)
            names.append(name.split()[0] if name.split() else name)
            chunks.append([])
            header_lines.append(lineno)
            line_map.append([])
            continue
        if not names:
            raise input_error("sequence data before the first '>' header", file=source, line=lineno)
        piece = "".join(line.split())
        line_map[-1].append((sum(len(c) for c in chunks[-1]), lineno))
        chunks[-1].append(piece)
    aln = Alignment(
        names=tuple(names),
        sequences=tuple("".join(c).upper() for c in chunks),
        source=source,
        lines=tuple(header_lines),
    )
    object.__setattr__(aln, "_line_map", line_map)
    return aln


def _fasta_line_of(aln: Alignment, taxon: int, column0: int) -> int | None:
    line_map = getattr(aln, "_line_map", None)
    if not line_map:
        return aln.line_of(taxon)
    line = aln.line_of(taxon)
    for start, lineno in line_map[taxon]:
        if start <= column0:
            line = lineno
    return line


# ---------------------------------------------------------------------------------------- PHYLIP
def _parse_phylip(text: str, source: str) -> Alignment:
    from Bio import AlignIO

    header = text.lstrip().splitlines()[0].split()
    ntax, nchar = int(header[0]), int(header[1])
    errors = []
    for fmt in ("phylip-relaxed", "phylip"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                records = list(AlignIO.read(_io.StringIO(text), fmt))
            break
        except Exception as err:  # Biopython raises ValueError with its own text
            errors.append(str(err))
    else:
        raise input_error(f"cannot read PHYLIP: {errors[-1]}", file=source)
    names = tuple(r.id for r in records)
    seqs = tuple(str(r.seq).upper() for r in records)
    if len(names) != ntax:
        raise input_error(f"header says {ntax} taxa, found {len(names)}", file=source, line=1)
    lines = tuple(_find_name_line(text, n) for n in names)
    aln = Alignment(names=names, sequences=seqs, source=source, lines=lines)
    for i, s in enumerate(seqs):
        if len(s) != nchar:
            raise aln.error(f"header says {nchar} sites, sequence has {len(s)}", i)
    return aln


def _find_name_line(text: str, name: str) -> int | None:
    pattern = re.compile(r"^\s*'?" + re.escape(name) + r"'?(\s|$)", re.MULTILINE)
    match = pattern.search(text)
    return text.count("\n", 0, match.start()) + 1 if match else None


# ---------------------------------------------------------------------------------------- NEXUS
def _parse_nexus(text: str, source: str) -> Alignment:
    from Bio.Nexus import Nexus

    # Bio.Nexus does not know HyPhy's private blocks; drop any block it cannot use.
    cleaned = re.sub(
        r"(?is)begin\s+(hyphy|assumptions_hyphy|paup|mrbayes|codons)\s*;.*?end\s*;", "", text
    )
    if re.search(r"(?i)\bnolabels\b", cleaned):
        cleaned = _label_nexus_matrix(cleaned, source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nex = Nexus.Nexus()
            nex.read(cleaned)
    except Exception as err:
        raise input_error(f"cannot read NEXUS: {err}", file=source) from None
    if not nex.matrix:
        raise input_error("NEXUS file has no CHARACTERS/DATA matrix", file=source)
    names = tuple(nex.taxlabels)
    seqs = tuple(str(nex.matrix[n]).upper() for n in names)
    partitions = {
        name: sorted(int(c) for c in cols) for name, cols in nex.charsets.items()
    } or _charsets(text, len(seqs[0]) if seqs else 0, source)
    # Trees are taken from the original text so that {labels} and support values survive.
    trees = tuple(_raw_nexus_trees(text))
    lines = tuple(_find_name_line(text, n) for n in names)
    return Alignment(names=names, sequences=seqs, source=source, lines=lines,
                     partitions=partitions, trees=trees)


def _label_nexus_matrix(text: str, source: str) -> str:
    """Bio.Nexus cannot read FORMAT NOLABELS: rewrite the matrix with TAXLABELS in front."""
    taxa = re.search(r"(?is)taxlabels(.*?);", text)
    nchar = re.search(r"(?is)nchar\s*=\s*(\d+)", text)
    matrix = re.search(r"(?is)(\bmatrix\b)(.*?);", text)
    if not (taxa and nchar and matrix):
        raise input_error("NOLABELS matrix without TAXLABELS/NCHAR", file=source)
    names = re.findall(r"'[^']*'|\S+", taxa.group(1))
    data = "".join(matrix.group(2).split())
    length = int(nchar.group(1))
    if len(data) != length * len(names):
        raise input_error(
            f"NOLABELS matrix has {len(data)} symbols, expected {len(names)} x {length}",
            file=source,
        )
    rows = "\n".join(
        f"{name} {data[i * length:(i + 1) * length]}" for i, name in enumerate(names)
    )
    text = text[: matrix.start(2)] + "\n" + rows + "\n" + text[matrix.end(2):]
    return re.sub(r"(?i)\bnolabels\b", "", text)


def _charsets(text: str, nchar: int, source: str) -> dict[str, list[int]]:
    """CHARSET name = 1-300 301-600\\3 ...; (1-based, inclusive, optional stride, '.' = end)."""
    sets: dict[str, list[int]] = {}
    for match in re.finditer(r"(?i)\bcharset\s+('?[^=\s']+'?)\s*=\s*([^;]*);", text):
        name, cols = match.group(1).strip("'"), set()
        for token in match.group(2).split():
            m = re.fullmatch(r"(\d+)(?:-(\d+|\.))?(?:\\(\d+))?", token)
            if not m:
                raise input_error(f"cannot read CHARSET {name} range {token!r}", file=source)
            start = int(m.group(1))
            end = nchar if m.group(2) == "." else int(m.group(2) or start)
            cols.update(range(start - 1, end, int(m.group(3) or 1)))
        sets[name] = sorted(cols)
    return sets


def _raw_nexus_trees(text: str) -> list[tuple[str, str]]:
    block = re.search(r"(?is)begin\s+trees\s*;(.*?)end\s*;", text)
    if not block:
        return []
    body = block.group(1)
    translate = {}
    tr = re.search(r"(?is)translate(.*?);", body)
    if tr:
        for entry in tr.group(1).split(","):
            parts = entry.split()
            if len(parts) >= 2:
                translate[parts[0]] = parts[1].strip("'")
    found = []
    for match in re.finditer(
        r"(?im)^\s*tree\s+([^=\s]+)\s*=\s*(?:\[[^\]]*\]\s*)*([^;\n]*)", body
    ):
        newick = match.group(2).strip() + ";"
        if translate:
            newick = re.sub(
                r"([(,])\s*([^(),:;\s]+)",
                lambda m: m.group(1) + translate.get(m.group(2), m.group(2)),
                newick,
            )
        found.append((match.group(1).strip("'"), newick))
    return found


# ---------------------------------------------------------------------------------------- public
def read_alignment(path: str | os.PathLike, format: str | None = None) -> Alignment:
    """Read an aligned FASTA, PHYLIP (strict or relaxed) or NEXUS file and validate it.

    Checks: non-empty, unique names, equal lengths. Symbols are validated by the encoders
    (:mod:`phylojax.alphabets`), which know whether the data are nucleotides or codons.
    """
    source = os.fspath(path)
    text = _read_text(source)
    if not text.strip():
        raise input_error("empty alignment file", file=source)
    fmt = format or detect_format(text)
    if fmt == "fasta":
        aln = _parse_fasta(text, source)
    elif fmt == "phylip":
        aln = _parse_phylip(text, source)
    elif fmt == "nexus":
        aln = _parse_nexus(text, source)
    else:
        raise input_error(
            "unrecognised alignment format (expected FASTA '>', PHYLIP 'ntax nchar' or #NEXUS)",
            file=source,
            line=1,
        )
    return validate_alignment(aln)


def validate_alignment(aln: Alignment) -> Alignment:
    if not aln.names:
        raise input_error("alignment has no sequences", file=aln.source)
    seen: dict[str, int] = {}
    for i, name in enumerate(aln.names):
        if name in seen:
            raise aln.error(f"duplicate taxon name (first seen as sequence {seen[name] + 1})", i)
        seen[name] = i
    length = len(aln.sequences[0])
    for i, seq in enumerate(aln.sequences):
        if len(seq) == 0:
            raise aln.error("empty sequence", i)
        if len(seq) != length:
            raise aln.error(
                f"sequence has {len(seq)} sites, the first sequence has {length}", i
            )
    return aln


def check_symbols(aln: Alignment, allowed: frozenset[str], what: str) -> None:
    """Raise naming taxon, line and column of the first symbol outside ``allowed``."""
    for i, seq in enumerate(aln.sequences):
        bad = set(seq) - allowed
        if bad:
            column0 = min(seq.index(c) for c in bad)
            line = _fasta_line_of(aln, i, column0)
            raise input_error(
                f"unknown {what} symbol {seq[column0]!r}",
                file=aln.source,
                line=line,
                taxon=aln.names[i],
                column=column0 + 1,
            )


# ---------------------------------------------------------------------------------------- trees
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _validate_newick(text: str, source: str) -> None:
    depth = 0
    quoted = False
    comment = 0
    for pos, ch in enumerate(text):
        if quoted:
            quoted = ch != "'"
            continue
        if comment:
            comment += ch == "["
            comment -= ch == "]"
            continue
        if ch == "'":
            quoted = True
        elif ch == "[":
            comment = 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise input_error(f"malformed Newick: unmatched ')' at position {pos + 1}", file=source)
        elif ch == ";" and text[pos + 1 :].strip():
            raise input_error(
                f"malformed Newick: text after ';' at position {pos + 2}", file=source
            )
    if quoted:
        raise input_error("malformed Newick: unterminated quoted name", file=source)
    if depth:
        raise input_error(
            f"malformed Newick: {depth} unclosed '(' at end of input (position {len(text)})",
            file=source,
        )
    unquoted = re.sub(r"'[^']*'|\[[^\]]*\]", lambda m: " " * len(m.group(0)), text)
    for match in re.finditer(r":\s*([^,():;\[\]{}\s]*)", unquoted):
        token = match.group(1)
        if not _NUMBER.match(token):
            raise input_error(
                f"malformed Newick: branch length {token!r} at position {match.start(1) + 1} "
                "is not a number >= 0",
                file=source,
            )
        if float(token) < 0:
            raise input_error(
                f"branch length {token} at position {match.start(1) + 1} must be >= 0",
                file=source,
            )
    if not text.rstrip().endswith(";"):
        raise input_error(
            f"malformed Newick: missing ';' at end (position {len(text.rstrip())})", file=source
        )


def parse_newick(text: str, source: str = "<newick>") -> Tree:
    """Parse one Newick tree string into a :class:`~phylojax.tree.Tree`.

    Numeric internal labels become ``supports``; ``name{label}`` tags become ``labels``; branch
    lengths that are negative or NaN are errors.
    """
    from Bio import Phylo

    text = text.strip()
    if not text:
        raise input_error("empty tree", file=source)
    _validate_newick(text, source)
    # Bio.Phylo keeps '{tag}' inside names; the braces are not Newick syntax otherwise.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bio = Phylo.read(_io.StringIO(text), "newick")
    except Exception as err:
        raise input_error(f"malformed Newick: {err}", file=source) from None

    children: list[list[int]] = []
    names: list[str | None] = []
    lengths: list[float] = []
    labels: list[str | None] = []
    supports: list[float | None] = []
    stack = [(bio.root, -1)]
    order = []
    while stack:
        clade, parent = stack.pop()
        idx = len(names)
        order.append(idx)
        children.append([])
        if parent >= 0:
            children[parent].append(idx)
        name = clade.name
        label = None
        if name and "{" in name:
            match = re.match(r"^(.*?)\{([^{}]*)\}$", name)
            if not match:
                raise input_error(f"malformed branch label in {name!r}", file=source)
            name, label = match.group(1) or None, match.group(2)
        support = clade.confidence
        if name is not None and clade.clades and _NUMBER.match(name):
            support, name = float(name), None  # numeric internal labels are supports
        names.append(name if name else None)
        labels.append(label)
        supports.append(None if support is None else float(support))
        bl = clade.branch_length
        if bl is not None:
            bl = float(bl)
            if math.isnan(bl) or bl < 0:
                raise input_error(
                    f"branch length {bl} above {name or 'an internal node'} must be >= 0",
                    file=source,
                    taxon=name,
                )
        lengths.append(float("nan") if bl is None else bl)
        for child in reversed(clade.clades):
            stack.append((child, idx))
    # children lists were filled in reverse; restore Newick order
    children = [list(reversed(c)) for c in children]
    leaf_names = [names[i] for i in range(len(names)) if not children[i]]
    if len(leaf_names) < 2:
        raise input_error(f"tree has {len(leaf_names)} leaf; at least 2 are needed", file=source)
    if any(n is None for n in leaf_names):
        raise input_error("a leaf has no name", file=source)
    dup = sorted({n for n in leaf_names if leaf_names.count(n) > 1})
    if dup:
        raise input_error(f"duplicate leaf names in tree: {', '.join(dup)}", file=source)
    tree = Tree.from_children(children, 0, names=names, branch_lengths=lengths, labels=labels,
                              supports=supports, source=source)
    # Suppress unary internal nodes (e.g. '((a,b));') by merging lengths.
    if any(len(c) == 1 for c in tree.children):
        tree = _suppress_unary(tree)
    return tree


def _suppress_unary(tree: Tree) -> Tree:
    kids = tree.children
    lengths = list(tree.branch_lengths)
    root = tree.root
    while len(kids[root]) == 1:
        root = kids[root][0]
    for v in range(tree.node_count):
        new = []
        for c in kids[v]:
            while len(kids[c]) == 1:
                (only,) = kids[c]
                lengths[only] = np.nansum([lengths[only], lengths[c]])
                c = only
            new.append(c)
        kids[v] = new
    return Tree.from_children(kids, root, names=list(tree.names), branch_lengths=lengths,
                              labels=list(tree.labels), supports=list(tree.supports),
                              source=tree.source)


def read_tree(path_or_newick: str | os.PathLike) -> Tree:
    """Read a Newick tree from a file (first tree) or, if it looks like one, from a string."""
    text = os.fspath(path_or_newick)
    if text.lstrip().startswith("(") and text.rstrip().endswith(";"):
        return parse_newick(text, "<newick>")
    source = text
    content = _read_text(source)
    if content.lstrip()[:6].upper() == "#NEXUS":
        trees = _raw_nexus_trees(content)
        if not trees:
            raise input_error("NEXUS file has no TREES block", file=source)
        return parse_newick(trees[0][1], source)
    stripped = content.strip()
    if not stripped:
        raise input_error("empty tree file", file=source)
    first = stripped.split(";")[0] + ";"
    return parse_newick(first, source)


def tree_for_alignment(aln: Alignment, tree_path: str | None) -> Tree:
    """The tree to use with ``aln``: from ``tree_path``, else the first tree embedded in NEXUS,
    with leaves renumbered in alignment order."""
    if tree_path is not None:
        tree = read_tree(tree_path)
    elif aln.trees:
        tree = parse_newick(aln.trees[0][1], aln.source)
    else:
        raise InputError(f"{aln.source}: no tree given and none embedded in the alignment")
    return tree.reorder_leaves(aln.names)
