"""FEL's MG94 value-and-gradient with glibc's defaults and with ``phylojax.memory.keep_freed_memory``.

    python benchmarks/malloc_reuse.py [--set HIV_RT.nex] [--pairs 3] [--calls 5] [--cpu 0]

Each figure is a fresh process (the setting is process-wide and must come before any thread
allocates), alternating defaults / setting. A process prepares ``--set`` from
../shared/data/hyphy as ``fel()`` does, evaluates the full MG94 objective twice at the input
tree's lengths (compilation), then times ``--calls`` evaluations and reports, per call, the wall
time, the minor page faults and the system CPU time (``getrusage``). ``--cpu N`` pins every
process to that core (``taskset``-like), otherwise they use all cores.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"

CHILD = r"""
import os, resource, sys, time
path, calls, tuned, cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on", int(sys.argv[4])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
from phylojax.memory import keep_freed_memory
if tuned:
    assert keep_freed_memory()
from phylojax.xla_flags import tune_cpu_compiler
tune_cpu_compiler()
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import phylojax.selection.global_fits as G
from phylojax.host import to_device
from phylojax.io import read_alignment
from phylojax.models.codon import codon_frequencies
from phylojax.selection.fel import prepare_partitions

parts, _, counts = prepare_partitions(read_alignment(path))
_, g = codon_frequencies(counts, "CF3X4", 1)
free, codon, background, g, two_class = G._codon_arguments([p.data for p in parts], g)
lengths = [np.where(p.data.free, np.clip(p.data.initial_lengths, 1e-3, 1.0), 0.0) for p in parts]
x = to_device(np.concatenate([np.ones(5), [0.3, 0.3] if two_class else [0.3], *lengths]))
def call():
    return jax.block_until_ready(G._full_value_and_grad(x, free, codon, background, g, 1, two_class))
call(); call()
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(calls):
    call()
wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
print(1e3 * wall / calls, (r1.ru_minflt - r0.ru_minflt) / calls, 1e3 * (r1.ru_stime - r0.ru_stime) / calls)
"""


def measure(path: pathlib.Path, calls: int, tuned: bool, cpu: int) -> tuple[float, float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(calls),
                          "on" if tuned else "off", str(cpu)],
                         capture_output=True, text=True, check=True, env=os.environ.copy())  # fmt: skip
    ms, faults, sys_ms = (float(v) for v in out.stdout.split()[-3:])
    return ms, faults, sys_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="HIV_RT.nex")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=-1, help="pin to this core (default: all cores)")
    args = ap.parse_args()
    path = SHARED / args.set
    print(f"{args.set}, MG94 value-and-gradient, {args.calls} calls per process, "
          f"{'core ' + str(args.cpu) if args.cpu >= 0 else 'all cores'}")  # fmt: skip
    print("| pair | malloc | ms per call | minor faults per call | system ms per call |")
    print("|---|---|---|---|---|")
    for pair in range(1, args.pairs + 1):
        for tuned in (False, True):
            ms, faults, sys_ms = measure(path, args.calls, tuned, args.cpu)
            label = "keep_freed_memory" if tuned else "glibc defaults"
            print(f"| {pair} | {label} | {ms:.0f} | {faults:.0f} | {sys_ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
