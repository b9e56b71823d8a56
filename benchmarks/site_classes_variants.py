"""FEL batched two-class site fits (``site_classes.fit_sites_classes``) on CD2 ``--branches
Internal`` with HyPhy's own global fit, against HyPhy's JSON: settings of the coordinate-wise
refinement and of the optax polish.

    taskset -c 0 python benchmarks/site_classes_variants.py \\
        "{'polish': 0}" "{'polish': 0, 'rounds': 6}" "{'polish': 0, 'steps': 4, 'rounds': 10}" \\
        "{'polish': 1}" "{'polish': 2}" "{}"

Run it pinned to one CPU: with two XLA threads the program deadlocks XLA:CPU (jaxlib 0.10.2),
which is why ``fel()`` runs it in a one-CPU child process (``isolated.py``). For each keyword
set it prints the time (warm: the first call on 8 codons compiles), min ΔLRT and median |ΔLRT|
against HyPhy, the number of codons classified differently at p <= 0.1, and the worst codon.
"""

from __future__ import annotations

import ast
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import test_fel as T  # noqa: E402

from phylojax.selection.fel import chi2_1_sf  # noqa: E402
from phylojax.selection.site_classes import fit_sites_classes  # noqa: E402


def main() -> None:
    problem, tips, part = T._site_problem_from_hyphy("CD2.internal.intermediate-fits.json", "Internal")
    ref, _ = T._rows("CD2.branchesInternal.FEL.json")
    site = part.codon_patterns.site_to_pattern
    const = tips.prod(axis=1).sum(-1) > 0
    codons = np.array([c for c in range(len(site)) if not const[site[c]]])
    x = tips[site[codons]]
    for text in sys.argv[1:] or ["{}"]:
        kw = ast.literal_eval(text)
        fit_sites_classes(problem, x[:8], **kw)
        t = time.perf_counter()
        fits = fit_sites_classes(problem, x, **kw)
        dt = time.perf_counter() - t
        d = fits.lrt - ref[codons, 3]
        diffs = int(np.sum((chi2_1_sf(fits.lrt) <= 0.1) != (ref[codons, 4] <= 0.1)))
        print(f"{kw}: {dt:.1f} s, min ΔLRT {d.min():+.4f}, median |ΔLRT| "
              f"{np.median(np.abs(d)):.1e}, class diffs {diffs}, worst codon "
              f"{codons[np.argmin(d)] + 1}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
