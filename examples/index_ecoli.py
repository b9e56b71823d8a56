"""Build a learned suffix-array index of E. coli (or a small synthetic genome) and query it.

    python examples/index_ecoli.py
"""

import pathlib

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)  # the index uses 64-bit packed keys

from phylojax import index as ix  # noqa: E402

ECOLI = pathlib.Path(__file__).resolve().parents[2] / "shared/data/ecoli_k12_mg1655/ecoli.fa.gz"

if ECOLI.exists():
    records = ix.read_fasta(str(ECOLI))
else:  # a small synthetic genome with a repeated element
    rng = np.random.default_rng(0)
    repeat = "".join(rng.choice(list("ACGT"), 300))
    body = [("".join(rng.choice(list("ACGT"), 20_000)) + repeat) * 3]
    records = [("synthetic", body[0].encode())]

built = ix.build_index(records)
model = built.model
print(f"{built.text_length:,} symbols, SA {built.suffix_array.nbytes:,} B, model {model.nbytes:,} B, "
      f"{model.knot_keys.size} knots, error in [{model.error_min:.1f}, {model.error_max:.1f}]")
ix.save_index("example.pjx", built)
loaded = ix.load_index("example.pjx")
device = ix.prepare(loaded)

genome = records[0][1].decode()
queries = [genome[1000:1021], genome[5000:5011], genome[:101], "ACGTACGTACGTACGTACGTACGTACGTACGTACGT"]
lo, hi = ix.count(device, ix.encode_patterns(queries))
for query, hits in zip(queries, ix.locate(loaded, lo, hi)):
    print(f"{query[:24]:<24}... {len(hits):>4} hits {hits[:3]}")
