"""``phylojax fel --resample N`` against HyPhy's own resampling run on CD2.

    phylojax fel --alignment tests/data/hyphy/CD2.nex --resample 20 --seed 1 --output ours.json
    python benchmarks/compare_resample.py ours.json [HYPHY.json]

HYPHY.json defaults to ../shared/data/hyphy/reference/CD2.resample20.FEL.json (simulated LRTs per
codon under ``MLE.LRT``). Prints, pooled over the variable codons: a two-sample KS test of the
simulated LRTs, their means, the fraction above chi2_1's 0.9 quantile, and per codon how often the
bootstrap p-values differ by more than 3 binomial standard deviations, and the number of codons
with p <= 0.1. The same figures are asserted (seed 0) in
``tests/test_fel.py::test_cd2_resample_matches_hyphy_null_distribution``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from scipy import stats

REFERENCE = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"
             / "reference" / "CD2.resample20.FEL.json")  # fmt: skip


def simulated(doc) -> dict:
    return {int(k): [x[0] for x in v] for k, v in doc["MLE"]["LRT"]["0"].items()}


def main() -> None:
    ours_doc = json.loads(pathlib.Path(sys.argv[1]).read_text())
    ref_doc = json.loads(pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else REFERENCE).read_text())
    ours_sim, ref_sim = simulated(ours_doc), simulated(ref_doc)
    codons = sorted(ref_sim)
    ours = np.array([ours_sim[c] for c in codons])
    hyphy = np.array([ref_sim[c] for c in codons])
    p_ours = np.array(ours_doc["MLE"]["content"]["0"])[codons, 4]
    p_ref = np.array(ref_doc["MLE"]["content"]["0"])[codons, 4]
    replicates = hyphy.shape[1]
    sd = np.sqrt(np.maximum(2 * p_ref * (1 - p_ref) / replicates, 1 / (replicates + 1) ** 2))
    ks = stats.ks_2samp(hyphy.ravel(), ours.ravel())
    print(f"variable codons {len(codons)}, replicates {replicates}")
    print(f"pooled KS statistic {ks.statistic:.4f}, p {ks.pvalue:.3g}")
    print(f"mean simulated LRT: ours {ours.mean():.4f}, HyPhy {hyphy.mean():.4f}")
    print(f"fraction > 2.706 (chi2_1 0.9 quantile): ours {np.mean(ours > 2.706):.4f}, "
          f"HyPhy {np.mean(hyphy > 2.706):.4f}")  # fmt: skip
    print(f"codons with |p_ours - p_HyPhy| > 3 s.d.: {int(np.sum(np.abs(p_ours - p_ref) > 3 * sd))}")
    print(f"codons with p <= 0.1: ours {int(np.sum(p_ours <= 0.1))}, HyPhy {int(np.sum(p_ref <= 0.1))}")


if __name__ == "__main__":
    main()
