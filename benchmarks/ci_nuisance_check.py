"""--ci with background branches against scipy's profile (CD2 --branches Internal, HyPhy's global fit).

    taskset -c 0 python benchmarks/ci_nuisance_check.py --first 48
    taskset -c 0 python benchmarks/ci_nuisance_check.py --index 15 --omegas 1e-4 0.05 0.1025

``--first N``: the intervals of the first N variable codons, and at each end scipy's profile
minus the level l_max - 1.92 (interior ends should be ~0; ends at 0 or 10000 positive); prints
the worst interior end. ``--index I --omegas ...``: our profile and scipy's at those dN/dS for
variable codon number I. scipy's profile: bounded Nelder-Mead on (log alpha, log beta_bg) from
several starts, every rate within [0, 10000]. Run under ``taskset -c 0``: the two-class programs
deadlock XLA:CPU with two threads (phylojax/selection/isolated.py).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_fel import _site_problem_from_hyphy  # noqa: E402

from phylojax.selection.intervals import CHI2_HALF, profile_ci  # noqa: E402
from phylojax.selection.site_classes import fit_sites_classes, profile_classes  # noqa: E402
from phylojax.selection.site_general import _loglik_raw  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--index", type=int)
    ap.add_argument("--omegas", type=float, nargs="*", default=[])
    args = ap.parse_args()
    problem, tips, part = _site_problem_from_hyphy("CD2.internal.intermediate-fits.json", "Internal")
    site = part.codon_patterns.site_to_pattern
    const = tips.prod(axis=1).sum(-1) > 0
    codons = np.array([c for c in range(len(site)) if not const[site[c]]])
    rows = list(range(args.first)) if args.first else [args.index]
    var = tips[site[codons[rows]]]
    fits = fit_sites_classes(problem, var)
    loglik = jax.jit(lambda x, t: _loglik_raw(x, t, problem, (True, True, False)))

    def scipy_profile(omega, i):
        hi_alpha = np.log(min(1e4, 1e4 / max(omega, 1e-12)))
        box = [(np.log(1e-12), hi_alpha), (np.log(1e-12), np.log(1e4))]
        a, b, bg = (max(float(v), 1e-9) for v in (fits.alpha[i], fits.beta[i], fits.beta_background[i]))
        starts = [(a, bg), (min(b / max(omega, 1e-12), 1e4), bg), (fits.null_rate[i], bg), (1.0, 1.0),
                  (1e-4, 1.0), (1.0, 1e-6)]  # fmt: skip
        tip = jnp.asarray(var[i])
        best = -np.inf
        for x0 in starts:
            y0 = np.clip(np.log(np.maximum(x0, 1e-12)), [lo for lo, _ in box], [hi for _, hi in box])
            res = minimize(lambda y: -float(loglik(jnp.array([np.exp(y[0]), omega * np.exp(y[0]),
                                                               np.exp(y[1])]), tip)),
                           y0, method="Nelder-Mead", bounds=box,
                           options={"xatol": 1e-6, "fatol": 1e-8, "maxiter": 2000})  # fmt: skip
            best = max(best, -res.fun)
        return best

    if args.first:
        lohi = profile_ci(problem, var, fits, True)
        worst = 0.0
        for i in range(len(var)):
            level = fits.alt_loglik[i] - CHI2_HALF
            cells = []
            for omega in lohi[i, [0, 2]]:
                d = scipy_profile(max(omega, 1e-8), i) - level
                interior = 0.0 < omega < 1e4
                worst = max(worst, abs(d)) if interior else worst
                cells.append(f"{omega:.4g}: {'' if interior else 'edge '}{d:+.4f}")
            print(f"codon {codons[i]}: {np.round(lohi[i], 4)} | " + " | ".join(cells), flush=True)
        print(f"worst interior end: {worst:.4f} lnL from the level")
    else:
        i = 0
        a = np.maximum(fits.alpha, 1e-9)
        start = np.stack([np.arctan2(fits.beta_background, a), np.log(a)], -1)
        print(f"codon {codons[args.index]}: level {fits.alt_loglik[0] - CHI2_HALF:.4f}")
        for omega in args.omegas:
            ours = profile_classes(problem, var, np.array([np.arctan(omega)]), np.stack([start] * 2, 1))[0]
            print(f"omega {omega:g}: ours {ours[i]:.4f} scipy {scipy_profile(omega, i):.4f}", flush=True)


if __name__ == "__main__":
    main()
