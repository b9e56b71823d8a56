"""Evaluations of FEL's full MG94 fit under different diagonal preconditioners, from the same start.

    python benchmarks/global_fit_scaling.py [--sets HepatitisD.nex rbp3.nex] [--exact]

For each file in ../shared/data/hyphy: runs the global fits once to get the full fit's start
(the proportional fit's result), then runs the full fit from that start with

* ``sqrt``: :func:`phylojax.selection.global_fits.sqrt_scale` alone (the scaling before
  2026-12-02); its count includes the start evaluation;
* ``block``: :func:`~phylojax.selection.global_fits.block_scale` (its probe evaluations are added
  to the count), the shipped scaling;
* ``exact`` (with ``--exact``): ``1 / sqrt(-d2 lnL / dx_i^2)`` from a central finite-difference
  Hessian diagonal (2 gradient evaluations per parameter, not counted), and the same for the
  branch lengths only, with ``sqrt`` times the branches' median factor for the model parameters.

Prints the evaluations and the final lnL of each.
"""

from __future__ import annotations

import argparse
import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import phylojax.selection.global_fits as G  # noqa: E402
from phylojax.io import read_alignment  # noqa: E402
from phylojax.models.codon import codon_frequencies  # noqa: E402
from phylojax.selection.fel import prepare_partitions  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "hyphy"


def full_fit_start(name: str):
    """``(value_and_grad, x0, lower, upper, n_omega)`` of the full MG94 fit of ``name``."""
    parts, nuc_pi, counts = prepare_partitions(read_alignment(SHARED / name))
    _, g = codon_frequencies(counts, "CF3X4", 1)
    captured = {}
    original = G.maximise

    def spy(value_and_grad, x0, lower, upper, *args, **kwargs):
        if getattr(value_and_grad, "__name__", "") == "full_vg" and not captured:
            captured["start"] = (value_and_grad, np.array(x0), np.array(lower), np.array(upper))
        return original(value_and_grad, x0, lower, upper, *args, **kwargs)

    G.maximise = spy
    try:
        fit = G.fit_global([p.data for p in parts], nuc_pi, g)
    finally:
        G.maximise = original
    n_omega = 2 if fit.omega[0] != fit.omega[1] else 1
    return (*captured["start"], n_omega)


def exact_diagonal(value_and_grad, x0, lower, upper) -> np.ndarray:
    out = np.full(len(x0), np.nan)
    for i in range(len(x0)):
        h = 1e-5 * max(abs(x0[i]), 1e-3)
        up, down = x0.copy(), x0.copy()
        up[i], down[i] = min(x0[i] + h, upper[i]), max(x0[i] - h, lower[i])
        if up[i] == down[i]:
            continue
        g_up = np.asarray(value_and_grad(jnp.asarray(up))[1])
        g_down = np.asarray(value_and_grad(jnp.asarray(down))[1])
        out[i] = (g_up[i] - g_down[i]) / (up[i] - down[i])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="*", default=["HepatitisD.nex", "rbp3.nex"])
    ap.add_argument("--exact", action="store_true", help="also the finite-difference Hessian")
    args = ap.parse_args()
    for name in args.sets:
        vg, x0, lower, upper, n_omega = full_fit_start(name)
        k = 5 + n_omega
        index = np.arange(len(x0))
        blocks = [index < 5, (index >= 5) & (index < k), index >= k]
        runs = {"sqrt": (G.sqrt_scale(x0), None, None, 0)}  # maximise counts its start
        runs["block"] = G.block_scale(vg, x0, blocks, upper)
        if args.exact:
            base = G.sqrt_scale(x0)
            diag = exact_diagonal(vg, x0, lower, upper)
            ok = np.isfinite(diag) & (diag < 0)
            exact = np.where(ok, 1.0 / np.sqrt(np.abs(np.where(ok, diag, -1.0))), base)
            factor = np.median((exact / base)[k:][ok[k:]])
            runs["exact"] = (exact, None, None, 0)
            runs["exact branches"] = (np.concatenate([base[:k] * factor, exact[k:]]), None, None, 0)
        print(f"{name}: {len(x0)} parameters")
        for label, (scale, f0, g0, probes) in runs.items():
            _, f, n = G.maximise(vg, x0, lower, upper, 3000, x_scale=scale, f0=f0, g0=g0)
            print(f"  {label:15s} {n + probes:4d} evaluations, lnL {f:.9f}")


if __name__ == "__main__":
    main()
