"""ML fit (GTR+F+G4, fixed topology) wall time: phylojax vs IQ-TREE 2, same data, same run.

    python benchmarks/bench_fit.py

For each alignment: IQ-TREE `iqtree2 -s ALN -te TREE -m GTR+F+G4 -T 1 -redo` (re-optimises
branch lengths on the given topology), then `phylojax fit -s ALN -t TREE -m GTR+F+G4 --json
--frequencies empirical` in a fresh process (end to end, compilation included), and a warm
in-process fit (second call, compiled functions reused). Prints lnL and seconds of each.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "fit"
SETS = [("sim7.fa", "sim7.nwk"), ("CD2.fasta", "CD2.nwk"), ("p51.fasta", "p51.nwk")]


def iqtree(aln, tree):
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(aln, tmp)
        shutil.copy(tree, tmp)
        t0 = time.perf_counter()
        subprocess.run(["iqtree2", "-s", aln.name, "-te", tree.name, "-m", "GTR+F+G4", "-T", "1",
                        "-redo", "-quiet"], cwd=tmp, check=True, capture_output=True)
        seconds = time.perf_counter() - t0
        text = (pathlib.Path(tmp) / f"{aln.name}.iqtree").read_text()
        lnl = float(re.search(r"Log-likelihood of the tree:\s*(-?[\d.]+)", text).group(1))
    return lnl, seconds


def phylojax_cold(aln, tree):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "phylojax", "fit", "-s", str(aln), "-t", str(tree),
                          "-m", "GTR+F+G4", "--frequencies", "empirical", "--json"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["log_likelihood"], time.perf_counter() - t0


def phylojax_warm(aln, tree):
    import jax

    jax.config.update("jax_enable_x64", True)
    from phylojax.fit import fit
    from phylojax.io import read_alignment, read_tree
    from phylojax.models.spec import parse_model

    a, t, spec = read_alignment(aln), read_tree(tree), parse_model("GTR+F+G4")
    fit(a, t, spec, frequencies="empirical")  # compile
    t0 = time.perf_counter()
    result = fit(a, t, spec, frequencies="empirical")
    return result.log_likelihood, time.perf_counter() - t0


def main():
    print("| data | IQ-TREE lnL | IQ-TREE s | phylojax lnL | phylojax cold s | phylojax warm s | warm / IQ-TREE |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for a, t in SETS:
        aln, tree = DATA / a, DATA / t
        iq_lnl, iq_s = iqtree(aln, tree)
        cold_lnl, cold_s = phylojax_cold(aln, tree)
        warm_lnl, warm_s = phylojax_warm(aln, tree)
        print(f"| {a} | {iq_lnl:.4f} | {iq_s:.2f} | {warm_lnl:.4f} | {cold_s:.1f} | {warm_s:.2f} | "
              f"{warm_s / iq_s:.1f}× |", flush=True)
        del cold_lnl


if __name__ == "__main__":
    main()
