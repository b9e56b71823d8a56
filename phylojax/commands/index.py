"""``phylojax index``: build a learned-index suffix array of a genome and query it."""

from __future__ import annotations

import time

import numpy as np

from ..errors import input_error
from ._common import emit_json, stage

HELP = "build and query a learned-index suffix array of a genome"
DESCRIPTION = """\
Exact pattern search in a genome with a suffix array and a learned rank model (issue 5).

  phylojax index build GENOME.fa -o INDEX [--json] [--k 21]
  phylojax index query INDEX QUERIES -o HITS.tsv [--json] [--locate] [--no-model]

GENOME.fa may hold several records (optionally gzipped); records are joined with separators no
query can match, and every symbol other than A/C/G/T (N, IUPAC codes, gaps) is a separator too.
Lower-case bases are searchable. QUERIES holds one pattern per line, or FASTA records. HITS.tsv has
the columns query, length, count and, with --locate, positions (record:offset, 0-based, sorted).
"""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION")
    sub.required = True
    build = sub.add_parser("build", help="build an index of GENOME.fa")
    build.add_argument("genome", metavar="GENOME.fa")
    build.add_argument("-o", "--output", required=True, metavar="INDEX")
    build.add_argument("--k", type=int, default=21, help="bases in the model's key (1..31, default 21)")
    build.add_argument("--epsilon", type=float, default=None, help="model error target (default: auto)")
    build.add_argument(
        "--model-fraction", type=float, default=0.01, help="model size limit as a fraction of the SA bytes"
    )
    build.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    build.add_argument("--quiet", action="store_true")
    query = sub.add_parser("query", help="count (and locate) patterns in an index")
    query.add_argument("index", metavar="INDEX")
    query.add_argument("queries", metavar="QUERIES")
    query.add_argument("-o", "--output", required=True, metavar="HITS.tsv")
    query.add_argument("--locate", action="store_true", help="also report every position")
    query.add_argument("--no-model", action="store_true", help="plain batched binary search")
    query.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    query.add_argument("--quiet", action="store_true")


def read_queries(path: str) -> tuple[list[str], list[bytes], list[int]]:
    """(names, patterns, line numbers) from a one-pattern-per-line or FASTA file."""
    with open(path, "rb") as handle:
        lines = handle.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise input_error("no query patterns (the file is empty)", file=path)
    names: list[str] = []
    patterns: list[bytes] = []
    where: list[int] = []
    fasta = lines[0].lstrip().startswith(b">")
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if fasta:
            if line.startswith(b">"):
                name = line[1:].split(maxsplit=1)
                if not name:
                    raise input_error("FASTA header without a name", file=path, line=number)
                names.append(name[0].decode("utf-8", "replace"))
                patterns.append(b"")
                where.append(number)
            elif line:
                if not patterns[-1]:
                    where[-1] = number  # errors point at the record's first sequence line
                patterns[-1] += line
        else:
            if not line:
                raise input_error("empty line; QUERIES needs one pattern per line", file=path, line=number)
            names.append(line.decode("ascii", "replace"))
            patterns.append(line)
            where.append(number)
    return names, patterns, where


def _build(args) -> int:
    from .. import index

    start = time.perf_counter()
    with stage("reading genome", args.quiet):
        records = index.read_fasta(args.genome)
    with stage("building index", args.quiet):
        built = index.build_index(records, k=args.k, model_fraction=args.model_fraction, epsilon=args.epsilon)
    with stage("writing index", args.quiet):
        file_bytes = index.save_index(args.output, built)
    seconds = time.perf_counter() - start
    model = built.model
    if args.json:
        emit_json(
            {
                "index": args.output,
                "records": len(built.record_names),
                "bases": int(built.record_lengths.sum()),
                "text_length": built.text_length,
                "non_acgt": built.non_acgt_count,
                "sa_bytes": int(built.suffix_array.nbytes),
                "model_bytes": model.nbytes,
                "model_fraction": model.nbytes / built.suffix_array.nbytes,
                "text_bytes": int(built.words.nbytes + built.breaks.nbytes),
                "file_bytes": file_bytes,
                "k": model.k,
                "epsilon": model.epsilon,
                "knots": int(model.knot_keys.size),
                "error_max": max(model.error_max, -model.error_min),
                "error_p95": model.error_p95,
                "seconds": seconds,
            }
        )
    return 0


def _query(args) -> int:
    import jax

    from .. import index

    with stage("loading index", args.quiet):
        loaded = index.load_index(args.index)
    names, patterns, where = read_queries(args.queries)
    packed = index.encode_patterns(patterns, source=args.queries, lines=where)
    device = index.prepare(loaded)
    use_model = not args.no_model
    if use_model and loaded.model is None:
        raise input_error("the index has no learned model; use --no-model", file=args.index)
    # Compile on a warm-up batch of one block (the shape every block of the real batch has; a
    # batch smaller than a block is its own warm-up), then time the single real run.
    warm = time.perf_counter()
    head = min(len(names), index.BLOCK)
    jax.block_until_ready(
        index.count(device, index.Patterns(packed.chunks[:head], packed.lengths[:head]), use_model=use_model)
    )
    compile_seconds = time.perf_counter() - warm
    stats: dict = {}
    start = time.perf_counter()
    lo, hi = jax.block_until_ready(index.count(device, packed, use_model=use_model, stats=stats))
    seconds = time.perf_counter() - start
    lo, hi = np.asarray(lo), np.asarray(hi)
    counts = hi - lo
    positions = index.locate(loaded, lo, hi) if args.locate else None
    with open(args.output, "w") as out:
        out.write("query\tlength\tcount" + ("\tpositions" if args.locate else "") + "\n")
        for i, name in enumerate(names):
            row = f"{name}\t{len(patterns[i])}\t{int(counts[i])}"
            if positions is not None:
                row += "\t" + ",".join(f"{r}:{o}" for r, o in positions[i])
            out.write(row + "\n")
    if args.json:
        emit_json(
            {
                "queries": len(names),
                "hits": int(np.count_nonzero(counts)),
                "occurrences": int(counts.sum()),
                "mode": "binary" if args.no_model else "learned",
                "window_steps": stats.get("window_steps"),
                "fallback": stats.get("fallback"),
                "seconds": seconds,
                "warmup_seconds": compile_seconds,
                "output": args.output,
            }
        )
    return 0


def run(args) -> int:
    if args.index_command == "build":
        return _build(args)
    return _query(args)
